"""Each dialect answers a bad request body in its own shape, from one handler and its table."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from litestar import Litestar, post
from litestar.params import FromPath, JSONBody
from litestar.testing import TestClient
from taskengine_gateway.bodies import refuse_nul
from taskengine_gateway.dialects.drove_api import DROVE
from taskengine_gateway.dialects.taskengine_errors import TASKENGINE
from taskengine_gateway.dialects.tasks_api import TASKS
from taskengine_gateway.dialects.worktasks_api import WORKTASKS
from taskengine_gateway.errors import ErrorShape, handler


class Body(msgspec.Struct, forbid_unknown_fields=True):
    name: Any = msgspec.UNSET


def client_for(shape: ErrorShape, opt: dict[str, Any] | None = None) -> TestClient:
    @post("/things/{job_id:str}", status_code=200, opt=opt or {})
    async def write(job_id: FromPath[str], data: JSONBody[Body]) -> dict:
        return {"name": data.name}

    app = Litestar(
        [write],
        exception_handlers=handler(shape),
        before_request=refuse_nul,
        request_max_body_size=100,
    )
    return TestClient(app)


BAD = {
    "malformed": b"{nope",
    "not an object": b"[1, 2]",
    "nul": b'{"name": "a\\u0000b"}',
    "unknown": b'{"colour": "red"}',
}


def answers(shape: ErrorShape, opt: dict[str, Any] | None = None) -> dict[str, Any]:
    with client_for(shape, opt) as client:
        found = {}
        for name, body in BAD.items():
            response = client.post("/things/7", content=body)
            found[name] = (response.status_code, response.json())
        too_large = client.post("/things/7", content=b'{"name": "' + b"x" * 200 + b'"}')
        found["too large"] = (too_large.status_code, too_large.json())
        wrong = client.get("/things/7")
        found["method"] = (wrong.status_code, wrong.json())
        return found


def test_the_task_engine_shape_names_the_job_on_a_job_route():
    plain, job = answers(TASKENGINE), answers(TASKENGINE, {"job": True})
    assert plain["malformed"][0] == 400 and plain["malformed"][1]["error"].startswith(
        "malformed JSON"
    )
    assert plain["not an object"] == (400, {"error": "the body must be a JSON object"})
    assert plain["nul"] == (400, {"error": "NUL characters (\\u0000) are not accepted"})
    assert plain["unknown"][1]["error"].startswith("cannot update colour")
    assert plain["too large"] == (413, {"error": "request body too large"})
    assert plain["method"] == (405, {"error": "method GET not allowed on /things/7"})
    assert job["not an object"] == (400, {"id": 7, "error": "the body must be a JSON object"})


def test_the_scheduled_tasks_shape_is_fastapis():
    found = answers(TASKS)
    status, body = found["malformed"]
    assert status == 422 and body["detail"][0]["type"] == "json_invalid"
    problem = {"loc": ["body", "colour"], "msg": "unknown field 'colour'"}
    problem["type"] = "extra_forbidden"
    assert found["unknown"] == (422, {"detail": [problem]})
    assert found["too large"] == (413, {"detail": "Request body too large"})
    assert found["method"] == (405, {"detail": "Method GET not allowed on /things/7"})


def test_the_work_tasks_shape_is_an_error_message():
    found = answers(WORKTASKS)
    assert found["not an object"] == (400, {"error": "the body must be a JSON object"})
    assert found["unknown"] == (400, {"error": "unknown field 'colour'"})
    assert found["too large"] == (413, {"error": "request body too large"})


@pytest.mark.parametrize("name", BAD)
def test_drove_refuses_a_body_in_its_envelope_with_validation_errors(name):
    status, body = answers(DROVE)[name]
    assert status == 400 and body["status"] == "FAILED"
    assert body["data"] == {"validationErrors": [body["message"]]}


def test_drove_envelopes_other_errors_too():
    found = answers(DROVE)
    assert found["unknown"][1]["message"] == "unknown field colour"
    assert found["too large"] == (
        413,
        {"status": "FAILED", "data": {}, "message": "request body too large"},
    )
