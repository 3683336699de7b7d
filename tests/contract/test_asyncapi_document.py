"""The committed AsyncAPI document is the one the code generates, and it tells a subscriber
the truth: a channel per subject, each payload's schema accepts the events the relay
publishes, and every event message names its headers."""

from pathlib import Path

import pytest
from jsonschema import Draft202012Validator
from taskengine_contracts import subjects
from taskengine_contracts.asyncapi import document, render
from taskengine_contracts.events import ALL_EVENTS, topic_of

COMMITTED = Path(__file__).parents[2] / "contracts" / "asyncapi.json"
DOCUMENT = document()


def test_committed_asyncapi_document_matches_the_code():
    assert COMMITTED.read_text() == render(), (
        "contracts/asyncapi.json is stale: regenerate it with `make contracts`"
        " (`.venv/bin/python -m taskengine_contracts.asyncapi > contracts/asyncapi.json`)"
    )


def message(topic: str) -> dict:
    channel = DOCUMENT["channels"][topic]
    ref = channel["messages"]["Message"]["$ref"]
    return DOCUMENT["components"]["messages"][ref.rsplit("/", 1)[-1]]


def valid(schema: dict, value: object) -> bool:
    """`value` against `schema`, its references resolved in the document's components."""
    rooted = {**schema, "components": DOCUMENT["components"]}
    return Draft202012Validator(rooted).is_valid(value)


@pytest.mark.parametrize("event", ALL_EVENTS, ids=lambda cls: cls.__name__)
def test_every_event_has_its_subject_payload_schema_headers_and_example(event):
    channel = DOCUMENT["channels"][topic_of(event)]
    assert channel["address"] == subjects.subject_for(event)
    assert DOCUMENT["operations"][topic_of(event)]["action"] == "send"
    described = message(topic_of(event))
    assert described["payload"] == {"$ref": f"#/components/schemas/{event.__name__}"}
    headers = described["headers"]
    assert set(headers["required"]) == {subjects.MSG_ID_HEADER, subjects.POSITION_HEADER}
    [example] = described["examples"]
    assert example["payload"]["type"] == topic_of(event)
    assert valid(described["payload"], example["payload"])
    assert valid(headers, example["headers"])


def test_a_payload_schema_refuses_another_events_payload():
    queued = message("job.queued")
    succeeded = message("job.succeeded")["examples"][0]["payload"]
    assert not valid(queued["payload"], succeeded)
    assert not valid(queued["payload"], {**queued["examples"][0]["payload"], "job_id": "42"})


def test_heartbeats_are_documented_on_their_core_nats_subject():
    channel = DOCUMENT["channels"]["heartbeat"]
    assert channel["address"] == subjects.heartbeat_subject("{service}")
    assert "service" in channel["parameters"]
    beat = message("heartbeat")
    assert valid(beat["payload"], beat["examples"][0]["payload"])
    assert "headers" not in beat
