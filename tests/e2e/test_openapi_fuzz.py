"""The gateway keeps the promises of contracts/openapi.json under generated input: schemathesis
sends every operation a few derandomized requests, generated from the document, with a valid
client key in the header style of the operation's dialect; no answer may be a server error or
break the documented schema of its status."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
)

from tests.support.system import ADMIN
from tests.support.waiting import wait_until

DOCUMENT = Path(__file__).parents[2] / "contracts" / "openapi.json"
EXAMPLES_PER_OPERATION = 8
"""About 300 requests across the 38 operations: seconds, not minutes."""
CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance]
AUTH_HEADERS = {"authorization", "client", "api-key"}
"""Generated from the document's security schemes; the test sends a real key instead."""


def credentials(path: str) -> dict[str, str]:
    """A valid key in the header style each dialect's clients use."""
    name, key = ADMIN
    if path.startswith("/apis/v1"):  # Drove: Basic client:key
        return {"Authorization": "Basic " + base64.b64encode(f"{name}:{key}".encode()).decode()}
    if path.startswith(("/api/", "/tasks", "/events")):  # work tasks, scheduled tasks
        return {"Authorization": f"Bearer {key}"}
    return {"client": name, "api-key": key}  # the Task Engine API


def test_every_operation_answers_generated_requests_as_documented(system_factory):
    system = system_factory()
    with system.client() as client:
        wait_until(lambda: client.get("/health").status_code == 200, what="a healthy engine")
    schema = schemathesis.openapi.from_dict(json.loads(DOCUMENT.read_text()))
    operations = [result.ok() for result in schema.get_all_operations()]
    failures: dict[str, str] = {}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            derandomize=True,
            database=None,
            deadline=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        def answers_as_documented(case: schemathesis.Case) -> None:
            headers = {
                name: value
                for name, value in (case.headers or {}).items()
                if name.lower() not in AUTH_HEADERS
            }
            case.headers = {**headers, **credentials(case.path)}
            response = case.call(base_url=system.url, timeout=30)
            case.validate_response(response, checks=CHECKS)

        try:
            answers_as_documented()
        except Exception as failure:  # each operation's first failure, all of them reported
            failures[operation.label] = str(failure)
    assert len(operations) >= 37
    assert not failures, "\n\n".join(f"{label}:\n{text}" for label, text in failures.items())
