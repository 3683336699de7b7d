"""The committed OpenAPI document is the one the gateway's handlers generate."""

from pathlib import Path

from taskengine_gateway.openapi import render

COMMITTED = Path(__file__).parents[2] / "contracts" / "openapi.json"


def test_committed_openapi_document_matches_the_code():
    assert COMMITTED.read_text() == render(), (
        "contracts/openapi.json is stale: regenerate it with `make contracts`"
        " (`.venv/bin/python -m taskengine_gateway.openapi > contracts/openapi.json`)"
    )
