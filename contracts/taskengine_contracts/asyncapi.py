"""The published bus contract: an AsyncAPI 3.0 document of the lifecycle streams, from code.

FastStream writes the document: the NATS server and one channel and `send` operation per
subject (`subjects.subject_for` of every event in `events.ALL_EVENTS`, and the heartbeats).
FastStream derives payload schemas through pydantic, which cannot read msgspec Structs, so
each message's payload is msgspec's JSON Schema of its event (the same generator as
`events.schema.json`), with its headers (`Nats-Msg-Id`, `Taskengine-Position`) and the
event's example from `examples`.

`make contracts` (`python -m taskengine_contracts.asyncapi > contracts/asyncapi.json`)
regenerates the committed file; a contract test fails when the two differ. FastStream is the
`asyncapi` extra of this package: only this generator needs it.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import Any

import msgspec
from faststream.nats import NatsBroker
from faststream.security import SASLPlaintext
from faststream.specification import AsyncAPI

from taskengine_contracts import subjects
from taskengine_contracts.events import ALL_EVENTS, Event, Heartbeat, encode, topic_of
from taskengine_contracts.examples import EXAMPLES
from taskengine_contracts.schema import any_json

REFS = "#/components/schemas/{name}"
HEARTBEAT = "heartbeat"
HEARTBEAT_EXAMPLE = Heartbeat(
    service="dispatcher", instance="dispatcher-1", working=3, at=datetime(2030, 1, 31, tzinfo=UTC)
)

DESCRIPTION = f"""\
Every event Taskengine stores is published, byte for byte and in store order, on the
JetStream stream `{subjects.STREAM}` under the subject `{subjects.PREFIX}.<type>`
(`{subjects.JOBS}` is every job lifecycle event). Subscribe with an ephemeral consumer of
your own (ordered or push). After a relay crash an event may come again with the same
`{subjects.MSG_ID_HEADER}`: JetStream drops it within its duplicate window; past it, skip what
is at or below the last `{subjects.POSITION_HEADER}` you handled. Heartbeats are core NATS,
never stored. See contracts/README.md."""

SERVER = (
    "NATS with JetStream. The embedded server (`taskengine up`) has no users; production"
    " servers (compose.yaml, k8s/) admit subscribers as `taskengine-subscriber`, whose password"
    " is the servers' TASKENGINE_NATS_SUBSCRIBER_PASSWORD, connecting with the inbox prefix"
    f" `{subjects.SUBSCRIBER_INBOX}`."
)

HEADERS: dict[str, Any] = {
    "type": "object",
    "required": [subjects.MSG_ID_HEADER, subjects.POSITION_HEADER],
    "properties": {
        subjects.MSG_ID_HEADER: {
            "type": "string",
            "description": "`<id>:<version>`: unique per stored event, so JetStream drops a"
            " re-publish within its duplicate window",
        },
        subjects.POSITION_HEADER: {
            "type": "string",
            "pattern": "^[0-9]+$",
            "description": "the event's position in the store's global order (its"
            " notification id): increasing along the stream",
        },
        subjects.PUBLISHED_HEADER: {
            "type": "string",
            "description": "only with hop tracing on (TASKENGINE_HOP_TRACE): when the relay"
            " published the message, Unix seconds",
        },
    },
}


def broker() -> NatsBroker:
    """A broker that is never started: it only declares what Taskengine publishes."""
    bus = NatsBroker(
        "nats://127.0.0.1:4222",
        description=SERVER,
        security=SASLPlaintext(username="taskengine-subscriber", password=""),
    )
    for event in ALL_EVENTS:
        bus.publisher(
            subjects.subject_for(event),
            stream=subjects.STREAM,
            title=topic_of(event),
            description=_described(event),
        )
    bus.publisher(
        subjects.heartbeat_subject("{service}"),
        title=HEARTBEAT,
        description=_described(Heartbeat),
    )
    return bus


def document() -> dict[str, Any]:
    spec = AsyncAPI(
        broker(),
        title="Taskengine lifecycle events",
        version="0.1.0",
        description=DESCRIPTION,
        schema_version="3.0.0",
    )
    doc: dict[str, Any] = spec.to_specification().to_jsonable()
    kinds: list[type] = [*ALL_EVENTS, Heartbeat]
    payloads, schemas = msgspec.json.schema_components(
        kinds, schema_hook=any_json, ref_template=REFS
    )
    components = doc["components"]
    components["schemas"] = schemas
    titles = [topic_of(kind) if issubclass(kind, Event) else HEARTBEAT for kind in kinds]
    for title, kind, payload in zip(titles, kinds, payloads, strict=True):
        message = components["messages"][f"{title}:Message"]
        message.pop("correlationId")  # FastStream's default: the relay sets no such header
        message.update(name=kind.__name__, title=kind.__name__, payload=payload)
        if kind is Heartbeat:
            message["examples"] = [{"payload": msgspec.to_builtins(HEARTBEAT_EXAMPLE)}]
        else:
            message["headers"] = HEADERS
            message["examples"] = [_example(EXAMPLES[kind])]
    doc["channels"][HEARTBEAT]["parameters"] = {
        "service": {"description": "the service: scheduler, admission, dispatcher, ..."}
    }
    return doc


def _described(kind: type) -> str:
    return " ".join((kind.__doc__ or f"A {kind.__name__} event.").split())


def _example(event: Event) -> dict[str, Any]:
    position = 1000 + event.version
    return {
        "headers": {
            subjects.MSG_ID_HEADER: subjects.message_id(event.id, event.version),
            subjects.POSITION_HEADER: str(position),
        },
        "payload": json.loads(encode(event)),
    }


def render() -> str:
    return json.dumps(document(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
