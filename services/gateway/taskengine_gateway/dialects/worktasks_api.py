"""The work-tasks dialect (seed 000): `/api/worktasks`, its workers' reports and logs, and
`/api/metrics`.

Errors take this dialect's shape: `{"error": "..."}` with 400, 401, 404, 409 or 413. A work
task is a job (`dialect="worktasks"`) read by folding its stream (read-your-writes); counts
come from the `rm_jobs` read model. Clients use their key in any of the foundation's header
styles; a worker reporting on its task may instead use its attempt's token (refused once the
attempt is over) or, when `WORKER_AUTH_TOKEN` is set, that shared token.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar

from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.exceptions import HTTPException, NotAuthorizedException
from litestar.params import FromPath
from msgspec import UNSET
from taskengine_contracts.events import (
    ExecutionLogged,
    JobSubmitted,
    LogLine,
)
from taskengine_core import attempts, workflows
from taskengine_core.dialects.worktasks import DIALECT
from taskengine_core.dialects.worktasks.reports import REPORTS, plan_report
from taskengine_core.dialects.worktasks.status import STATUSES, WAITING, status_named, status_of
from taskengine_core.dialects.worktasks.submission import (
    TYPES,
    InvalidWorkTask,
    check_resources,
    dialect_priority,
    submission,
)
from taskengine_core.dialects.worktasks.view import view
from taskengine_core.errors import DomainError, IllegalTransition
from taskengine_core.ids import execution_stream
from taskengine_core.jobs import Job, JobState
from taskengine_core.quotas import ResourceLimits
from taskengine_core.timestamps import iso
from taskengine_store import queries
from taskengine_store.store import Conflict

from taskengine_gateway.answers import AUTHENTICATED as AUTH
from taskengine_gateway.auth import Client, credentials
from taskengine_gateway.bodies import BodyProblem, Documented, body, described, given, refuse_nul
from taskengine_gateway.dialects import worktasks_answers as a
from taskengine_gateway.dialects.taskengine_api import current_settings
from taskengine_gateway.dialects.worktasks_answers import ANSWERS
from taskengine_gateway.errors import ErrorShape, handler
from taskengine_gateway.job_io import Planned, change, job_numbered
from taskengine_gateway.quotas import priority_reserved
from taskengine_gateway.state import GatewayState

MAX_LOG_LINES = 1000
SEVERITIES = ("DEBUG", "INFO", "WARN", "ERROR")


class WorkTaskError(HTTPException):
    """An error in this dialect's shape."""


def _invalid(request: Request, problem: BodyProblem) -> Exception:
    return InvalidWorkTask(
        f"unknown field {problem.unknown!r}" if problem.unknown else problem.message
    )


def _own(request: Request, error: Exception) -> Response | None:
    if isinstance(error, InvalidWorkTask):
        return Response({"error": str(error)}, status_code=400)
    return None


WORKTASKS = ErrorShape(
    body=lambda message: {"error": message}, invalid=_invalid, own=_own, challenge="Bearer"
)


# --- requests ---------------------------------------------------------------------------------
# Each field is documented with its JSON type; its value is checked (and a bad one worded) by
# `submission`, `report_of` and `log_lines` (see `bodies`).

SPEC = {"pipeline_id": "echo", "parameters": {"message": "hello"}}


class WorkTaskRequest(Documented, forbid_unknown_fields=True):
    """`POST /api/worktasks`: submits a work task (`type`, `project_id`, `task_spec`,
    `resource_requirements` and `data_access` required)."""

    EXAMPLE: ClassVar[dict[str, Any]] = {
        "type": "pipeline_execution",
        "project_id": "orbit",
        "task_spec": SPEC,
        "resource_requirements": {"cpu": "500m", "memory": "512Mi"},
        "data_access": {},
    }

    type: Annotated[
        Any, described("string", f"one of {', '.join(TYPES)}", "pipeline_execution")
    ] = UNSET
    priority: Annotated[Any, described("integer", "1 (lowest) to 10 (highest)", 5)] = UNSET
    project_id: Annotated[Any, described("string", "1 to 200 characters", "orbit")] = UNSET
    task_spec: Annotated[
        Any, described("object", "the workflow (`pipeline_id`) and its `parameters`", SPEC)
    ] = UNSET
    resource_requirements: Annotated[
        Any, described("object", "`cpu`, `memory` and `gpu` the task needs", {"cpu": "500m"})
    ] = UNSET
    data_access: Annotated[
        Any,
        described(
            "object",
            "`storage_credentials`: the Kubernetes Secret to mount",
            {"storage_credentials": "orbit-s3"},
        ),
    ] = UNSET
    max_retries: Annotated[Any, described("integer", "retries of a failed attempt", 3)] = UNSET


class WorkTaskReport(Documented, forbid_unknown_fields=True):
    """`POST /api/worktasks/<id>`: a worker's report on its task (`worktask_id`, `status`
    required)."""

    EXAMPLE: ClassVar[dict[str, Any]] = {
        "worktask_id": "42",
        "status": "completed",
        "output_location": "s3://orbit/out/42",
    }

    worktask_id: Annotated[
        Any, described(["string", "integer"], "the task's id, as in the path", "42")
    ] = UNSET
    status: Annotated[Any, described("string", f"one of {', '.join(REPORTS)}", "completed")] = UNSET
    output_location: Annotated[
        Any, described(["string", "null"], "where the output is", "s3://orbit/out/42")
    ] = UNSET
    metadata: Annotated[
        Any, described(["object", "null"], "anything the worker adds", {"rows": 1200})
    ] = UNSET
    error_message: Annotated[Any, described(["string", "null"], "why it failed", None)] = UNSET


class WorkTaskLines(Documented, forbid_unknown_fields=True):
    """`POST /api/worktasks/<id>/logs`: log lines of the task's steps."""

    EXAMPLE: ClassVar[dict[str, Any]] = {
        "lines": [{"step": 0, "severity": "INFO", "text": "started"}]
    }

    lines: Annotated[
        Any,
        described(
            "array",
            f"at most {MAX_LOG_LINES} of {{at, step, severity, text}}",
            [{"at": "2030-01-31T14:30:00Z", "step": 0, "severity": "INFO", "text": "started"}],
        ),
    ] = UNSET


# --- who calls ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reporter:
    """Who calls a task's endpoint: a client (on its own tasks), any worker (the shared
    token) or the worker of one attempt (`token`, checked against the task)."""

    by: str
    client: str | None = None
    token: str | None = None


async def reporter_of(request: Request, gateway: GatewayState) -> Reporter:
    _, key = credentials(request)
    if key and key.startswith(attempts.TOKEN_PREFIX):
        return Reporter("worker", token=key)
    shared = gateway.runtime.config.worker_auth_token
    if key and shared and hmac.compare_digest(key.encode(), shared.encode()):
        return Reporter("worker")
    client = await gateway.authenticator.authenticate(request)
    return Reporter(client.name, client=client.name)


async def load_worktask(gateway: GatewayState, worktask_id: str, client: str | None) -> Job:
    """The work task from its stream; another client's task (or a job of another dialect)
    does not exist for the caller. `client` None: any client's (a worker's view)."""
    missing = WorkTaskError(status_code=404, detail=f"work task {worktask_id[:40]!r} not found")
    job = await job_numbered(gateway, worktask_id)
    if job is None or job.dialect != DIALECT or client not in (None, job.client):
        raise missing
    return job


async def reporter_first(request: Request) -> None:
    """Who reports is checked before the report's body is read (a 401 before any 400);
    `request.state.reporter` keeps who it is."""
    request.state.reporter = await reporter_of(request, request.app.state.gateway)
    await refuse_nul(request)


async def reported_job(
    gateway: GatewayState, worktask_id: str, reporter: Reporter
) -> tuple[Job, int | None]:
    """The task a report is about and, for an attempt's token, that attempt (the token must
    be one this task's dispatcher gave out)."""
    refused = NotAuthorizedException("the worker token does not fit this work task")
    try:
        job = await load_worktask(gateway, worktask_id, reporter.client)
    except WorkTaskError:
        if reporter.token:  # a token for no task proves nothing: do not say what exists
            raise refused from None
        raise
    if reporter.token is None:
        return job, None
    key = gateway.runtime.config.webhook_key
    for attempt in range(job.attempt, 0, -1):  # earlier attempts' tokens are known, and stale
        if attempts.token_fits(reporter.token, key, job.job_id, attempt):
            return job, attempt
    raise refused


def refuse_over(job: Job, attempt: int) -> None:
    """An attempt's token works while that attempt runs."""
    if attempt != job.attempt or job.state != JobState.RUNNING:
        raise WorkTaskError(
            status_code=409,
            detail=f"attempt {attempt} of work task {job.job_id} is over"
            f" (now {status_of(job)}, attempt {job.attempt})",
        )


@dataclass(frozen=True)
class Report:
    status: str
    output_location: str | None
    metadata: dict[str, Any]
    error_message: str | None


def report_of(data: dict[str, Any], worktask_id: str) -> Report:
    given = data.get("worktask_id")
    if given is None:
        raise InvalidWorkTask("worktask_id is required")
    if isinstance(given, bool) or not isinstance(given, (str, int)) or str(given) != worktask_id:
        raise InvalidWorkTask(f"worktask_id {given!r} does not match the path's {worktask_id!r}")
    if data.get("status") not in REPORTS:
        raise InvalidWorkTask(f"status must be one of {', '.join(REPORTS)}")
    metadata = data.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise InvalidWorkTask("metadata must be an object")
    return Report(
        data["status"],
        _text(data, "output_location", 2048),
        metadata,
        _text(data, "error_message", 10_000),
    )


def _text(data: dict[str, Any], field: str, longest: int) -> str | None:
    value = data.get(field)
    if value is not None and (not isinstance(value, str) or len(value) > longest):
        raise InvalidWorkTask(f"{field} must be a string of at most {longest} characters")
    return value


def log_lines(data: dict[str, Any], now: datetime) -> list[LogLine]:
    lines = data.get("lines")
    if set(data) != {"lines"} or not isinstance(lines, list):
        raise InvalidWorkTask('the body must be {"lines": [{"step", "severity", "text"}, ...]}')
    if len(lines) > MAX_LOG_LINES:
        raise InvalidWorkTask(f"at most {MAX_LOG_LINES} lines per request")
    return [_line(line, f"lines[{i}]", now) for i, line in enumerate(lines)]


def _line(line: object, where: str, now: datetime) -> LogLine:
    if not isinstance(line, dict) or set(line) - {"at", "step", "severity", "text"}:
        raise InvalidWorkTask(f"{where} must be an object of at, step, severity and text")
    step, severity, text = line.get("step", 0), line.get("severity", "INFO"), line.get("text")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise InvalidWorkTask(f"{where}.step must be a step number (0 or more)")
    if severity not in SEVERITIES:
        raise InvalidWorkTask(f"{where}.severity must be one of {', '.join(SEVERITIES)}")
    if not isinstance(text, str):
        raise InvalidWorkTask(f"{where}.text must be a string")
    at = now
    if line.get("at") is not None:
        try:
            at = datetime.fromisoformat(str(line["at"]).replace("Z", "+00:00"))
        except ValueError:
            raise InvalidWorkTask(f"{where}.at must be an ISO 8601 timestamp") from None
        at = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    return LogLine(at, step, severity, text)


# --- the controller ---------------------------------------------------------------------------


class WorkTasksController(Controller):
    """Seed 000. Clients: their key (`Authorization: Bearer <key>` or the other header styles).
    A task's worker (reading it, reporting, logging) may instead use its attempt's token or the
    shared WORKER_AUTH_TOKEN."""

    exception_handlers = handler(WORKTASKS)

    @get(
        "/api/worktasks",
        operation_id="worktask_queue_length",
        responses=ANSWERS(200, a.QueueLength, {"queue_length": 3}, "waiting work tasks", *AUTH),
    )
    async def queue_length(
        self, gateway: NamedDependency[GatewayState], client: NamedDependency[Client]
    ) -> dict:
        waiting = [str(state) for state in WAITING]
        length = await gateway.reads.query(queries.waiting_jobs, client.name, DIALECT, waiting)
        return {"queue_length": length}

    @post(
        "/api/worktasks",
        operation_id="submit_worktask",
        status_code=201,
        responses=ANSWERS(201, a.WorkTask, a.WORKTASK, "the task is stored", *AUTH, 400, 403, 413),
    )
    async def submit_worktask(
        self,
        data: Annotated[WorkTaskRequest, body(WorkTaskRequest)],
        gateway: NamedDependency[GatewayState],
        client: NamedDependency[Client],
    ) -> dict:
        task = submission(given(data))
        config = gateway.runtime.config
        check_resources(task.attributes["resource_requirements"], ResourceLimits.of(config))
        if priority_reserved(task.priority, client.admin, config):
            raise WorkTaskError(
                status_code=403,
                detail=f"priority {task.attributes['priority']} is reserved: this client may use"
                f" at most {dialect_priority(config.top_priority)} (higher = more urgent)",
            )
        try:
            workflows.validate(task.workflow, task.parameters)
        except (DomainError, ValueError) as error:
            raise InvalidWorkTask(str(error)) from None
        now = datetime.now(UTC)
        built: list[JobSubmitted] = []

        def build(number: int) -> list:
            built[:] = [task.submitted(number, client.name, now)]
            return list(built)

        await gateway.submitter.submit(build)
        return view(Job.started(built[0]))

    @get(
        "/api/worktasks/{worktask_id:str}",
        operation_id="get_worktask",
        responses=ANSWERS(200, a.WorkTask, a.WORKTASK, "the work task", *AUTH, 404, 409),
    )
    async def get_worktask(
        self, worktask_id: FromPath[str], request: Request, gateway: NamedDependency[GatewayState]
    ) -> dict:
        """A client's own task, secret-looking values masked; or, for its worker, the task as
        submitted (its steps need the real parameters)."""
        reporter = await reporter_of(request, gateway)
        job, attempt = await reported_job(gateway, worktask_id, reporter)
        if reporter.client is not None:
            return view(job)
        if attempt is not None:
            refuse_over(job, attempt)
        return view(job, masked=False)

    @post(
        "/api/worktasks/{worktask_id:str}",
        operation_id="report_worktask",
        status_code=200,
        responses=ANSWERS(
            200,
            a.Reported,
            {"status": "completed"},
            "the report is stored",
            *AUTH,
            400,
            404,
            409,
            413,
        ),
        before_request=reporter_first,
    )
    async def report_worktask(
        self,
        worktask_id: FromPath[str],
        data: Annotated[WorkTaskReport, body(WorkTaskReport)],
        request: Request,
        gateway: NamedDependency[GatewayState],
    ) -> dict:
        reporter: Reporter = request.state.reporter
        report = report_of(given(data), worktask_id)
        settings = await current_settings(gateway)

        async def load() -> tuple[Job, int | None]:
            return await reported_job(gateway, worktask_id, reporter)

        async def plan(reported: tuple[Job, int | None]) -> Planned[dict]:
            job, attempt = reported
            try:
                events, answer = plan_report(
                    job,
                    report.status,
                    by=reporter.by,
                    now=datetime.now(UTC),
                    output_location=report.output_location,
                    metadata=report.metadata,
                    error_message=report.error_message,
                    attempt=attempt,
                    retry_delay=settings.retry_delay,
                    retry_max_delay=settings.retry_cap,
                    max_memory=gateway.runtime.config.max_memory,
                )
            except IllegalTransition as error:
                raise WorkTaskError(status_code=409, detail=str(error)) from None
            return Planned(events, {"status": answer})

        kept_changing = WorkTaskError(
            status_code=409, detail=f"work task {worktask_id} kept changing; retry"
        )
        return await change(gateway, load, plan, kept_changing)

    @post(
        "/api/worktasks/{worktask_id:str}/logs",
        operation_id="log_worktask",
        status_code=200,
        responses=ANSWERS(
            200,
            a.Logged,
            {"status": "logged", "lines": 1},
            "the lines are stored",
            *AUTH,
            400,
            404,
            409,
            413,
        ),
        before_request=reporter_first,
    )
    async def log_worktask(
        self,
        worktask_id: FromPath[str],
        data: Annotated[WorkTaskLines, body(WorkTaskLines)],
        request: Request,
        gateway: NamedDependency[GatewayState],
    ) -> dict:
        """Lines a remote worker printed, appended to its attempt's log (`GET /logs/<id>`)."""
        reporter: Reporter = request.state.reporter
        now = datetime.now(UTC)
        lines = log_lines(given(data), now)
        job, attempt = await reported_job(gateway, worktask_id, reporter)
        if attempt is not None:
            refuse_over(job, attempt)
        if job.attempt == 0:
            raise WorkTaskError(status_code=409, detail=f"work task {job.job_id} has not started")
        if not lines:
            return {"status": "logged", "lines": 0}
        stream = execution_stream(job.job_id, job.attempt)

        def logged(events: list, version: int) -> ExecutionLogged:
            return ExecutionLogged(
                id=stream,
                version=version,
                at=now,
                job_id=job.job_id,
                attempt=job.attempt,
                lines=lines,
            )

        try:
            await gateway.runtime.call(gateway.runtime.store.append_next, stream, logged)
        except Conflict:
            raise WorkTaskError(status_code=409, detail="the log kept changing; retry") from None
        return {"status": "logged", "lines": len(lines)}

    @get(
        "/api/metrics",
        operation_id="worktask_metrics",
        responses=ANSWERS(200, a.Metrics, a.METRICS, "the client's work tasks", *AUTH),
    )
    async def metrics(
        self, gateway: NamedDependency[GatewayState], client: NamedDependency[Client]
    ) -> dict:
        """The caller's work tasks: the queue, and counts by status and by type."""
        rows = await gateway.reads.query(queries.job_tallies, client.name, DIALECT)
        # One statement, one snapshot: the queue and the counts agree with each other.
        now = datetime.now(UTC)
        by_status = dict.fromkeys(STATUSES, 0)
        by_type = dict.fromkeys(TYPES, 0)
        waiting = {str(state) for state in WAITING}
        by_priority: dict[str | None, int] = {}
        oldest = None
        for row in rows:
            by_status[status_named(JobState(row["state"]), row["executing"])] += row["n"]
            by_type[row["type"]] = by_type.get(row["type"], 0) + row["n"]
            if row["state"] in waiting:
                by_priority[row["priority"]] = by_priority.get(row["priority"], 0) + row["n"]
                oldest = row["oldest"] if oldest is None else min(oldest, row["oldest"])
        return {
            "queue": {
                "length": sum(by_priority.values()),
                "by_priority": dict(
                    sorted(by_priority.items(), key=lambda item: -float(item[0] or 0))
                ),
                "oldest_queued_at": iso(oldest),
                "oldest_age_seconds": None
                if oldest is None
                else round((now - oldest).total_seconds(), 3),
            },
            "tasks_by_status": by_status,
            "tasks_by_type": by_type,
            "timestamp": iso(now),
        }
