"""The published contract: JSON Schema of every event, generated from the Structs.

`python -m taskengine_contracts.schema > contracts/events.schema.json` regenerates the
committed file; a contract test fails when the two differ, so the document cannot drift.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import msgspec

from taskengine_contracts import subjects
from taskengine_contracts.events import ALL_EVENTS, AnyEvent, topic_of


def document() -> dict[str, Any]:
    schema = msgspec.json.schema(AnyEvent, schema_hook=any_json)
    schema["title"] = "Taskengine events"
    schema["description"] = (
        f"Every event is stored in PostgreSQL and published on JetStream stream "
        f"{subjects.STREAM!r} under subject '{subjects.PREFIX}.<type>', with headers "
        f"{subjects.MSG_ID_HEADER!r} ('<id>:<version>', unique per event) and "
        f"{subjects.POSITION_HEADER!r} (its position in the store's global order)."
    )
    schema["x-subjects"] = {topic_of(e): subjects.subject_for(e) for e in ALL_EVENTS}
    return schema


def any_json(kind: type) -> dict[str, Any]:
    """The schema of `object`: client-supplied JSON, any value."""
    if kind is object:  # client-supplied JSON (job parameters)
        return {"description": "any JSON value"}
    raise NotImplementedError(kind)


def render() -> str:
    return json.dumps(document(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
