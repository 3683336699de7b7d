"""The Task Engine dialect (seed 002): `/`, `/job`, `/jobs/<id>`, `/logs/<id>`, `/settings`."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from importlib import metadata
from typing import Annotated, Any, ClassVar

import msgspec
from litestar import Controller, Response, get, patch, post, put
from litestar.di import NamedDependency, Provide
from litestar.exceptions import HTTPException
from litestar.params import FromPath
from msgspec import UNSET
from taskengine_contracts.events import (
    Event,
    ScheduleSwitched,
    SettingChanged,
)
from taskengine_core import workflows
from taskengine_core.dialects import drove
from taskengine_core.dialects.drove.submission import rerun_attributes
from taskengine_core.dialects.taskengine.submission import plan_rerun, submitted
from taskengine_core.dialects.taskengine.view import job_view, row_view, stamp
from taskengine_core.errors import DomainError, IllegalTransition
from taskengine_core.ids import SCHEDULES_STREAM, SETTINGS_STREAM
from taskengine_core.jobs import Job, JobState
from taskengine_core.schedules import DUTIES, TICK, active_duties, duty
from taskengine_core.settings import RuntimeSettings, validate_setting
from taskengine_store import queries
from taskengine_store.store import Conflict, Statement

from taskengine_gateway.answers import AUTHENTICATED as AUTH
from taskengine_gateway.answers import query
from taskengine_gateway.auth import Client
from taskengine_gateway.bodies import Documented, body, checked, described, given
from taskengine_gateway.dialects import taskengine_answers as a
from taskengine_gateway.dialects.taskengine_answers import ANSWERS
from taskengine_gateway.dialects.taskengine_changes import plan_patch
from taskengine_gateway.dialects.taskengine_errors import JobConflict, JobForbidden, JobRefused
from taskengine_gateway.dialects.taskengine_fields import (
    DEFAULT_PRIORITY,
    SEMAPHORE_FIELDS,
    parse_callbacks,
    parse_priority,
    parse_run_at,
    parse_semaphore,
    parse_timeout,
)
from taskengine_gateway.dialects.taskengine_lists import list_filter
from taskengine_gateway.errors import BadRequest, Forbidden
from taskengine_gateway.health import ComponentDown, health_report
from taskengine_gateway.job_io import JOB_NUMBER, commit, job_numbered
from taskengine_gateway.quotas import priority_reserved
from taskengine_gateway.state import GatewayState

VERSION = metadata.version("taskengine-gateway")


# --- requests -------------------------------------------------------------------------------
# `job` and `parameters` are typed (msgspec checks them, in the dialect's words); the other
# fields are documented with their JSON type and checked by `job_submission` and `plan_patch`
# (see `bodies`).

PRIORITY = described("integer", "1 (highest) to 10; 5 if not given", 5)
RUN_AT = described(
    ["string", "null"], "when to run it, yyyy-MM-ddTHH:mm:ss.fff in UTC", "2030-01-31T14:30:00.000"
)
SEMAPHORE = described(
    ["string", "null"],
    "an http(s) URL the job waits on until it answers 200 (null or empty: none)",
    "https://gate.example.com/open",
)
SEMAPHORE_SPELT = described(["string", "null"], "the seed's own spelling of semaphore_url", None)
CLIENT = described("string", "the client the credentials name (optional; must match)", "billing")


class Workflow(msgspec.Struct):
    """The workflow a job runs (other fields are ignored)."""

    workflow: Annotated[str, msgspec.Meta(description="a registered workflow's name")]


class JobRequest(Documented):
    """`POST /job`: submits a job running a workflow with its parameters (unknown fields are
    ignored)."""

    EXAMPLE: ClassVar[dict[str, Any]] = {
        "job": {"workflow": "echo"},
        "parameters": {"message": "hello", "rest_endpoints": ["https://example.com/done"]},
        "priority": 5,
    }

    job: Annotated[
        Workflow,
        checked(
            "the workflow to run",
            {"workflow": "echo"},
            refused="job.workflow is required and must be a string",
        ),
    ]
    parameters: Annotated[
        dict[str, Any],
        checked(
            "the workflow's parameters; `rest_endpoints` (callback URLs) and `timeout` (seconds)"
            " are the engine's own",
            {"message": "hello", "timeout": 600},
            refused="parameters must be a JSON object",
        ),
    ] = msgspec.field(default_factory=dict)
    priority: Annotated[Any, PRIORITY] = UNSET
    run_at: Annotated[Any, RUN_AT] = UNSET
    client: Annotated[Any, CLIENT] = UNSET
    semaphore_url: Annotated[Any, SEMAPHORE] = UNSET
    sempahore_url: Annotated[Any, SEMAPHORE_SPELT] = UNSET


class JobUpdate(Documented, forbid_unknown_fields=True):
    """`PATCH /jobs/<id>`: changes a waiting job (any of these fields; others are refused)."""

    EXAMPLE: ClassVar[dict[str, Any]] = {"priority": 2, "queue_state": "paused"}

    client: Annotated[Any, CLIENT] = UNSET
    persist: Annotated[Any, described("boolean", "keep the job after it ends", True)] = UNSET
    priority: Annotated[Any, PRIORITY] = UNSET
    queue_state: Annotated[
        Any, described("string", "paused, broken, or queued (a paused job again)", "paused")
    ] = UNSET
    run_at: Annotated[Any, RUN_AT] = UNSET
    semaphore_url: Annotated[Any, SEMAPHORE] = UNSET
    sempahore_url: Annotated[Any, SEMAPHORE_SPELT] = UNSET


class ScheduleSwitch(Documented):
    """`PUT /scheduler`: switches one of the engine's schedules on or off (admins only)."""

    EXAMPLE: ClassVar[dict[str, Any]] = {"schedule": "cleanup", "active": False}

    schedule: Annotated[Any, described("string", "the schedule's name", "cleanup")] = None
    active: Annotated[Any, described("boolean", "on (true) or off (false)", False)] = None


class SettingChange(Documented):
    """`POST /settings`: creates or changes a runtime setting (admins only)."""

    EXAMPLE: ClassVar[dict[str, Any]] = {"name": "max_jobs", "setting": 20}

    name: Annotated[Any, described("string", "the setting's name", "max_jobs")] = None
    setting: Annotated[
        Any, described(["integer", "number", "string", "boolean"], "its new value", 20)
    ] = None


class JobAccepted(msgspec.Struct):
    """The answer to a job submitted (or rerun)."""

    id: Annotated[int, msgspec.Meta(description="the job's number", examples=[42])]
    result: Annotated[str, msgspec.Meta(description='"accepted"', examples=["accepted"])]


ACCEPTED = {"id": 42, "result": "accepted"}
CHANGED = {"id": 42, "result": "Performed updates: priority, queue_state"}
DASHBOARD = {
    "max_jobs": 10,
    "priority_slots": 2,
    "started": [{k: v for k, v in a.LISTED.items() if k != "parameters"}],
    "queued": [],
    "scheduled": [],
    "version": VERSION,
}
SWITCHED = {"result": "ok", "schedules": ["queue_scheduled_jobs", "fire_scheduled_tasks"]}
SET = {"result": "ok", "message": "max_jobs setting updated"}


def job_submission(
    data: dict[str, Any], client: Client
) -> tuple[str, dict, int, datetime | None, str | None]:
    """Validates the rest of a `POST /job` body (the fields `given` by a `JobRequest`);
    returns (workflow, parameters, priority, run_at, semaphore)."""
    if "client" in data and data["client"] != client.name:
        raise Forbidden(f"body client {data['client']!r} does not match the credentials")
    workflow, parameters = data["job"].workflow, data["parameters"]
    try:
        workflows.validate(workflow, parameters)
    except (DomainError, ValueError) as error:
        raise BadRequest(str(error)) from None
    priority = parse_priority(data["priority"]) if "priority" in data else DEFAULT_PRIORITY
    run_at = parse_run_at(data["run_at"]) if data.get("run_at") is not None else None
    semaphore = parse_semaphore(data) if set(SEMAPHORE_FIELDS) & set(data) else None
    return workflow, parameters, priority, run_at, semaphore


def refuse_reserved_priority(
    priority: int, client: Client, gateway: GatewayState, job_id: int | None = None
) -> None:
    """403 for a priority more urgent than TASKENGINE_TOP_PRIORITY (admins may use any)."""
    if priority_reserved(priority, client.admin, gateway.runtime.config):
        top = gateway.runtime.config.top_priority
        raise JobForbidden(
            f"priority {priority} is reserved: client {client.name} may use {top} to 10"
            " (1 is the highest)",
            job_id=job_id,
        )


async def refuse_internal(gateway: GatewayState, urls: list[str]) -> None:
    """Callback and semaphore URLs must not lead inside the engine's network (SSRF)."""
    for url in urls:
        if refusal := await gateway.guard.refusal(url, unresolvable_ok=True):
            raise BadRequest(f"{url} is refused: {refusal}")


async def load_job(
    gateway: NamedDependency[GatewayState], job_id: FromPath[str], client: NamedDependency[Client]
) -> Job:
    """The caller's job rebuilt from its events; another client's job does not exist for it.
    An unknown or malformed job id is the seed's error response, a 400, on every job route."""
    if not JOB_NUMBER.fullmatch(job_id):
        raise BadRequest(f"job {job_id[:40]!r} not found")
    job = await job_numbered(gateway, job_id)
    if job is None or job.client != client.name:
        raise BadRequest(f"job {job_id} not found")
    return job


class TaskEngineController(Controller):
    """Seed 002. Every route but `/` needs a client's credentials."""

    @get(
        "/",
        operation_id="alive",
        security=[{}],  # the one route that needs no credentials
        responses=ANSWERS(200, a.Alive, {"result": "alive"}, "the engine answers"),
    )
    async def alive(self) -> dict[str, str]:
        return {"result": "alive"}

    @post(
        "/job",
        operation_id="submit_job",
        status_code=200,
        opt={"job": True},
        responses=a.JOB_ERRORS(
            200, JobAccepted, ACCEPTED, "the job is stored", *AUTH, 400, 403, 413
        ),
    )
    async def submit_job(
        self,
        data: Annotated[JobRequest, body(JobRequest)],
        gateway: NamedDependency[GatewayState],
        client: NamedDependency[Client],
    ) -> JobAccepted:
        workflow, parameters, priority, run_at, semaphore = job_submission(given(data), client)
        callbacks = parse_callbacks(parameters)
        timeout = parse_timeout(parameters)
        await refuse_internal(gateway, callbacks + ([semaphore] if semaphore else []))
        refuse_reserved_priority(priority, client, gateway)
        now = datetime.now(UTC)

        def build(number: int) -> list[Event]:
            return [
                submitted(
                    number,
                    client.name,
                    now,
                    workflow=workflow,
                    parameters=parameters,
                    priority=priority,
                    run_at=run_at,
                    semaphore_url=semaphore,
                    callbacks=callbacks,
                    timeout=timeout,
                )
            ]

        number = await gateway.submitter.submit(build)
        return JobAccepted(number, "accepted")

    @get(
        "/health",
        operation_id="health",
        responses={
            **ANSWERS(200, a.Health, a.HEALTH, "every component answers", *AUTH),
            500: ANSWERS.failure(500),
        },
    )
    async def health(
        self, gateway: NamedDependency[GatewayState], client: NamedDependency[Client]
    ) -> Response:
        try:
            report = await health_report(
                gateway.runtime, gateway.heartbeats, await current_settings(gateway), VERSION
            )
        except ComponentDown as down:
            return Response({"error": str(down)}, status_code=500)
        return Response(report)

    @get(
        "/jobs",
        operation_id="list_jobs",
        responses=ANSWERS(200, list[a.ListedJob], [a.LISTED], "the client's jobs", *AUTH, 400),
    )
    async def list_jobs(
        self,
        gateway: NamedDependency[GatewayState],
        client: NamedDependency[Client],
        queue_state: Annotated[
            str | None, query("0 (queued) to 6 (paused)", "2", name="state")
        ] = None,
        failed: Annotated[str | None, query("1 or 0: failed jobs or the others", "1")] = None,
        job_ids: Annotated[str | None, query("comma-separated job ids", "41,42")] = None,
        search: Annotated[str | None, query("text in the workflow or parameters", "hello")] = None,
        order_by: Annotated[
            str | None, query("a job property, by name or number (id if not given)", "priority")
        ] = None,
        asc: Annotated[str | None, query("1: oldest first", "1")] = None,
        limit: Annotated[str | None, query("1 to 1000 (10 if not given)", "10")] = None,
        created_from: Annotated[
            str | None, query("created at or after", "2030-01-31T00:00:00", name="from")
        ] = None,
        created_to: Annotated[
            str | None, query("created at or before", "2030-02-01T00:00:00", name="to")
        ] = None,
        persist: Annotated[str | None, query("1 or 0: kept after ending or not", "1")] = None,
        named: Annotated[
            str | None, query("a client: another client's lists none", "billing", name="client")
        ] = None,
    ) -> list:
        given = {
            "state": queue_state,
            "failed": failed,
            "job_ids": job_ids,
            "search": search,
            "order_by": order_by,
            "asc": asc,
            "limit": limit,
            "from": created_from,
            "to": created_to,
            "persist": persist,
            "client": named,
        }
        wanted = list_filter(
            {name: value for name, value in given.items() if value is not None}, client.name
        )
        rows = await gateway.reads.query(queries.job_list, wanted)
        return [row_view(row) for row in rows]

    @get(
        "/dashboard",
        operation_id="dashboard",
        responses=ANSWERS(
            200, a.Dashboard, DASHBOARD, "the client's running and waiting jobs", *AUTH
        ),
    )
    async def dashboard(
        self, gateway: NamedDependency[GatewayState], client: NamedDependency[Client]
    ) -> dict:
        rows = await gateway.reads.query(queries.job_dashboard, client.name)
        settings = await current_settings(gateway)
        lists: dict[str, list] = {"started": [], "queued": [], "scheduled": []}
        for row in rows:
            view = row_view(row)
            view.pop("parameters")
            lists.setdefault(view["queue_state"], []).append(view)
        return {
            "max_jobs": settings.max_jobs,
            "priority_slots": settings.int("priority_slots"),
            **lists,
            "version": VERSION,
        }

    @get(
        "/jobs/{job_id:str}",
        operation_id="get_job",
        responses=ANSWERS(200, a.JobView, a.JOB, "the job", *AUTH, 400),
    )
    async def get_job(
        self,
        job_id: FromPath[str],
        gateway: NamedDependency[GatewayState],
        client: NamedDependency[Client],
    ) -> dict:
        job = await load_job(gateway, job_id, client)
        return job_view(job, await queue_position(gateway, job))

    # The job is looked up before the body's fields are checked: another client's is not found.
    @patch(
        "/jobs/{job_id:str}",
        operation_id="update_job",
        opt={"job": True},
        responses=a.JOB_ERRORS(
            200, a.JobChanged, CHANGED, "the job changed", *AUTH, 400, 403, 409, 413
        ),
        dependencies={"job": Provide(load_job)},
    )
    async def update_job(
        self,
        job: NamedDependency[Job],
        data: Annotated[JobUpdate, body(JobUpdate)],
        gateway: NamedDependency[GatewayState],
        client: NamedDependency[Client],
    ) -> dict:
        changes = given(data)
        try:
            events, done = plan_patch(job, changes, client.name, datetime.now(UTC))
        except IllegalTransition as error:
            raise JobRefused(str(error), job_id=job.job_id) from None
        if set(SEMAPHORE_FIELDS) & set(changes) and (semaphore := parse_semaphore(changes)):
            await refuse_internal(gateway, [semaphore])
        if "priority" in changes:
            refuse_reserved_priority(parse_priority(data.priority), client, gateway, job.job_id)
        await commit_job_change(gateway, job, events)
        return {"id": job.job_id, "result": f"Performed updates: {', '.join(done)}"}

    @post(
        "/jobs/{job_id:str}/rerun",
        operation_id="rerun_job",
        status_code=200,
        responses=a.JOB_ERRORS(200, JobAccepted, ACCEPTED, "the rerun is stored", *AUTH, 400, 409),
    )
    async def rerun_job(
        self,
        job_id: FromPath[str],
        gateway: NamedDependency[GatewayState],
        client: NamedDependency[Client],
    ) -> JobAccepted:
        job = await load_job(gateway, job_id, client)
        store = gateway.runtime.store
        [number] = await gateway.runtime.call(store.next_job_ids, 1)
        drove_task = job.dialect == drove.DIALECT
        events = plan_rerun(
            job,
            number,
            client.name,
            datetime.now(UTC),
            parse_callbacks(job.parameters),
            rerun_attributes(job.attributes) if drove_task else None,
        )
        # A Drove taskId names its latest instance: the rerun, from now on.
        statements = [queries.drove_rerun(job.job_id, number)] if drove_task else []
        await commit_job_change(gateway, job, events, statements)
        return JobAccepted(number, "accepted")

    @get(
        "/logs/{job_id:str}",
        operation_id="get_logs",
        responses=ANSWERS(
            200, list[a.LogEntry], [a.LOG], "the job's log, oldest first", *AUTH, 400
        ),
    )
    async def get_logs(
        self,
        job_id: FromPath[str],
        gateway: NamedDependency[GatewayState],
        client: NamedDependency[Client],
    ) -> list[dict]:
        job = await load_job(gateway, job_id, client)
        rows = await gateway.reads.query(queries.job_log, job.job_id)
        return [
            {
                "id": row["id"],
                "job_id": row["job_id"],
                "severity": row["severity"],
                "severity_description": ("DEBUG", "INFO", "WARN", "ERROR")[row["severity"]],
                "progname": row["progname"],
                "message": row["message"],
                "created_at": stamp(row["created_at"]),
                "updated_at": stamp(row["created_at"]),
                "task_id": row["task_id"],
                "visible": True,
            }
            for row in rows
        ]

    @get(
        "/schedules",
        operation_id="list_schedules",
        responses=ANSWERS(200, a.Schedules, a.SCHEDULES, "the engine's schedules", *AUTH),
    )
    async def list_schedules(
        self, gateway: NamedDependency[GatewayState], client: NamedDependency[Client]
    ) -> dict:
        active = await current_duties(gateway)
        settings = await current_settings(gateway)
        return {
            "result": "ok",
            "schedules": {
                name: {
                    "class": d.cls,
                    "every": [settings.int(d.every) if d.every else TICK, {"first_in": 0}],
                    "queue": d.queue,
                    "description": d.description,
                    "active": active[name],
                }
                for name, d in DUTIES.items()
            },
        }

    @put(
        "/scheduler",
        operation_id="switch_schedule",
        status_code=200,
        responses=ANSWERS(200, a.Switched, SWITCHED, "switched", *AUTH, 400, 403, 409, 413),
    )
    async def switch_schedule(
        self,
        data: Annotated[ScheduleSwitch, body(ScheduleSwitch)],
        gateway: NamedDependency[GatewayState],
        client: NamedDependency[Client],
    ) -> dict:
        if not client.admin:
            raise Forbidden("schedules can be switched only by an admin client")
        try:
            name = duty(data.schedule).name
        except DomainError as error:
            raise BadRequest(str(error)) from None
        if not isinstance(data.active, bool):
            raise BadRequest("active must be true or false")

        def switch(events: list, version: int) -> ScheduleSwitched:
            return ScheduleSwitched(
                id=SCHEDULES_STREAM,
                version=version,
                at=datetime.now(UTC),
                name=name,
                active=data.active,
                by=client.name,
            )

        await append_shared(gateway, SCHEDULES_STREAM, switch)
        active = await current_duties(gateway)
        return {"result": "ok", "schedules": [n for n, on in active.items() if on]}

    @post(
        "/settings",
        operation_id="update_setting",
        status_code=200,
        responses=ANSWERS(200, a.Done, SET, "the setting is stored", *AUTH, 400, 403, 409, 413),
    )
    async def update_setting(
        self,
        data: Annotated[SettingChange, body(SettingChange)],
        gateway: NamedDependency[GatewayState],
        client: NamedDependency[Client],
    ) -> dict:
        if not client.admin:
            raise Forbidden("settings can be changed only by an admin client")
        try:
            name, value = validate_setting(data.name, data.setting)
        except DomainError as error:
            raise BadRequest(str(error)) from None
        created = False

        def change(events: list, version: int) -> SettingChanged:
            nonlocal created
            created = not any(isinstance(e, SettingChanged) and e.name == name for e in events)
            return SettingChanged(
                id=SETTINGS_STREAM, version=version, at=datetime.now(UTC), name=name, value=value
            )

        await append_shared(gateway, SETTINGS_STREAM, change)
        return {"result": "ok", "message": f"{name} setting {'created' if created else 'updated'}"}


async def current_settings(gateway: GatewayState) -> RuntimeSettings:
    """The settings as stored now (the gateway does not follow the bus for them)."""
    events = await gateway.runtime.call(gateway.runtime.store.stream, SETTINGS_STREAM)
    return RuntimeSettings.fold(e for e in events if isinstance(e, SettingChanged))


async def append_shared(gateway: GatewayState, stream_id, build):  # type: ignore[no-untyped-def]
    """Appends to a stream many writers share; 409 if it stays contended."""
    try:
        return await gateway.runtime.call(gateway.runtime.store.append_next, stream_id, build)
    except Conflict:
        raise HTTPException(status_code=409, detail="changed concurrently; retry") from None


async def current_duties(gateway: GatewayState) -> dict[str, bool]:
    events = await gateway.runtime.call(gateway.runtime.store.stream, SCHEDULES_STREAM)
    return active_duties(e for e in events if isinstance(e, ScheduleSwitched))


async def commit_job_change(
    gateway: GatewayState, job: Job, events: list, statements: Sequence[Statement] = ()
) -> None:
    try:
        await commit(gateway, events, statements)
    except Conflict:
        raise JobConflict(
            f"job {job.job_id} changed meanwhile; read it and retry", job_id=job.job_id
        ) from None


async def queue_position(gateway: GatewayState, job: Job) -> int:
    """1-based place in admission order among queued jobs; 0 when the job is not waiting."""
    if job.state != JobState.QUEUED:
        return 0
    ahead = await gateway.reads.query(
        queries.jobs_queued_ahead, job.priority, job.updated_at, job.job_id
    )
    return ahead + 1
