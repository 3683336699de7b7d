"""The OpenAPI document shows a request body schema for every write endpoint of the four
dialects (the handlers take typed bodies, so what they accept is declared once)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from litestar.testing import TestClient
from taskengine_gateway.app import create_app

BODYLESS = {
    ("POST", "/jobs/{job_id}/rerun"),
    ("POST", "/tasks/{task_id}/run_now"),
    ("POST", "/tasks/{task_id}/pause"),
    ("POST", "/tasks/{task_id}/resume"),
    ("POST", "/tasks/{task_id}/cancel"),
}
"""Actions named by their path alone: they take no body."""
WRITES = ("post", "put", "patch")


def document() -> dict[str, Any]:
    state = SimpleNamespace(runtime=SimpleNamespace(config=SimpleNamespace(max_body_bytes=1024)))
    with TestClient(create_app(state)) as client:  # type: ignore[arg-type]
        response = client.get("/schema/openapi.json")
    assert response.status_code == 200
    return response.json()


def test_every_write_endpoint_of_the_four_dialects_documents_its_request_body():
    schema = document()
    components = schema["components"]["schemas"]
    documented, bodyless = set(), set()
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            if method not in WRITES:
                continue
            body = operation.get("requestBody")
            if body is None:
                bodyless.add((method.upper(), path))
                continue
            ref = body["content"]["application/json"]["schema"]["$ref"]
            name = ref.rsplit("/", 1)[-1]
            assert components[name]["properties"], (method, path, name)
            documented.add((method.upper(), path))
    assert bodyless == BODYLESS
    dialects = {
        "/job",  # Task Engine (seed 002)
        "/tasks",  # scheduled tasks (seed 001)
        "/api/worktasks",  # work tasks (seed 000)
        "/apis/v1/tasks/operations",  # Drove
    }
    assert dialects <= {path for _, path in documented}
    assert {
        ("POST", "/job"),
        ("PATCH", "/jobs/{job_id}"),
        ("PUT", "/scheduler"),
        ("POST", "/settings"),
        ("POST", "/tasks"),
        ("PUT", "/tasks/{task_id}"),
        ("POST", "/tasks/{task_id}/snooze"),
        ("POST", "/events"),
        ("POST", "/api/worktasks"),
        ("POST", "/api/worktasks/{worktask_id}"),
        ("POST", "/api/worktasks/{worktask_id}/logs"),
        ("POST", "/apis/v1/tasks/operations"),
        ("POST", "/apis/v1/tasks/search"),
    } == documented
