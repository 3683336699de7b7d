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


def body_schema(body: dict[str, Any]) -> str:
    """The name of the component schema a request body refers to."""
    schema = body["content"]["application/json"]["schema"]
    ref = schema["allOf"][0]["$ref"] if "allOf" in schema else schema["$ref"]
    return ref.rsplit("/", 1)[-1]


def typed(property: dict[str, Any], components: dict[str, Any]) -> bool:
    """Whether a schema property says its type (itself, or by its referred schema)."""
    if "allOf" in property:
        return all(typed(part, components) for part in property["allOf"])
    if "$ref" in property:
        return typed(components[property["$ref"].rsplit("/", 1)[-1]], components)
    return bool(property.get("type") or property.get("oneOf"))


def write_operations(schema: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, operation)
        for path, operations in schema["paths"].items()
        for method, operation in operations.items()
        if method in WRITES
    ]


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
            name = body_schema(body)
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


def test_every_request_field_has_a_type_a_description_and_an_example():
    schema = document()
    components = schema["components"]["schemas"]
    for method, path, operation in write_operations(schema):
        if (body := operation.get("requestBody")) is None:
            continue
        described = body["content"]["application/json"]["schema"]
        assert described.get("description"), (method, path)
        assert described.get("examples"), (method, path)
        name = body_schema(body)
        for field, property in components[name]["properties"].items():
            where = (method, path, field)
            assert typed(property, components), where
            assert property.get("description"), where
            assert "examples" in property, where


def test_a_submitted_job_and_a_created_task_document_their_answer():
    schema = document()
    components = schema["components"]["schemas"]
    answers = {
        ("/job", "post"): "200",
        ("/jobs/{job_id}/rerun", "post"): "200",
        ("/events", "post"): "202",
        ("/tasks/{task_id}/run_now", "post"): "202",
    }
    for (path, method), status in answers.items():
        content = schema["paths"][path][method]["responses"][status]["content"]
        ref = content["application/json"]["schema"]["$ref"]
        properties = components[ref.rsplit("/", 1)[-1]]["properties"]
        assert properties and all(p.get("type") for p in properties.values()), (path, properties)


def test_every_answer_of_every_operation_has_a_schema_and_an_example():
    schema = document()
    operations = [
        (method.upper(), path, operation)
        for path, operations in schema["paths"].items()
        for method, operation in operations.items()
    ]
    assert len(operations) >= 37
    for method, path, operation in operations:
        assert any(code.startswith("2") for code in operation["responses"]), (method, path)
        for code, answer in operation["responses"].items():
            [(media_type, content)] = answer["content"].items()
            where = (method, path, code, media_type)
            assert content["schema"] not in ({}, {"type": "object"}, {"type": "array"}), where
            assert "status_code" not in str(content["schema"]), where  # Litestar's own shape
            assert content.get("examples"), where


def test_the_errors_are_documented_in_each_dialects_own_shape():
    schema = document()
    shapes = {
        "/job": "TaskEngineError",
        "/tasks": "TasksFailure",
        "/api/worktasks": "WorkTaskFailure",
        "/apis/v1/tasks/operations": "DroveFailure",
    }
    for path, shape in shapes.items():
        [operation] = [op for method, op in schema["paths"][path].items() if method == "post"]
        for code in ("400", "401", "413"):
            content = operation["responses"][code]["content"]["application/json"]
            assert content["schema"]["$ref"].endswith(f"/{shape}"), (path, code)


def test_the_document_names_how_clients_authenticate():
    schemes = document()["components"]["securitySchemes"]
    assert schemes["bearer"]["scheme"] == "bearer"
    assert schemes["basic"]["scheme"] == "basic"
    assert (schemes["client"]["name"], schemes["api-key"]["name"]) == ("client", "api-key")
    schema = document()
    assert len(schema["security"]) == 3  # any one of the header styles
    assert schema["paths"]["/"]["get"]["security"] == [{}]  # the one public route
    public = [
        (method, path)
        for path, operations in schema["paths"].items()
        for method, operation in operations.items()
        if "security" in operation
    ]
    assert public == [("get", "/")]


def test_the_schema_page_shows_the_document():
    state = SimpleNamespace(runtime=SimpleNamespace(config=SimpleNamespace(max_body_bytes=1024)))
    with TestClient(create_app(state)) as client:  # type: ignore[arg-type]
        page = client.get("/schema")
        served = client.get("/schema/openapi.json")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "SwaggerUIBundle" in page.text and '"operationId":"submit_job"' in page.text
    assert served.status_code == 200 and served.json()["info"]["title"] == "Taskengine"
