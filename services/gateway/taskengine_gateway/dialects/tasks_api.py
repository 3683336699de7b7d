"""The scheduled-tasks dialect (seed 001): `/tasks`, its actions and runs, and `/events`.

Errors take this dialect's shape: `{"detail": "..."}`, and for a request field that does not
validate, 422 with `{"detail": [{"loc": ["body", FIELD], "msg": ..., "type": ...}]}`. A task
is read from its own stream (read-your-writes); lists come from the `rm_tasks` and
`rm_task_runs` read models.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, ClassVar
from uuid import UUID, uuid4

import msgspec
from litestar import Controller, Request, Response, get, post, put
from litestar.di import NamedDependency, Provide
from litestar.exceptions import HTTPException
from litestar.params import FromPath
from msgspec import UNSET
from taskengine_contracts.events import TaskDefinition, TaskEvent, TopicPublished
from taskengine_core import workflows
from taskengine_core.dialects.scheduled.fields import (
    BACKOFF_STRATEGIES,
    InvalidTask,
    check_backoff,
    check_dedupe,
    check_int,
    check_key,
    check_uuid,
)
from taskengine_core.dialects.scheduled.lifecycle import Task, created
from taskengine_core.dialects.scheduled.runs import OPEN_STATES, cancel_runs
from taskengine_core.dialects.scheduled.schedule import (
    SCHEDULE_KINDS,
    check_fires,
    off_loop,
    parse_schedule,
)
from taskengine_core.dialects.scheduled.submission import pipeline
from taskengine_core.dialects.scheduled.view import as_body, row_view, run_view, task_view
from taskengine_core.errors import DomainError, IllegalTransition
from taskengine_core.ids import job_stream
from taskengine_core.jobs import Job
from taskengine_core.timestamps import iso
from taskengine_store import queries

from taskengine_gateway.answers import AUTHENTICATED as AUTH
from taskengine_gateway.answers import query
from taskengine_gateway.auth import Client
from taskengine_gateway.bodies import BodyProblem, Documented, body, described, given
from taskengine_gateway.dialects import tasks_answers as a
from taskengine_gateway.dialects.tasks_answers import ANSWERS, INVALID
from taskengine_gateway.errors import ErrorShape, handler
from taskengine_gateway.job_io import Planned, change, commit
from taskengine_gateway.quotas import QuotaExceeded, priority_reserved, refuse_over_task_quota
from taskengine_gateway.state import GatewayState

REQUIRED = ("title", "description", "schedule_kind", "payload", "created_by")
STATUSES = ("active", "paused", "canceled")
DEFAULT_LIMIT, MAX_LIMIT = 50, 500
MAX_OFFSET = 2**31 - 1
_UUID = re.compile(r"[0-9a-fA-F-]{32,36}")


class TasksError(HTTPException):
    """An error in this dialect's shape; `detail` is a message or FastAPI-style field list."""

    def __init__(self, status_code: int, detail: object):
        super().__init__(status_code=status_code, detail="")
        self.body = {"detail": detail}


def invalid(field: str, message: str, kind: str = "value_error", where: str = "body") -> TasksError:
    return TasksError(422, [{"loc": [where, field], "msg": message, "type": kind}])


def _invalid(request: Request, problem: BodyProblem) -> Exception:
    if problem.unknown:
        return invalid(problem.unknown, f"unknown field {problem.unknown!r}", "extra_forbidden")
    return TasksError(422, [{"loc": ["body"], "msg": problem.message, "type": "json_invalid"}])


def _own(request: Request, error: Exception) -> Response | None:
    if isinstance(error, TasksError):
        return Response(error.body, status_code=error.status_code)
    if isinstance(error, InvalidTask):
        return Response(invalid(error.field, str(error)).body, status_code=422)
    return None


TASKS = ErrorShape(
    body=lambda message: {"detail": message},
    invalid=_invalid,
    own=_own,
    too_large="Request body too large",
    not_allowed="Method {method} not allowed on {path}",
    challenge="Bearer",
    internal={"error": "internal error"},
)


# --- requests -------------------------------------------------------------------------------
# Each field is documented with its JSON type; its value is checked (and a bad one worded) by
# `definition_of` and the handlers (see `bodies`).

OPTIONAL_KEY = ["string", "null"]
PAYLOAD = {"workflow": "echo", "parameters": {"message": "nightly report"}}


class TaskRequest(Documented, forbid_unknown_fields=True):
    """`POST /tasks` creates a scheduled task (title, description, schedule_kind, payload and
    created_by required); `PUT /tasks/<id>` changes any of its fields (null: the default)."""

    EXAMPLE: ClassVar[dict[str, Any]] = {
        "title": "nightly report",
        "description": "mails the day's figures",
        "schedule_kind": "cron",
        "schedule_expr": "0 3 * * *",
        "timezone": "Europe/Chisinau",
        "payload": PAYLOAD,
        "created_by": "3f2b8a62-1c4e-4f0a-9d3e-8c1b2a4d5e6f",
    }

    title: Annotated[Any, described("string", "1 to 200 characters", "nightly report")] = UNSET
    description: Annotated[
        Any, described("string", "at most 10000 characters", "mails the day's figures")
    ] = UNSET
    schedule_kind: Annotated[
        Any, described("string", f"one of {', '.join(SCHEDULE_KINDS)}", "cron")
    ] = UNSET
    schedule_expr: Annotated[
        Any,
        described(
            OPTIONAL_KEY,
            "a cron line, an RRULE, an ISO time (once) or a topic (event)",
            "0 3 * * *",
        ),
    ] = UNSET
    timezone: Annotated[
        Any, described(OPTIONAL_KEY, "an IANA time zone; UTC if not given", "Europe/Chisinau")
    ] = UNSET
    payload: Annotated[
        Any, described("object", "a workflow and its parameters, or pipeline steps", PAYLOAD)
    ] = UNSET
    created_by: Annotated[
        Any, described("string", "the creator's UUID", "3f2b8a62-1c4e-4f0a-9d3e-8c1b2a4d5e6f")
    ] = UNSET
    priority: Annotated[Any, described("integer", "1 (highest) to 9; 5 if not given", 5)] = UNSET
    max_retries: Annotated[
        Any, described("integer", "retries of a failed run; 3 if not given", 3)
    ] = UNSET
    backoff_strategy: Annotated[
        Any, described("string", f"one of {', '.join(BACKOFF_STRATEGIES)}", BACKOFF_STRATEGIES[0])
    ] = UNSET
    dedupe_key: Annotated[
        Any, described(OPTIONAL_KEY, "runs with the same key within the window run once", "daily")
    ] = UNSET
    dedupe_window_seconds: Annotated[
        Any, described(["integer", "null"], "the dedupe window in seconds", 3600)
    ] = UNSET
    concurrency_key: Annotated[
        Any, described(OPTIONAL_KEY, "runs with the same key never overlap", "reports")
    ] = UNSET


FIELDS = TaskRequest.__struct_fields__
"""A task definition's fields, as a request names them."""


class Snooze(Documented):
    """`POST /tasks/<id>/snooze`: puts the task's next fires off for a while."""

    EXAMPLE: ClassVar[dict[str, Any]] = {"delay_seconds": 3600, "reason": "maintenance"}

    delay_seconds: Annotated[Any, described("integer", "how long, in seconds", 3600)] = UNSET
    reason: Annotated[
        Any, described(["string", "null"], "why, at most 1000 characters", "maintenance")
    ] = None


class TopicEvent(Documented, forbid_unknown_fields=True):
    """`POST /events`: publishes an event on a topic; the event tasks of that topic run."""

    EXAMPLE: ClassVar[dict[str, Any]] = {"topic": "orders.created", "payload": {"order": 17}}

    topic: Annotated[Any, described("string", "the topic's key", "orders.created")] = None
    payload: Annotated[
        Any, described(["object", "null"], "what the event carries", {"order": 17})
    ] = None
    source_agent_id: Annotated[Any, described(["string", "null"], "the publisher's UUID", None)] = (
        None
    )


class RunRequested(msgspec.Struct):
    """The answer to `POST /tasks/<id>/run_now`."""

    task_id: Annotated[str, msgspec.Meta(description="the task's UUID")]
    run_id: Annotated[str, msgspec.Meta(description="the requested run's UUID")]
    status: Annotated[str, msgspec.Meta(description='"requested"', examples=["requested"])]


class EventAccepted(msgspec.Struct):
    """The answer to `POST /events`."""

    id: Annotated[str, msgspec.Meta(description="the event's UUID")]
    topic: str
    status: Annotated[str, msgspec.Meta(description='"accepted"', examples=["accepted"])]
    received_at: Annotated[str, msgspec.Meta(description="when, ISO 8601 in UTC")]


RUN_REQUESTED = {"task_id": a.TASK_ID, "run_id": a.RUN["id"], "status": "requested"}
EVENT_ACCEPTED = {
    "id": "5b4a3c2d-1e0f-4a9b-8c7d-6e5f4a3b2c1d",
    "topic": "orders.created",
    "status": "accepted",
    "received_at": "2030-01-31T14:30:00Z",
}


def _string(data: dict, field: str, longest: int, empty_ok: bool = False) -> str:
    value = data[field]
    if not isinstance(value, str) or (not empty_ok and not value.strip()):
        raise invalid(field, f"{field} must be a{'' if empty_ok else ' non-empty'} string")
    if len(value) > longest:
        raise invalid(field, f"{field} must be at most {longest} characters")
    return value  # type: ignore[return-value]


def _payload(value: object) -> dict[str, Any]:
    """`{"workflow": NAME, "parameters": {...}}` or `{"steps": [...]}`, runnable as given."""
    workflow, parameters = pipeline(value)
    try:
        workflows.validate(workflow, parameters)
    except (DomainError, ValueError) as error:
        raise invalid("payload", f"payload: {error}") from None
    return value


def definition_of(
    data: dict[str, Any], now: datetime, min_interval: timedelta = timedelta(seconds=1)
) -> TaskDefinition:
    """A whole task definition from a request body (defaults filled), or a 422 naming the
    first field that does not validate. Its schedule must fire `min_interval` apart at least,
    and searching for its fires is bounded: call it off the event loop."""
    for field in REQUIRED:
        if data.get(field) is None:
            raise invalid(field, f"{field} is required", "missing")
    kind = data["schedule_kind"]
    if kind not in SCHEDULE_KINDS:
        raise invalid("schedule_kind", f"schedule_kind must be one of {', '.join(SCHEDULE_KINDS)}")
    expr = data.get("schedule_expr")
    if expr is not None and not isinstance(expr, str):
        raise invalid("schedule_expr", "schedule_expr must be a string")
    timezone = data.get("timezone") or "UTC"
    if not isinstance(timezone, str):
        raise invalid("timezone", "timezone must be an IANA name such as Europe/Chisinau")
    if kind != "event" or expr is not None:
        check_fires(parse_schedule(kind, expr, timezone, now), now, min_interval)
    dedupe_key, window = check_dedupe(data.get("dedupe_key"), data.get("dedupe_window_seconds"))
    concurrency = data.get("concurrency_key")
    return TaskDefinition(
        title=_string(data, "title", 200),
        description=_string(data, "description", 10_000, empty_ok=True),
        schedule_kind=kind,
        schedule_expr=expr.strip() if isinstance(expr, str) else None,
        timezone=timezone,
        payload=_payload(data["payload"]),
        created_by=check_uuid("created_by", data["created_by"]),
        priority=check_int("priority", data.get("priority", 5)),
        max_retries=check_int("max_retries", data.get("max_retries", 3)),
        backoff_strategy=check_backoff(data.get("backoff_strategy", BACKOFF_STRATEGIES[0])),  # type: ignore[arg-type]
        dedupe_key=dedupe_key,
        dedupe_window_seconds=window,
        concurrency_key=None if concurrency is None else check_key(concurrency, "concurrency_key"),
    )


LIMIT = query(f"how many, 1 to {MAX_LIMIT} ({DEFAULT_LIMIT} if not given)", "50")
OFFSET = query(f"how many to skip, 0 to {MAX_OFFSET} (0 if not given)", "0")


def _page(given_limit: str | None, given_offset: str | None) -> tuple[int, int]:
    try:
        limit = int(DEFAULT_LIMIT if given_limit is None else given_limit)
    except ValueError:
        raise invalid("limit", "limit must be an integer", where="query") from None
    try:
        offset = int(0 if given_offset is None else given_offset)
    except ValueError:
        raise invalid("offset", "offset must be an integer", where="query") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise invalid("limit", f"limit must be from 1 to {MAX_LIMIT}", where="query")
    if offset < 0:
        raise invalid("offset", "offset must not be negative", where="query")
    if offset > MAX_OFFSET:  # PostgreSQL's OFFSET is a bigint: refuse what it would
        raise invalid("offset", f"offset must be at most {MAX_OFFSET}", where="query")
    return limit, offset


def refuse_reserved_priority(
    definition: TaskDefinition, client: Client, gateway: GatewayState
) -> None:
    """403 for a priority more urgent than TASKENGINE_TOP_PRIORITY (admins may use any)."""
    if priority_reserved(definition.priority, client.admin, gateway.runtime.config):
        top = gateway.runtime.config.top_priority
        raise TasksError(
            403,
            f"priority {definition.priority} is reserved: this client may use {top} to 9"
            " (1 is the highest)",
        )


async def load_task(
    gateway: NamedDependency[GatewayState], task_id: FromPath[str], client: NamedDependency[Client]
) -> Task:
    """The caller's task from its stream; another client's task does not exist for it."""
    missing = TasksError(404, "Task not found")
    if not _UUID.fullmatch(task_id):
        raise missing
    try:
        stream = UUID(task_id)
    except ValueError:
        raise missing from None
    store = gateway.runtime.store
    row = await gateway.runtime.call(queries.task_row, store, stream, client.name)
    # A task's stream grows with every fire: start from its read-model row and apply only the
    # events after it (read-your-writes at a bounded cost). A `once` task's stream is short,
    # and its fold knows whether the schedule fired.
    if row and row["schedule_kind"] != "once":
        task = task_of_row(row)
        events = await gateway.runtime.call(store.stream, stream, task.version)
    else:
        task, events = None, await gateway.runtime.call(store.stream, stream)
    try:
        for event in events:
            if not isinstance(event, TaskEvent):
                raise IllegalTransition(f"not a task's event: {event}")
            if task is None:
                task = Task.fold([event])
            else:
                task.apply(event)
    except IllegalTransition:  # the id of some other kind of stream
        raise missing from None
    if task is None or task.client != client.name:
        raise missing
    return task


# --- the controller ---------------------------------------------------------------------------


class TasksController(Controller):
    """Seed 001. Every route needs a client's credentials (`Authorization: Bearer <key>`)."""

    exception_handlers = handler(TASKS)

    @post(
        "/tasks",
        operation_id="create_task",
        status_code=201,
        responses={
            **ANSWERS(201, a.ScheduledTask, a.TASK, "the task is stored", *AUTH, 403, 413),
            **INVALID,
        },
    )
    async def create_task(
        self,
        data: Annotated[TaskRequest, body(TaskRequest)],
        gateway: NamedDependency[GatewayState],
        client: NamedDependency[Client],
    ) -> dict:
        now = datetime.now(UTC)
        async with gateway.tasks.searching(client.name):
            definition = await off_loop(definition_of, given(data), now, _min_interval(gateway))
        refuse_reserved_priority(definition, client, gateway)
        most = gateway.runtime.config.max_active_tasks_per_client
        async with gateway.tasks.creating(client.name) as pending:
            try:
                await refuse_over_task_quota(gateway.runtime, client.name, pending, most)
            except QuotaExceeded as error:
                raise TasksError(403, str(error)) from None
            event = created(uuid4(), client.name, definition, now)
            await commit(gateway, [event])
            pending.add(event.id)
        task = Task.fold([event])
        assert task is not None
        return task_view(task)

    @get(
        "/tasks",
        operation_id="list_tasks",
        responses={
            **ANSWERS(200, list[a.ScheduledTask], [a.TASK], "the client's tasks", *AUTH),
            **INVALID,
        },
    )
    async def list_tasks(
        self,
        gateway: NamedDependency[GatewayState],
        client: NamedDependency[Client],
        limit: Annotated[str | None, LIMIT] = None,
        offset: Annotated[str | None, OFFSET] = None,
        status: Annotated[str | None, query(", ".join(STATUSES), "active")] = None,
        schedule_kind: Annotated[str | None, query(", ".join(SCHEDULE_KINDS), "cron")] = None,
        created_by: Annotated[str | None, query("the creator's UUID", a.TASK["created_by"])] = None,
    ) -> list:
        rows, skipped = _page(limit, offset)
        if status is not None and status not in STATUSES:
            message = f"status must be one of {', '.join(STATUSES)}"
            raise invalid("status", message, where="query")
        kind = schedule_kind
        if kind is not None and kind not in SCHEDULE_KINDS:
            message = f"schedule_kind must be one of {', '.join(SCHEDULE_KINDS)}"
            raise invalid("schedule_kind", message, where="query")
        creator = None
        if (given_creator := created_by) is not None:
            try:
                creator = check_uuid("created_by", given_creator)
            except InvalidTask as error:
                raise invalid("created_by", str(error), "uuid_parsing", "query") from None
        found = await gateway.reads.query(
            queries.task_list,
            client.name,
            rows,
            skipped,
            status,
            kind,
            creator,
        )
        return [row_view(row) for row in found]

    @get(
        "/tasks/{task_id:str}",
        operation_id="get_task",
        responses=ANSWERS(200, a.ScheduledTask, a.TASK, "the task", *AUTH, 404),
    )
    async def get_task(
        self,
        task_id: FromPath[str],
        gateway: NamedDependency[GatewayState],
        client: NamedDependency[Client],
    ) -> dict:
        return task_view(await load_task(gateway, task_id, client))

    # The task is looked up before the body's fields are checked: another client's is a 404.
    @put(
        "/tasks/{task_id:str}",
        operation_id="update_task",
        responses={
            **ANSWERS(200, a.ScheduledTask, a.TASK, "the task changed", *AUTH, 403, 404, 409, 413),
            **INVALID,
        },
        dependencies={"task": Provide(load_task)},
    )
    async def update_task(
        self,
        task_id: FromPath[str],
        task: NamedDependency[Task],
        data: Annotated[TaskRequest, body(TaskRequest)],
        gateway: NamedDependency[GatewayState],
        client: NamedDependency[Client],
    ) -> dict:
        changes = given(data)

        def plan(task: Task, now: datetime) -> TaskEvent:
            current = as_body(task.definition)
            if changes.get("schedule_kind") not in (None, current["schedule_kind"]):
                current["schedule_expr"] = None  # a new kind needs its own expression
            merged = {**current, **changes}
            sent = {k: v for k, v in merged.items() if v is not None}
            definition = definition_of(sent, now, _min_interval(gateway))
            after = as_body(definition)
            changed = [field for field in FIELDS if after[field] != as_body(task.definition)[field]]
            if "priority" in changed:
                refuse_reserved_priority(definition, client, gateway)
            return task.update(definition, changed, now)

        return task_view(await change_task(gateway, task_id, client, plan))

    @post(
        "/tasks/{task_id:str}/run_now",
        operation_id="run_task_now",
        status_code=202,
        responses=ANSWERS(
            202, RunRequested, RUN_REQUESTED, "the run is requested", *AUTH, 404, 409
        ),
    )
    async def run_now(
        self,
        task_id: FromPath[str],
        gateway: NamedDependency[GatewayState],
        client: NamedDependency[Client],
    ) -> RunRequested:
        requested: list = []

        def plan(task: Task, now: datetime) -> TaskEvent:
            event = task.run_now(client.name, now)
            requested.append(event)
            return event

        task = await change_task(gateway, task_id, client, plan)
        return RunRequested(str(task.id), str(requested[-1].run_id), "requested")

    @post(
        "/tasks/{task_id:str}/snooze",
        operation_id="snooze_task",
        status_code=200,
        responses={
            **ANSWERS(200, a.ScheduledTask, a.TASK, "the task snoozed", *AUTH, 404, 409, 413),
            **INVALID,
        },
    )
    async def snooze(
        self,
        task_id: FromPath[str],
        data: Annotated[Snooze, body(Snooze)],
        gateway: NamedDependency[GatewayState],
        client: NamedDependency[Client],
    ) -> dict:
        if data.delay_seconds is msgspec.UNSET:
            raise invalid("delay_seconds", "delay_seconds is required", "missing")
        delay = check_int("delay_seconds", data.delay_seconds)
        reason = data.reason
        if reason is not None and (not isinstance(reason, str) or len(reason) > 1000):
            raise invalid("reason", "reason must be a string of at most 1000 characters")
        task = await change_task(
            gateway, task_id, client, lambda task, now: task.snooze(delay, reason, client.name, now)
        )
        return task_view(task)

    @post(
        "/tasks/{task_id:str}/pause",
        operation_id="pause_task",
        status_code=200,
        responses=ANSWERS(200, a.ScheduledTask, a.TASK, "the task, paused", *AUTH, 404, 409),
    )
    async def pause(
        self,
        task_id: FromPath[str],
        gateway: NamedDependency[GatewayState],
        client: NamedDependency[Client],
    ) -> dict:
        return task_view(
            await change_task(gateway, task_id, client, lambda t, now: t.pause(client.name, now))
        )

    @post(
        "/tasks/{task_id:str}/resume",
        operation_id="resume_task",
        status_code=200,
        responses=ANSWERS(200, a.ScheduledTask, a.TASK, "the task, resumed", *AUTH, 404, 409),
    )
    async def resume(
        self,
        task_id: FromPath[str],
        gateway: NamedDependency[GatewayState],
        client: NamedDependency[Client],
    ) -> dict:
        return task_view(
            await change_task(gateway, task_id, client, lambda t, now: t.resume(client.name, now))
        )

    @post(
        "/tasks/{task_id:str}/cancel",
        operation_id="cancel_task",
        status_code=200,
        responses=ANSWERS(200, a.ScheduledTask, a.TASK, "the task, canceled", *AUTH, 404, 409),
    )
    async def cancel(
        self,
        task_id: FromPath[str],
        gateway: NamedDependency[GatewayState],
        client: NamedDependency[Client],
    ) -> dict:
        return task_view(await cancel_task(gateway, task_id, client))

    @get(
        "/tasks/{task_id:str}/runs",
        operation_id="list_task_runs",
        responses={
            **ANSWERS(200, list[a.TaskRun], [a.RUN], "the task's runs", *AUTH, 404),
            **INVALID,
        },
    )
    async def runs(
        self,
        task_id: FromPath[str],
        gateway: NamedDependency[GatewayState],
        client: NamedDependency[Client],
        limit: Annotated[str | None, LIMIT] = None,
        offset: Annotated[str | None, OFFSET] = None,
    ) -> list:
        task = await load_task(gateway, task_id, client)
        rows, skipped = _page(limit, offset)
        found = await gateway.reads.query(queries.task_runs, task.id, rows, skipped)
        return [run_view(row) for row in found]

    @post(
        "/events",
        operation_id="publish_event",
        status_code=202,
        responses={
            **ANSWERS(202, EventAccepted, EVENT_ACCEPTED, "the event is stored", *AUTH, 413),
            **INVALID,
        },
    )
    async def publish(
        self,
        data: Annotated[TopicEvent, body(TopicEvent)],
        gateway: NamedDependency[GatewayState],
        client: NamedDependency[Client],
    ) -> EventAccepted:
        if data.topic is None:
            raise invalid("topic", "topic is required", "missing")
        topic = check_key(data.topic, "topic")
        payload = data.payload or {}
        if not isinstance(payload, dict):
            raise invalid("payload", "payload must be an object")
        source = data.source_agent_id
        if source is not None:
            source = str(check_uuid("source_agent_id", source))
        event = TopicPublished(
            id=uuid4(),
            version=1,
            at=datetime.now(UTC),
            client=client.name,
            topic=topic,
            payload=payload,
            source_agent_id=source,
        )
        await commit(gateway, [event])
        return EventAccepted(str(event.id), topic, "accepted", iso(event.at) or "")


def _min_interval(gateway: GatewayState) -> timedelta:
    return timedelta(seconds=gateway.runtime.config.min_fire_interval)


def task_of_row(row: dict[str, Any]) -> Task:
    """The task an `rm_tasks` row holds, as of the row's version."""
    definition = msgspec.convert(
        {field: row[field] for field in FIELDS}, TaskDefinition, strict=False
    )
    return Task(
        row["task_uuid"],
        row["client"],
        definition,
        row["status"],
        row["version"],
        row["created_at"],
        row["updated_at"],
        row["next_fire_at"],
        row["last_fire_at"],
        row["snoozed_until"],
        row["snooze_reason"],
        row["runs"],
    )


async def cancel_task(gateway: GatewayState, task_id: str, client: Client) -> Task:
    """Cancels the task and, in the same commit, each of its runs that has not ended
    (`cancel_runs`). A run fired meanwhile moves the task, so the commit conflicts and the
    runs are read again: none escapes."""
    store = gateway.runtime.store

    async def load() -> tuple[Task, list[Job]]:
        task = await load_task(gateway, task_id, client)
        # Read after the task's row: the projected runs reach at least the row's version, and
        # the fold knows the runs fired after it.
        projected = await gateway.runtime.call(queries.open_task_runs, store, task.id, OPEN_STATES)
        streams = {job_stream(job_id) for job_id in (*projected, *task.fired_jobs)}
        runs = await gateway.runtime.call(store.jobs, list(streams))
        return task, list(runs.values())

    async def planned(loaded: tuple[Task, list[Job]]) -> Planned[Task]:
        task, runs = loaded
        now = datetime.now(UTC)
        try:
            canceled = task.cancel(client.name, now)
        except IllegalTransition as error:
            raise TasksError(409, str(error)) from None
        stopped = cancel_runs(runs, client.name, now)
        task.apply(canceled)  # the answer, once the events are stored
        return Planned([*stopped, canceled], task)

    return await change(gateway, load, planned, TasksError(409, "the task kept changing; retry"))


async def change_task(gateway: GatewayState, task_id: str, client: Client, plan) -> Task:  # type: ignore[no-untyped-def]
    """Appends `plan(task, now)` at the task's next version; re-reads and plans again if the
    task moved meanwhile (e.g. the scheduler fired it)."""

    async def load() -> Task:
        return await load_task(gateway, task_id, client)

    async def planned(task: Task) -> Planned[Task]:
        try:
            # In a thread: an update or a resume searches for the schedule's next fire.
            async with gateway.tasks.searching(client.name):
                event = await off_loop(plan, task, datetime.now(UTC))
        except IllegalTransition as error:
            raise TasksError(409, str(error)) from None
        task.apply(event)  # the answer, once the event is stored
        return Planned([event], task)

    return await change(gateway, load, planned, TasksError(409, "the task kept changing; retry"))
