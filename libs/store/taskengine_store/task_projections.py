"""Read models of scheduled tasks: the task list (`rm_tasks`) and each task's runs
(`rm_task_runs`), which follow the jobs they started.

Like the job list, each is a few set-based statements per batch segment, idempotent and the
same under any batching: a task row carries its stream version, a run row its job's version,
and an update applies only what is newer.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from taskengine_contracts.events import (
    TERMINAL_JOB_EVENTS,
    JobAdmitted,
    JobEvent,
    JobFailed,
    JobRetryScheduled,
    JobStarted,
    JobTimedOut,
    TaskCancelled,
    TaskCreated,
    TaskDefinition,
    TaskEvent,
    TaskFired,
    TaskPaused,
    TaskResumed,
    TaskRunSkipped,
    TaskSnoozed,
    TaskUpdated,
)

from taskengine_store.recordsets import Columns, names, records, recordset
from taskengine_store.store import Position, Statement

STATUS = {
    TaskCreated: "active",
    TaskPaused: "paused",
    TaskResumed: "active",
    TaskCancelled: "canceled",  # the seed's spelling
}

DEFINITION = (
    ("title", "text"),
    ("description", "text"),
    ("schedule_kind", "text"),
    ("schedule_expr", "text"),
    ("timezone", "text"),
    ("payload", "jsonb"),
    ("created_by", "uuid"),
    ("priority", "int"),
    ("max_retries", "int"),
    ("backoff_strategy", "text"),
    ("dedupe_key", "text"),
    ("dedupe_window_seconds", "int"),
    ("concurrency_key", "text"),
)
"""The definition's columns in `rm_tasks`, in `TaskDefinition`'s field order."""


TASK_COLUMNS: Columns = (
    ("task_uuid", "uuid"),
    ("client", "text"),
    *DEFINITION,
    ("status", "text"),
    ("next_fire_at", "timestamptz"),
    ("last_fire_at", "timestamptz"),
    ("runs", "int"),
    ("skipped", "int"),
    ("snoozed_until", "timestamptz"),
    ("snooze_reason", "text"),
    ("created_at", "timestamptz"),
    ("updated_at", "timestamptz"),
    ("version", "bigint"),
)
"""A new task's row in the task list."""

TASK_MOVE_COLUMNS: Columns = (
    ("task_uuid", "uuid"),
    ("version", "bigint"),
    ("updated_at", "timestamptz"),
    ("next_fire_at", "timestamptz"),
    ("status", "text"),
    ("redefined", "bool"),
    *DEFINITION,
    ("runs", "int"),
    ("skipped", "int"),
    ("last_fire_at", "timestamptz"),
    ("snoozed", "bool"),
    ("snoozed_until", "timestamptz"),
    ("snooze_reason", "text"),
)
"""What a segment changes of a task listed before it."""

RUN_COLUMNS: Columns = (
    ("run_id", "uuid"),
    ("task_uuid", "uuid"),
    ("client", "text"),
    ("trigger", "text"),
    ("fire_at", "timestamptz"),
    ("job_id", "bigint"),
    ("status", "text"),
    ("reason", "text"),
    ("duplicate_of", "bigint"),
    ("event_id", "uuid"),
    ("created_at", "timestamptz"),
)
"""A run fired or skipped (its job's state joins it in the statement)."""

PROGRESS_COLUMNS: Columns = (
    ("job_id", "bigint"),
    ("status", "text"),
    ("version", "bigint"),
    ("updated_at", "timestamptz"),
    ("attempts", "int"),
    ("started_at", "timestamptz"),
    ("finished_at", "timestamptz"),
    ("reason", "text"),
)
"""`RunProgress`'s fields: what a segment's events of a job do to its run."""


def definition_values(definition: TaskDefinition | None) -> list[Any]:
    if definition is None:
        return [None] * len(DEFINITION)
    return [getattr(definition, name) for name, _ in DEFINITION]


UNSNOOZED: tuple[datetime | None, str | None] = (None, None)


@dataclass
class TaskChange:
    """What a segment's events do to one task's row."""

    task_uuid: UUID
    client: str
    version: int
    updated_at: datetime
    next_fire_at: datetime | None
    created: TaskCreated | None = None
    status: str | None = None
    definition: TaskDefinition | None = None
    runs: int = 0
    skipped: int = 0
    last_fire_at: datetime | None = None
    snooze: tuple[datetime | None, str | None] | None = None
    """(snoozed_until, reason) set or cleared (None, None) by the segment; None: untouched."""

    def apply(self, event: TaskEvent) -> None:
        self.version = event.version
        self.updated_at = event.at
        self.next_fire_at = event.next_fire_at
        self.status = STATUS.get(type(event), self.status)
        match event:
            case TaskCreated():
                self.created, self.definition = event, event.definition
            case TaskUpdated():
                self.definition, self.snooze = event.definition, UNSNOOZED
            case TaskResumed():
                self.snooze = UNSNOOZED
            case TaskSnoozed():
                self.snooze = (event.next_fire_at, event.reason)
            case TaskFired():
                self.runs += 1
                self.last_fire_at = event.fire_at
            case TaskRunSkipped():
                self.skipped += 1
        # The snoozed run came due (fired or skipped); a run_now or an event leaves it.
        if isinstance(event, (TaskFired, TaskRunSkipped)) and event.trigger == "schedule":
            self.snooze = UNSNOOZED

    def inserted(self) -> dict[str, Any]:
        assert self.created is not None
        snoozed_until, reason = self.snooze or UNSNOOZED
        values = [
            self.task_uuid,
            self.client,
            *definition_values(self.definition),
            self.status,
            self.next_fire_at,
            self.last_fire_at,
            self.runs,
            self.skipped,
            snoozed_until,
            reason,
            self.created.at,
            self.updated_at,
            self.version,
        ]
        return dict(zip((name for name, _ in TASK_COLUMNS), values, strict=True))

    def moved(self) -> dict[str, Any]:
        snoozed_until, reason = self.snooze or UNSNOOZED
        values = [
            self.task_uuid,
            self.version,
            self.updated_at,
            self.next_fire_at,
            self.status,
            self.definition is not None,
            *definition_values(self.definition),
            self.runs,
            self.skipped,
            self.last_fire_at,
            self.snooze is not None,
            snoozed_until,
            reason,
        ]
        return dict(zip((name for name, _ in TASK_MOVE_COLUMNS), values, strict=True))


@dataclass(slots=True)
class RunProgress:
    """What a segment's events of one job do to the run it is (if it is one)."""

    job_id: int
    status: str = ""
    version: int = 0
    updated_at: datetime | None = None
    attempts: int | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    reason: str | None = None

    def apply(self, event: JobEvent, state: str) -> None:
        """Folds the job's next event in, which led it to `state` (a replay's hot loop: kinds
        are compared, not matched class by class)."""
        self.status = state
        self.version = event.version
        self.updated_at = event.at
        if type(event) is JobAdmitted:
            self.attempts = event.attempt
        elif type(event) is JobStarted:
            self.started_at = self.started_at or event.at
        elif type(event) is JobFailed or type(event) is JobRetryScheduled:
            self.reason = event.reason
        elif type(event) is JobTimedOut:
            self.reason = f"timed out after {event.timeout:g}s"
        if type(event) in _TERMINAL:
            self.finished_at = self.finished_at or event.at


_TERMINAL = frozenset(TERMINAL_JOB_EVENTS)


def task_statements(batch: Sequence[Position], tasks: str = "rm_tasks") -> list[Statement]:
    """The task list's INSERT (tasks created in the segment, with their later events folded
    in) and UPDATE (tasks created before it)."""
    changes: dict[UUID, TaskChange] = {}
    for item in batch:
        event = item.event
        if not isinstance(event, TaskEvent):
            continue
        change = changes.get(event.id)
        if change is None:
            change = changes[event.id] = TaskChange(
                event.id, event.client, event.version, event.at, event.next_fire_at
            )
        change.apply(event)
    new = [c.inserted() for c in changes.values() if c.created is not None]
    moved = [c.moved() for c in changes.values() if c.created is None]
    statements: list[Statement] = []
    if new:
        statements.append(
            (
                f"INSERT INTO {tasks} ({names(TASK_COLUMNS)})"
                f" SELECT * FROM {recordset(TASK_COLUMNS)} ON CONFLICT (task_uuid) DO NOTHING",
                (records(new),),
            )
        )
    if moved:
        redefine = ", ".join(
            f"{name} = CASE WHEN u.redefined THEN u.{name} ELSE t.{name} END"
            for name, _ in DEFINITION
        )
        # A batch is applied whole, with its tracking record: the counters add up once.
        statements.append(
            (
                f"UPDATE {tasks} AS t SET version = u.version, updated_at = u.updated_at,"
                " next_fire_at = u.next_fire_at, status = coalesce(u.status, t.status),"
                f" {redefine}, runs = t.runs + u.runs, skipped = t.skipped + u.skipped,"
                " last_fire_at = coalesce(u.last_fire_at, t.last_fire_at),"
                " snoozed_until = CASE WHEN u.snoozed THEN u.snoozed_until"
                " ELSE t.snoozed_until END,"
                " snooze_reason = CASE WHEN u.snoozed THEN u.snooze_reason"
                " ELSE t.snooze_reason END"
                f" FROM {recordset(TASK_MOVE_COLUMNS)}"
                " WHERE t.task_uuid = u.task_uuid AND t.version < u.version",
                (records(moved),),
            )
        )
    return statements


def run_inserts(
    batch: Sequence[Position], runs: str = "rm_task_runs", jobs: str = "rm_jobs"
) -> list[Statement]:
    """Rows of the runs fired or skipped in the segment.

    Runs before the segment's job-list statements: a fired run whose job was submitted in an
    earlier batch (same commit, cut between) starts from that job's row, as the runs' UPDATE
    would have left it had both been in one batch.
    """
    rows: dict[UUID, dict[str, Any]] = {}
    job_id: int | None
    reason: str | None
    duplicate_of: int | None
    for item in batch:
        match item.event:
            case TaskFired() as e:
                job_id, status, reason, duplicate_of = e.job_id, "queued", None, None
            case TaskRunSkipped() as e:
                job_id, status, reason, duplicate_of = None, "skipped", e.reason, e.duplicate_of
            case _:
                continue
        rows.setdefault(
            e.run_id,
            {
                "run_id": e.run_id,
                "task_uuid": e.id,
                "client": e.client,
                "trigger": e.trigger,
                "fire_at": e.fire_at,
                "job_id": job_id,
                "status": status,
                "reason": reason,
                "duplicate_of": duplicate_of,
                "event_id": e.event_id,
                "created_at": e.at,
            },
        )
    if not rows:
        return []
    return [
        (
            f"INSERT INTO {runs} (run_id, task_uuid, client, trigger, fire_at, job_id, status,"
            " reason, duplicate_of, event_id, attempts, created_at, finished_at, updated_at,"
            " job_version) SELECT v.run_id, v.task_uuid, v.client, v.trigger, v.fire_at,"
            " v.job_id, coalesce(j.state, v.status), v.reason, v.duplicate_of, v.event_id,"
            " coalesce(j.attempt, 0), v.created_at, j.finished_at,"
            " coalesce(j.updated_at, v.created_at), coalesce(j.version, 0)"
            f" FROM {recordset(RUN_COLUMNS, 'v')}"
            f" LEFT JOIN {jobs} AS j ON j.job_id = v.job_id"
            " ON CONFLICT (run_id) DO NOTHING",
            (records(rows.values()),),
        )
    ]


def run_updates(progress: Iterable[RunProgress], runs: str = "rm_task_runs") -> list[Statement]:
    """One UPDATE moving each run whose job has events in the segment (`progress`, folded by
    the caller's pass over the segment) to the job's state.

    Every job of the segment is offered: whether it is a run is known only to the run rows.
    """
    rows = list(progress)
    if not rows:
        return []
    return [
        (
            f"UPDATE {runs} AS r SET status = u.status, job_version = u.version,"
            " updated_at = u.updated_at, attempts = coalesce(u.attempts, r.attempts),"
            " started_at = coalesce(r.started_at, u.started_at),"
            " finished_at = coalesce(r.finished_at, u.finished_at),"
            " reason = coalesce(u.reason, r.reason)"
            f" FROM {recordset(PROGRESS_COLUMNS)}"
            " WHERE r.job_id = u.job_id AND r.job_version < u.version",
            (records(rows),),  # (msgspec encodes a dataclass as its fields)
        )
    ]
