"""The committed event schema is the one the code generates."""

from pathlib import Path

from taskengine_contracts.schema import render

COMMITTED = Path(__file__).parents[2] / "contracts" / "events.schema.json"


def test_committed_event_schema_matches_the_code():
    assert COMMITTED.read_text() == render(), (
        "contracts/events.schema.json is stale: regenerate it with `make contracts` "
        "(`.venv/bin/python -m taskengine_contracts.schema > contracts/events.schema.json`)"
    )
