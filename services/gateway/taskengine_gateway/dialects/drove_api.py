"""The container-tasks dialect (seed 004, Drove): `/apis/v1/ping`, task operations, task
instances and search, and the tasks' log files.

Every answer is Drove's envelope `{"status": "SUCCESS" | "FAILED", "data", "message"}`, errors
too (400, 401, 404, 409, 413; a FAILED answer stores nothing), except the log file API, which
answers Drove's bare shapes (`{"files"}`, `{"data", "offset"}`, the file itself). A task is a job
(`dialect="drove"`) read by folding its stream (read-your-writes). `drove_task_ids` maps each
live (client, sourceAppName, taskId) to its job; it is written in the same transaction as the
job's submission and its deletion, so a taskId stays unique however fast two CREATEs race.
"""

from __future__ import annotations

import logging
import socket
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar

from litestar import Controller, Request, Response, delete, get, post, route
from litestar.di import NamedDependency
from litestar.exceptions import HTTPException
from litestar.params import FromPath
from msgspec import UNSET
from taskengine_contracts.events import JobBroken, JobCancelled
from taskengine_core.dialects.drove import DIALECT
from taskengine_core.dialects.drove.status import task_status
from taskengine_core.dialects.drove.submission import (
    NAME,
    InvalidTask,
    check_host_paths,
    check_resources,
    create_operation,
    kill_operation,
    operation_type,
    task_key,
)
from taskengine_core.dialects.drove.view import instance_view
from taskengine_core.errors import IllegalTransition
from taskengine_core.jobs import FINAL_STATES, Job, JobState, advance
from taskengine_core.quotas import ResourceLimits
from taskengine_store import queries

from taskengine_gateway.answers import AUTHENTICATED as AUTH
from taskengine_gateway.answers import query
from taskengine_gateway.auth import Client
from taskengine_gateway.bodies import BodyProblem, Documented, before_body, body, described, given
from taskengine_gateway.dialects import drove_answers as a
from taskengine_gateway.dialects.drove_answers import ANSWERS
from taskengine_gateway.errors import ErrorShape, handler
from taskengine_gateway.job_io import Planned, change, jobs_numbered
from taskengine_gateway.state import GatewayState

log = logging.getLogger(__name__)

HOSTNAME = socket.gethostname()
"""The host a task that ran on the local executor (no cluster) reports."""
MAX_LISTED = 1000
LOG_FILES = ("output.log",)
DEFAULT_READ, MAX_READ = 65_536, 1_048_576
MAX_OFFSET = 2**31 - 2
"""PostgreSQL's substr takes a 32-bit position; a larger offset is past any log's end."""
INSTANCE = "/tasks/{source_app:str}/instances/{task_id:str}"
LOGS = "/logfiles/tasks/{source_app:str}/{task_id:str}"
LOG_PATHS = [f"{LOGS}/list", f"{LOGS}/read/{{file_name:str}}", f"{LOGS}/download/{{file_name:str}}"]
GET_ONLY = ["/ping", "/tasks", *LOG_PATHS]
POST_ONLY = ["/tasks/operations", "/tasks/search"]


class DroveError(HTTPException):
    """A FAILED answer with its status code and message."""

    def __init__(self, status_code: int, message: str):
        super().__init__(status_code=status_code, detail=message)


def envelope(data: object, message: str = "success", status: str = "SUCCESS") -> dict:
    return {"status": status, "data": data, "message": message}


def _invalid(request: Request, problem: BodyProblem) -> Exception:
    if problem.unknown:
        return InvalidTask(
            request.route_handler.opt.get("unknown", f"unknown field {problem.unknown}")
        )
    return InvalidTask(problem.message)


def _own(request: Request, error: Exception) -> Response | None:
    if isinstance(error, InvalidTask):
        # drove-cli prints `validationErrors`; `data` stays an object for it.
        body = envelope({"validationErrors": [str(error)]}, str(error), "FAILED")
        return Response(body, status_code=400)
    return None


DROVE = ErrorShape(
    body=lambda message: envelope({}, message, "FAILED"),
    invalid=_invalid,
    own=_own,
    challenge='Basic realm="taskengine"',
)


# --- requests ---------------------------------------------------------------------------------
# Each field is documented with its JSON type; its value is checked (and a bad one worded) by
# `create_operation` and `kill_operation` (see `bodies`).

APP = described("string", "the application: 1 to 100 letters, digits, '-' or '_'", "billing")
TASK = described("string", "the task: 1 to 100 letters, digits, '-' or '_'", "nightly-17")
SPEC = {
    "sourceAppName": "billing",
    "taskId": "nightly-17",
    "executable": {"type": "WORKFLOW", "name": "echo", "parameters": {"message": "hi"}},
    "resources": [{"type": "CPU", "count": 1}, {"type": "MEMORY", "sizeInMB": 128}],
}


class TaskOperation(Documented, forbid_unknown_fields=True):
    """`POST /apis/v1/tasks/operations`: `{"type": "CREATE", "spec": {...}, "opSpec": {...}}`
    starts a task, `{"type": "KILL", "sourceAppName", "taskId", "opSpec"}` kills one."""

    EXAMPLE: ClassVar[dict[str, Any]] = {"type": "CREATE", "spec": SPEC}

    type: Annotated[Any, described("string", "CREATE or KILL", "CREATE")] = UNSET
    spec: Annotated[Any, described("object", "the task to create (CREATE)", SPEC)] = UNSET
    opSpec: Annotated[  # noqa: N815 (Drove's name)
        Any,
        described(
            ["object", "null"],
            "timeout, parallelism (1-32), failureStrategy (STOP or CONTINUE)",
            {"timeout": "300 seconds", "parallelism": 1, "failureStrategy": "STOP"},
        ),
    ] = UNSET
    sourceAppName: Annotated[Any, APP] = UNSET  # noqa: N815
    taskId: Annotated[Any, TASK] = UNSET  # noqa: N815


class TaskSearch(Documented, forbid_unknown_fields=True):
    """`POST /apis/v1/tasks/search`: `{"sourceAppName", "taskId"}`, either or both (or, as a
    form, `taskSearchAppName` and `taskSearchTaskID`: a redirect to the instance)."""

    EXAMPLE: ClassVar[dict[str, Any]] = {"sourceAppName": "billing"}

    sourceAppName: Annotated[Any, APP] = UNSET  # noqa: N815
    taskId: Annotated[Any, TASK] = UNSET  # noqa: N815


TASK_ID = a.enveloped({"taskId": "nightly-17"})
INSTANCES = a.enveloped([a.INSTANCE])
SEARCH_BY = "search by sourceAppName and/or taskId (no other fields)"


async def search_by_form(request: Request) -> Response | None:
    """A search sent as a form (Drove's UI) answers here: a redirect to the instance found."""
    if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        await before_body(request)
        return None  # a JSON search: the handler's
    gateway: GatewayState = request.app.state.gateway
    client = await gateway.authenticator.authenticate(request)
    form = await request.form()
    key = {"sourceAppName": form.get("taskSearchAppName"), "taskId": form.get("taskSearchTaskID")}
    source_app, task_id = task_key(key, "form field ")
    await find_task(gateway, client, source_app, task_id)
    location = f"/apis/v1/tasks/{source_app}/instances/{task_id}"
    return Response(envelope(location, "found"), status_code=303, headers={"Location": location})


# --- the controller ---------------------------------------------------------------------------


class DroveController(Controller):
    """Seed 004. Every route needs a client's credentials (`Authorization: Basic client:key`
    or any other header style); a client sees only its own tasks."""

    path = "/apis/v1"
    exception_handlers = handler(DROVE)

    @get(
        "/ping",
        operation_id="drove_ping",
        responses=ANSWERS(200, a.Pong, a.enveloped("pong"), "the engine answers", *AUTH),
    )
    async def ping(self, client: NamedDependency[Client]) -> dict:
        return envelope("pong")

    @post(
        "/tasks/operations",
        operation_id="drove_task_operation",
        status_code=200,
        responses=ANSWERS(200, a.TaskIdAnswer, TASK_ID, "done", *AUTH, 400, 404, 409, 413),
    )
    async def operation(
        self,
        data: Annotated[TaskOperation, body(TaskOperation)],
        gateway: NamedDependency[GatewayState],
        client: NamedDependency[Client],
    ) -> dict:
        operation = given(data)
        if operation_type(operation) == "CREATE":
            return envelope({"taskId": await create_task(gateway, client, operation)})
        return envelope({"taskId": await kill_task(gateway, client, operation)})

    @get(
        "/tasks",
        operation_id="drove_list_tasks",
        responses=ANSWERS(200, a.InstancesAnswer, INSTANCES, "the client's tasks", *AUTH),
    )
    async def list_tasks(
        self, gateway: NamedDependency[GatewayState], client: NamedDependency[Client]
    ) -> dict:
        store = gateway.runtime.store
        numbers = await gateway.runtime.call(queries.drove_job_ids, store, client.name, MAX_LISTED)
        return envelope([instance_view(job, HOSTNAME) for job in await load_jobs(gateway, numbers)])

    @get(
        INSTANCE,
        operation_id="drove_get_task",
        responses=ANSWERS(200, a.InstanceAnswer, a.enveloped(a.INSTANCE), "the task", *AUTH, 404),
    )
    async def get_task(
        self,
        source_app: FromPath[str],
        task_id: FromPath[str],
        gateway: NamedDependency[GatewayState],
        client: NamedDependency[Client],
    ) -> dict:
        return envelope(
            instance_view(await find_task(gateway, client, source_app, task_id), HOSTNAME)
        )

    @delete(
        INSTANCE,
        operation_id="drove_delete_task",
        status_code=200,
        responses=ANSWERS(200, a.TaskIdAnswer, TASK_ID, "the task is deleted", *AUTH, 404, 409),
    )
    async def delete_task(
        self,
        source_app: FromPath[str],
        task_id: FromPath[str],
        gateway: NamedDependency[GatewayState],
        client: NamedDependency[Client],
    ) -> dict:

        async def load() -> Job:
            return await find_task(gateway, client, source_app, task_id)

        async def plan(job: Job) -> Planned[dict]:
            if job.state not in FINAL_STATES:
                state = task_status(job).state
                raise DroveError(409, f"task {task_id} of {source_app} is {state}: kill it first")
            forget = queries.drove_forget(job.job_id)
            events = []
            if job.state != JobState.BROKEN:  # its events stay; it leaves the listings
                reason = "deleted through the container-task API"
                events = [advance(job.ref, JobBroken, by=client.name, reason=reason)]
            return Planned(events, envelope({"taskId": task_id}), [forget])

        return await change(gateway, load, plan, DroveError(409, "the task kept changing; retry"))

    @post(
        "/tasks/search",
        operation_id="drove_search_tasks",
        status_code=200,
        responses=ANSWERS(200, a.InstancesAnswer, INSTANCES, "the tasks found", *AUTH, 400, 413),
        before_request=search_by_form,
        opt={"unknown": SEARCH_BY},
    )
    async def search(
        self,
        data: Annotated[TaskSearch, body(TaskSearch)],
        gateway: NamedDependency[GatewayState],
        client: NamedDependency[Client],
    ) -> Response:
        wanted = given(data)
        if not wanted:
            raise InvalidTask(SEARCH_BY)
        task_key({"sourceAppName": "x", "taskId": "x", **wanted}, "")
        numbers = await gateway.runtime.call(
            queries.drove_job_ids,
            gateway.runtime.store,
            client.name,
            MAX_LISTED,
            wanted.get("sourceAppName"),
            wanted.get("taskId"),
        )
        return Response(
            envelope([instance_view(job, HOSTNAME) for job in await load_jobs(gateway, numbers)])
        )

    # --- log files (Drove's bare shapes) ------------------------------------------------------

    @get(
        f"{LOGS}/list",
        operation_id="drove_log_files",
        responses=ANSWERS(
            200, a.LogFiles, {"files": list(LOG_FILES)}, "the task's log files", *AUTH, 404
        ),
    )
    async def log_files(
        self,
        source_app: FromPath[str],
        task_id: FromPath[str],
        gateway: NamedDependency[GatewayState],
        client: NamedDependency[Client],
    ) -> dict:
        await find_task(gateway, client, source_app, task_id)
        return {"files": list(LOG_FILES)}

    @get(
        f"{LOGS}/read/{{file_name:str}}",
        operation_id="drove_read_log",
        responses=ANSWERS(
            200, a.LogRead, {"data": "hello\n", "offset": 0}, "the part read", *AUTH, 400, 404
        ),
    )
    async def read_log(
        self,
        source_app: FromPath[str],
        task_id: FromPath[str],
        file_name: FromPath[str],
        gateway: NamedDependency[GatewayState],
        client: NamedDependency[Client],
        offset: Annotated[
            str | None, query("-1 (the default): the current end; from 0: where to read", "0")
        ] = None,
        length: Annotated[
            str | None, query(f"how many characters, 1 to {MAX_READ} ({DEFAULT_READ})", "4096")
        ] = None,
    ) -> dict:
        """`offset` -1 (the default): no data and the current end; from 0: up to `length`
        characters from there (`offset` in the answer is where `data` starts)."""
        start = _integer(offset, "offset", -1, -1, 2**62)
        size = _integer(length, "length", DEFAULT_READ, 1, MAX_READ)
        job = await log_of(gateway, client, source_app, task_id, file_name)
        if start < 0:
            row = await _output(gateway, job, 1, 0)
            return {"data": "", "offset": row["size"]}
        # PostgreSQL's substr counts from 1; past the end either way: no data
        row = await _output(gateway, job, min(start, MAX_OFFSET) + 1, size)
        return {"data": row["data"], "offset": start}

    @get(
        f"{LOGS}/download/{{file_name:str}}",
        operation_id="drove_download_log",
        responses=ANSWERS(
            200,
            str,
            "hello\n",
            "the whole file",
            *AUTH,
            404,
            media_type="text/plain; charset=utf-8",
        ),
    )
    async def download_log(
        self,
        source_app: FromPath[str],
        task_id: FromPath[str],
        file_name: FromPath[str],
        gateway: NamedDependency[GatewayState],
        client: NamedDependency[Client],
    ) -> Response:
        job = await log_of(gateway, client, source_app, task_id, file_name)
        row = await _output(gateway, job, 1, 2**31 - 1)
        return Response(
            row["data"].encode(),
            media_type="text/plain; charset=utf-8",
            headers={"Content-Disposition": f"attachment; filename={file_name}"},
        )

    @route(
        "/{rest:path}",
        http_method=["GET", "POST", "PUT", "PATCH", "DELETE"],
        operation_id="drove_unknown",
        include_in_schema=False,
    )
    async def unknown(self, request: Request) -> None:
        raise DroveError(404, f"no such endpoint: {request.method} {request.url.path}")

    # Other methods on this dialect's paths: a 405 in its envelope, not the app's shape.
    @route(GET_ONLY, http_method=["POST", "PUT", "PATCH", "DELETE"], include_in_schema=False)
    async def not_get(self, request: Request) -> None:
        raise DroveError(405, f"method {request.method} not allowed on {request.url.path}")

    @route(POST_ONLY, http_method=["GET", "PUT", "PATCH", "DELETE"], include_in_schema=False)
    async def not_post(self, request: Request) -> None:
        raise DroveError(405, f"method {request.method} not allowed on {request.url.path}")

    @route(INSTANCE, http_method=["POST", "PUT", "PATCH"], include_in_schema=False)
    async def not_on_instance(self, request: Request) -> None:
        raise DroveError(405, f"method {request.method} not allowed on {request.url.path}")


# --- use cases ----------------------------------------------------------------------------------


async def create_task(gateway: GatewayState, client: Client, data: dict[str, Any]) -> str:
    """Submits the task's job; its taskId must not be in use by a live task of the same app;
    its volumes only mount the host paths the operator allows."""
    submission = create_operation(data)
    check_host_paths(
        submission.attributes["volumes"], gateway.runtime.config.host_path_prefixes, client.name
    )
    check_resources(submission.attributes["resources"], ResourceLimits.of(gateway.runtime.config))
    key = (client.name, submission.source_app, submission.task_id)
    taken = DroveError(
        409,
        f"task {submission.task_id} of {submission.source_app} exists already:"
        " choose another taskId, or delete the finished instance first",
    )
    if await _task_job_id(gateway, *key) is not None:
        raise taken
    now = datetime.now(UTC)
    claim = (
        "INSERT INTO drove_task_ids (client, source_app, task_id, job_id) VALUES (%s, %s, %s, %s)"
    )
    try:
        await gateway.submitter.submit(
            lambda number: [submission.submitted(number, client.name, now)],
            lambda number: [(claim, (*key, number))],
        )
    except Exception:
        if await _task_job_id(gateway, *key) is not None:  # a concurrent CREATE won
            raise taken from None
        raise
    return submission.task_id


async def kill_task(gateway: GatewayState, client: Client, data: dict[str, Any]) -> str:
    source_app, task_id = kill_operation(data)

    async def load() -> Job:
        return await find_task(gateway, client, source_app, task_id)

    async def plan(job: Job) -> Planned[str]:
        try:
            event = advance(job.ref, JobCancelled, reason="killed (KILL operation)", by=client.name)
        except IllegalTransition:
            state = task_status(job).state
            raise DroveError(
                409, f"task {task_id} of {source_app} is {state} already: nothing to kill"
            ) from None
        return Planned([event], task_id)

    return await change(gateway, load, plan, DroveError(409, "the task kept changing; retry"))


async def find_task(gateway: GatewayState, client: Client, source_app: str, task_id: str) -> Job:
    """The caller's live task; another client's does not exist for it."""
    missing = DroveError(404, f"no task {task_id[:100]} of {source_app[:100]}")
    if not (NAME.fullmatch(source_app) and NAME.fullmatch(task_id)):
        raise missing
    number = await _task_job_id(gateway, client.name, source_app, task_id)
    if number is None:
        raise missing
    jobs = await load_jobs(gateway, [number])
    if not jobs:
        raise missing
    return jobs[0]


async def load_jobs(gateway: GatewayState, numbers: list[int]) -> list[Job]:
    """The Drove jobs `numbers` name, folded from their streams, in that order."""
    jobs = await jobs_numbered(gateway, numbers)
    return [job for job in jobs if job is not None and job.dialect == DIALECT]


async def log_of(
    gateway: GatewayState, client: Client, source_app: str, task_id: str, file_name: str
) -> Job:
    job = await find_task(gateway, client, source_app, task_id)
    if file_name not in LOG_FILES:
        raise DroveError(
            404, f"no log file {file_name[:100]!r}: the files are {', '.join(LOG_FILES)}"
        )
    return job


async def _task_job_id(
    gateway: GatewayState, client: str, source_app: str, task_id: str
) -> int | None:
    store = gateway.runtime.store
    numbers = await gateway.runtime.call(
        queries.drove_job_ids, store, client, 1, source_app, task_id
    )
    return numbers[0] if numbers else None


async def _output(gateway: GatewayState, job: Job, start: int, length: int) -> dict[str, Any]:
    """`output.log`: the lines the task's steps printed (step starts and exits included)."""
    return await gateway.reads.query(queries.job_output, job.job_id, start, length)


def _integer(raw: str | None, name: str, default: int, lowest: int, highest: int) -> int:
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        value = lowest - 1
    if not lowest <= value <= highest:
        raise InvalidTask(f"{name} must be an integer from {lowest} to {highest}, got {raw[:40]!r}")
    return value
