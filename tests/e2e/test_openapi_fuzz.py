"""The gateway keeps the promises of contracts/openapi.json under generated input: schemathesis
sends every operation a few derandomized requests generated from the document (valid ones,
invalid ones, and, on routes with an id in their path, valid ones about objects that exist),
with a valid client key in the header style of the operation's dialect. No answer may be a
server error or break the documented schema of its status."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from traceback import format_exception
from typing import Any

import httpx
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
)
from taskengine_gateway.dialects.drove_api import TaskOperation
from taskengine_gateway.dialects.tasks_api import TaskRequest
from taskengine_gateway.dialects.worktasks_api import WorkTaskRequest

from tests.support.system import ADMIN
from tests.support.waiting import wait_until

DOCUMENT = Path(__file__).parents[2] / "contracts" / "openapi.json"
EXAMPLES = 3
NEGATIVE = 1
"""The place of the invalid requests among an operation's `strategies`."""
"""Per operation and kind of request: about 300 requests across the 38 operations."""
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


def existing(client: httpx.Client) -> dict[str, dict[str, str]]:
    """One finished object of each dialect, by the path parameters that name it."""
    job = client.post("/job", json={"job": {"workflow": "echo"}, "parameters": {"message": "hi"}})
    worktask = client.post(
        "/api/worktasks", json=WorkTaskRequest.EXAMPLE, headers=credentials("/api/")
    )
    task = client.post("/tasks", json=TaskRequest.EXAMPLE, headers=credentials("/tasks"))
    drove = client.post(
        "/apis/v1/tasks/operations", json=TaskOperation.EXAMPLE, headers=credentials("/apis/v1")
    )
    assert [r.status_code for r in (job, worktask, task, drove)] == [200, 201, 201, 200]
    job_id = job.json()["id"]
    wait_until(lambda: client.get(f"/jobs/{job_id}").json()["queue_state"] == "completed")
    spec = TaskOperation.EXAMPLE["spec"]
    return {
        "/jobs/": {"job_id": str(job_id)},
        "/logs/": {"job_id": str(job_id)},
        "/api/worktasks/": {"worktask_id": worktask.json()["worktask_id"]},
        "/tasks/": {"task_id": task.json()["id"]},
        "/apis/v1/": {
            "source_app": spec["sourceAppName"],
            "task_id": spec["taskId"],
            "file_name": "output.log",
        },
    }


def strategies(operation: Any, known: dict[str, dict[str, str]]) -> list[Any]:
    """Valid and invalid requests; for a path naming an object, valid ones about a real one."""
    kinds = [operation.as_strategy(), operation.as_strategy(GenerationMode.NEGATIVE)]
    if "{" in operation.path:
        [names] = [ids for prefix, ids in known.items() if operation.path.startswith(prefix)]
        wanted = {name: value for name, value in names.items() if f"{{{name}}}" in operation.path}
        kinds.append(operation.as_strategy(path_parameters=wanted))
    return kinds


def test_every_operation_answers_generated_requests_as_documented(system_factory):
    system = system_factory()
    with system.client() as client:
        wait_until(lambda: client.get("/health").status_code == 200, what="a healthy engine")
        known = existing(client)
    schema = schemathesis.openapi.from_dict(json.loads(DOCUMENT.read_text()))
    # What ends an object (DELETE, cancel) comes last: the others still find it alive.
    operations = sorted(
        (result.ok() for result in schema.get_all_operations()),
        key=lambda operation: operation.method == "DELETE" or operation.path.endswith("/cancel"),
    )
    failures: dict[str, str] = {}
    for operation in operations:
        for number, strategy in enumerate(strategies(operation, known)):

            @given(case=strategy)
            @settings(
                max_examples=EXAMPLES,
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
            except Unsatisfiable:
                # No request of this kind exists (e.g. an invalid one for `GET /`, which takes
                # no parameters, body or credentials): nothing to send.
                if number != NEGATIVE:
                    raise
            except Exception as failure:  # the first failure of each kind, all reported
                # The whole tree: hypothesis wraps a failure that did not repeat as Flaky.
                failures[f"{operation.label} #{number}"] = "".join(format_exception(failure))
    assert len(operations) >= 37
    assert not failures, "\n\n".join(f"{label}:\n{text}" for label, text in failures.items())
