"""Scheduled tasks in the scheduler: when they are due, and firing their runs.

The scheduler keeps one row per task (`scheduler_tasks`), written from the task events with its
tracking record: status, definition and `next_fire_at`, as the events say. A `run_now` request
and a published topic become rows of `scheduler_requests` in the same way (a topic matches the
client's active `event` tasks in SQL, so nothing is read first).

Every tick fires what is due, a batch per commit: for each run, `TaskFired` at the task's next
version and the run's `JobSubmitted`, or `TaskRunSkipped` when a run with the same dedupe key
started within the window. The run id derives from the task and the instant it was due, and
the task's version is checked on commit, so two schedulers can never fire a run twice; only
the leader fires at all.

A burst (thousands due at one instant) fires as a pipeline: while one batch commits, the next
is read and planned; the tasks' rows move with one array statement per batch. The first batch
due at the next tick is read and planned a tick ahead (`prepare`), stamped with that instant:
when it comes, firing starts with a commit. A task that moved meanwhile (updated, paused)
fails the version check on that commit and is planned again from its stream.

Downtime: a task whose fire instant passed while no scheduler ran fires once on recovery (the
oldest missed instant, with how many more it stands for in `missed`), then goes on from the
first instant after now.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, Literal
from uuid import UUID

import msgspec
from taskengine_contracts.events import (
    Event,
    TaskCancelled,
    TaskCreated,
    TaskDefinition,
    TaskEvent,
    TaskFired,
    TaskRunRequested,
    TaskRunSkipped,
    TaskUpdated,
    TopicPublished,
    topic_of,
)
from taskengine_core.dialects.scheduled.fields import InvalidTask
from taskengine_core.dialects.scheduled.lifecycle import ACTIVE, CANCELED, PAUSED, Task
from taskengine_core.dialects.scheduled.runs import dedupe_blocks, manual_run_id, run_id
from taskengine_core.dialects.scheduled.schedule import Schedule, off_loop, parse_schedule
from taskengine_core.dialects.scheduled.submission import run_submitted
from taskengine_runtime import Delivered, Runtime, metrics
from taskengine_store.store import Conflict, Statement

log = logging.getLogger(__name__)

FIRE_BATCH = 5000
"""Runs fired per commit."""
FIRE_BUDGET = 2.0
"""Seconds a tick goes on firing full batches of due schedules before the scheduler's other
work (its consumer, job timers) gets a turn."""
MISSED_COUNT_LIMIT = 1000
"""Missed instants counted one by one at most (a per-second cron down for a day: 86,400)."""
DEFAULT_DEDUPE_WINDOW = 3600
"""Seconds a `dedupe_key` without `dedupe_window_seconds` holds off runs with the same key."""

_STATUS = {
    "task.created": ACTIVE,
    "task.paused": PAUSED,
    "task.resumed": ACTIVE,
    "task.cancelled": CANCELED,
}

_UPSERT_TASKS = (
    "INSERT INTO scheduler_tasks (task_uuid, client, version, status, definition, next_fire_at,"
    " created_at) SELECT * FROM unnest(%b::uuid[], %b::text[], %b::bigint[], %b::text[],"
    " %b::jsonb[], %b::timestamptz[], %b::timestamptz[])"
    " ON CONFLICT (task_uuid) DO UPDATE SET version = excluded.version,"
    " status = COALESCE(excluded.status, scheduler_tasks.status),"
    " definition = COALESCE(excluded.definition, scheduler_tasks.definition),"
    " next_fire_at = excluded.next_fire_at"
    " WHERE scheduler_tasks.version < excluded.version"
)
_REQUEST_RUN = (
    "INSERT INTO scheduler_requests (task_uuid, token, trigger, fire_at, run_id, event_id)"
    " VALUES (%s, %s, 'run_now', %s, %s, NULL) ON CONFLICT DO NOTHING"
)
_REQUEST_TOPIC = (
    "INSERT INTO scheduler_requests (task_uuid, token, trigger, fire_at, run_id, event_id)"
    " SELECT task_uuid, %s, 'event', %s, NULL, %s FROM scheduler_tasks"
    " WHERE client = %s AND kind = 'event' AND status = 'active'"
    " AND (topic = %s OR topic IS NULL) ON CONFLICT DO NOTHING"
)
_DUE = (
    "SELECT task_uuid, client, version, status, definition::text, next_fire_at, created_at,"
    " NULL AS token, NULL AS trigger, NULL AS fire_at, NULL::uuid AS run_id, NULL::uuid AS event_id"
    " FROM scheduler_tasks WHERE status = 'active' AND next_fire_at <= %s"
    " AND definition IS NOT NULL AND task_uuid <> ALL(%b::uuid[]) ORDER BY next_fire_at LIMIT %s"
)
_REQUESTED = (
    "SELECT t.task_uuid, t.client, t.version, t.status, t.definition::text, t.next_fire_at,"
    " t.created_at, r.token, r.trigger, r.fire_at, r.run_id, r.event_id"
    " FROM scheduler_requests r JOIN scheduler_tasks t USING (task_uuid)"
    " WHERE t.definition IS NOT NULL AND t.status <> 'canceled' ORDER BY r.fire_at LIMIT %s"
)
_MOVED = (
    "UPDATE scheduler_tasks t SET version = m.version, next_fire_at = m.next_fire_at"
    " FROM unnest(%b::uuid[], %b::bigint[], %b::timestamptz[]) AS m(task_uuid, version,"
    " next_fire_at) WHERE t.task_uuid = m.task_uuid"
)
_DONE_REQUESTS = (
    "DELETE FROM scheduler_requests WHERE (task_uuid, token) IN"
    " (SELECT * FROM unnest(%b::uuid[], %b::text[]))"
)
_DEDUPE_SEEN = (
    "SELECT client, dedupe_key, fired_at, job_id FROM scheduler_dedupe"
    " WHERE (client, dedupe_key) IN (SELECT * FROM unnest(%b::text[], %b::text[]))"
)
_DEDUPE_FIRED = (
    "INSERT INTO scheduler_dedupe (client, dedupe_key, fired_at, job_id)"
    " SELECT * FROM unnest(%b::text[], %b::text[], %b::timestamptz[], %b::bigint[])"
    " ON CONFLICT (client, dedupe_key) DO UPDATE SET fired_at = excluded.fired_at,"
    " job_id = excluded.job_id"
)
_DROP_REQUESTS = "DELETE FROM scheduler_requests WHERE task_uuid = %s"


def task_statements(batch: list[Delivered]) -> list[Statement]:
    """What a batch of task events does to the scheduler's rows: one upsert of every task it
    touched (its last state in the batch) and the runs it asks for."""
    last: dict[UUID, list] = {}
    requests: list[Statement] = []
    for item in batch:
        event = item.event
        if isinstance(event, TopicPublished):
            token = f"event:{event.id}"
            requests.append(
                (_REQUEST_TOPIC, (token, event.at, event.id, event.client, event.topic))
            )
            continue
        if not isinstance(event, TaskEvent) or isinstance(event, (TaskFired, TaskRunSkipped)):
            continue  # a fire's own commit already moved the task's row
        row = last.setdefault(event.id, [event.id, event.client, 0, None, None, None, None])
        row[2], row[5] = event.version, event.next_fire_at
        row[3] = _STATUS.get(topic_of(event), row[3])
        if isinstance(event, (TaskCreated, TaskUpdated)):
            row[4] = msgspec.json.encode(event.definition).decode()
        if isinstance(event, TaskCreated):
            row[6] = event.at
        if isinstance(event, TaskRunRequested):
            requests.append((_REQUEST_RUN, (event.id, str(event.run_id), event.at, event.run_id)))
        if isinstance(event, TaskCancelled):
            requests.append((_DROP_REQUESTS, (event.id,)))  # a canceled task never runs again
    statements: list[Statement] = []
    if last:
        columns = list(zip(*last.values(), strict=True))
        statements.append((_UPSERT_TASKS, [list(column) for column in columns]))
    # Requests after the upsert: a topic matches event tasks created in the same batch.
    return statements + requests


@dataclass
class Request:
    """A run asked for outside the schedule: `run_now` (with its run id) or a topic."""

    token: str
    trigger: Literal["run_now", "event"]
    fire_at: datetime
    run_id: UUID | None
    event_id: UUID | None


@dataclass
class Due:
    """A task with something to fire now: its schedule came (no `request`), or a request."""

    task_id: UUID
    client: str
    version: int
    status: str
    definition: TaskDefinition
    next_fire_at: datetime | None
    created_at: datetime
    request: Request | None = None

    @classmethod
    def of(cls, row: dict[str, Any]) -> Due:
        # Read as text: one msgspec decode instead of json.loads and then a conversion.
        definition = msgspec.json.decode(row["definition"], type=TaskDefinition)
        request = None
        if row["token"] is not None:
            request = Request(
                row["token"], row["trigger"], row["fire_at"], row["run_id"], row["event_id"]
            )
        return cls(
            row["task_uuid"],
            row["client"],
            row["version"],
            row["status"],
            definition,
            row["next_fire_at"],
            row["created_at"],
            request,
        )


@lru_cache(maxsize=4096)
def _schedule(kind: str, expr: str | None, timezone: str, start: datetime | None) -> Schedule:
    return parse_schedule(kind, expr, timezone, start)


@lru_cache(maxsize=65536)
def _after(
    kind: str, expr: str | None, timezone: str, start: datetime | None, after: datetime
) -> datetime | None:
    """Memoised: many tasks share a schedule, and all of them fire at the same instants."""
    return _schedule(kind, expr, timezone, start).next_after(after)


def next_fire(
    due: Due, now: datetime, min_interval: timedelta = timedelta(seconds=1)
) -> tuple[datetime | None, int]:
    """The first instant of the task's schedule after `now`, and how many instants between
    the one firing and now were missed (not fired: downtime fires once). Instants closer than
    `min_interval` to the one before are passed over."""
    d = due.definition
    # Only an rrule's schedule depends on when the task was created (its default DTSTART):
    # other kinds share one parse and one memo however many tasks use them.
    start = due.created_at if d.schedule_kind == "rrule" else None
    schedule = (d.schedule_kind, d.schedule_expr, d.timezone, start)
    fire_at, missed = due.next_fire_at, 0
    assert fire_at is not None
    gap = min_interval - _TICK  # fires are whole seconds: the next one is at least this later
    following = _after(*schedule, fire_at + gap)
    while following is not None and following <= now:
        missed += 1
        if missed >= MISSED_COUNT_LIMIT:
            following = _after(*schedule, now)
            break
        following = _after(*schedule, following + gap)
    return following, missed


_TICK = timedelta(microseconds=1)


@dataclass
class Planned:
    """A batch planned ahead for `instant`: what `fire` commits once that instant comes."""

    instant: datetime
    due: list[Due]
    events: list[Event]
    statements: list[Statement]


PLANNED_STALE = timedelta(seconds=1)
"""A batch planned ahead is dropped (and planned again) once its instant is this far past."""


class TaskFiring:
    """Fires due runs for the scheduler, a batch per commit."""

    def __init__(
        self,
        runtime: Runtime,
        fence: Statement | None = None,
        min_interval: timedelta = timedelta(seconds=1),
    ):
        self.runtime = runtime
        self.fence = fence
        self.min_interval = min_interval  # no task fires closer than this to its last fire
        self.planned: Planned | None = None

    async def tick(self, next_fire: datetime | None, requested: bool, upcoming: datetime) -> int:
        """A tick's work: fires what is due, else plans what the next tick (`upcoming`) fires.
        `next_fire` is the earliest next fire of an active schedule and `requested` whether
        runs were asked for (one query of the scheduler's): with neither due, no schedule or
        request is read. Returns how many runs it fired."""
        now = datetime.now(UTC)
        planned = self.planned is not None and self.planned.instant <= now
        if requested or planned or (next_fire is not None and next_fire <= now):
            if fired := await self.fire_due():
                return fired
        if self.planned is None and next_fire is not None and next_fire <= upcoming:
            await self.prepare(upcoming)
        return 0

    async def fire_due(self) -> int:
        """Fires what is due now (schedules first, then requests); returns how many runs."""
        fired = await self._fire_schedules()
        rows = await self.runtime.call(self.runtime.store.query, _REQUESTED, (FIRE_BATCH,))
        if rows:
            fired += await self.fire([Due.of(row) for row in rows])
        return fired

    async def _fire_schedules(self) -> int:
        """Fires due schedules a batch per commit, for up to FIRE_BUDGET seconds: the next
        batch is read and planned while the last one commits (its tasks left out)."""
        store = self.runtime.store
        stop = time.monotonic() + FIRE_BUDGET
        fired = 0
        firing: asyncio.Future[int] | None = None  # the last batch, on its way to commit
        flying: list[UUID] = []  # its tasks
        now = datetime.now(UTC)
        planned, self.planned = self.planned, None
        if planned and planned.instant <= now < planned.instant + PLANNED_STALE:
            firing = asyncio.ensure_future(self.fire(planned.due, planned=planned))
            flying = [d.task_id for d in planned.due]
        elif planned and now < planned.instant:
            self.planned = planned  # not yet
        try:
            while True:
                now = datetime.now(UTC)
                rows = await self.runtime.call(store.query, _DUE, (now, flying, FIRE_BATCH))
                due = [Due.of(row) for row in rows]
                if firing and (not due or any(d.definition.dedupe_key for d in due)):
                    # Dedupe reads what the last batch fired: it must be committed first.
                    fired += await firing
                    firing, flying = None, []
                if not due:
                    return fired
                previous = firing
                firing = asyncio.ensure_future(self.fire(due, previous))
                flying = [d.task_id for d in due]
                if previous:
                    fired += await previous
                if len(due) < FIRE_BATCH or time.monotonic() > stop:
                    fired += await firing
                    firing = None
                    return fired
        finally:
            if firing:  # on an error, the batch on its way still commits (or fails) first
                await asyncio.gather(firing, return_exceptions=True)

    async def prepare(self, instant: datetime) -> None:
        """Reads and plans the first batch of schedules due at `instant` (the next tick), for
        `fire_due` to commit once it comes; none when nothing is due by then."""
        store = self.runtime.store
        rows = await self.runtime.call(store.query, _DUE, (instant, [], FIRE_BATCH))
        if rows:
            due = [Due.of(row) for row in rows]
            events, statements = await self._planned(due, instant)
            self.planned = Planned(instant, due, events, statements)

    async def _planned(self, due: list[Due], now: datetime) -> tuple[list[Event], list[Statement]]:
        numbers = await self.runtime.call(self.runtime.store.next_job_ids, len(due))
        seen = await self._dedupe_seen(due)
        # Off the loop: planning searches each schedule for its next fire.
        return await off_loop(self._plan, due, numbers, seen, now)

    async def fire(
        self,
        due: list[Due],
        after: asyncio.Future[int] | None = None,
        planned: Planned | None = None,
    ) -> int:
        """Fires `due` in one commit, made after the `after` batch's; returns how many. A batch
        `planned` ahead fires as of its instant (planned again as of it after a conflict)."""
        store = self.runtime.store
        instant = planned.instant if planned else None
        while due:
            if planned is None:
                events, statements = await self._planned(due, instant or datetime.now(UTC))
            else:
                events, statements, planned = planned.events, list(planned.statements), None
            if self.fence:
                statements.insert(0, self.fence)
            if after:
                await asyncio.gather(after, return_exceptions=True)  # one commit at a time
                after = None
            try:
                await self.runtime.call(store.commit, events, None, statements)
                fired = datetime.now(UTC)
                for d in due:
                    if d.request is None and d.next_fire_at is not None:
                        late = (fired - d.next_fire_at).total_seconds()
                        metrics.FIRE_LATENESS.labels("task").observe(max(late, 0.0))
                return len(due)
            except Conflict as conflict:
                # Moved meanwhile (updated, paused, fired by another scheduler): its row is
                # rebuilt from its stream, and the rest of the batch goes ahead.
                await self._refresh(conflict.stale)
                due = [d for d in due if d.task_id not in conflict.stale]
        return 0

    def _plan(
        self, due: list[Due], numbers: list[int], seen: dict, now: datetime
    ) -> tuple[list[Event], list[Statement]]:
        events: list[Event] = []
        # One statement per kind for the whole batch (not one per run): the last word on a
        # task or a dedupe key in the batch is what a row-by-row update would have left.
        moved: dict[UUID, tuple[int, datetime | None]] = {}
        done: list[tuple[UUID, str]] = []
        deduped: dict[tuple[str, str], tuple[datetime, int]] = {}
        versions: dict[UUID, int] = {}
        for item, number in zip(due, numbers, strict=True):
            version = versions.get(item.task_id, item.version) + 1
            versions[item.task_id] = version
            definition = item.definition
            trigger: Literal["schedule", "run_now", "event"]
            request = item.request
            if request is None:  # the schedule
                fire_at = item.next_fire_at
                assert fire_at is not None  # tasks are due by their next_fire_at
                try:
                    next_at, missed = next_fire(item, now, self.min_interval)
                except InvalidTask as error:  # e.g. its search ran out of budget
                    # It fires this once, then has no next fire until a fix (PUT).
                    log.error("task %s: no next fire: %s", item.task_id, error)
                    next_at, missed = None, 0
                except Exception:
                    log.exception("task %s: cannot compute its next fire", item.task_id)
                    next_at, missed = None, 0
                trigger, rid, event_id = "schedule", run_id(item.task_id, fire_at), None
            else:
                fire_at, next_at, missed = request.fire_at, item.next_fire_at, 0
                trigger, event_id = request.trigger, request.event_id
                rid = request.run_id or manual_run_id(item.task_id, request.token)
                done.append((item.task_id, request.token))
            moved[item.task_id] = (version, next_at)
            key = (item.client, definition.dedupe_key) if definition.dedupe_key else None
            window = definition.dedupe_window_seconds or DEFAULT_DEDUPE_WINDOW
            if key and key in seen and dedupe_blocks(window, seen[key][0], now):
                events.append(
                    TaskRunSkipped(
                        id=item.task_id,
                        version=version,
                        at=now,
                        client=item.client,
                        next_fire_at=next_at,
                        run_id=rid,
                        trigger=trigger,
                        fire_at=fire_at,
                        event_id=event_id,
                        reason=f"dedupe: a run with dedupe_key {definition.dedupe_key!r}"
                        f" started less than {window}s before",
                        duplicate_of=seen[key][1],
                    )
                )
                continue
            if key:
                seen[key] = (now, number)
                deduped[key] = (now, number)
            events.append(
                TaskFired(
                    id=item.task_id,
                    version=version,
                    at=now,
                    client=item.client,
                    next_fire_at=next_at,
                    run_id=rid,
                    trigger=trigger,
                    fire_at=fire_at,
                    event_id=event_id,
                    job_id=number,
                    missed=missed,
                )
            )
            events.append(run_submitted(number, item.client, now, item.task_id, item.definition))
        return events, _batched(moved, done, deduped)

    async def _dedupe_seen(self, due: list[Due]) -> dict[tuple[str, str], tuple[datetime, int]]:
        keys = {(d.client, d.definition.dedupe_key) for d in due if d.definition.dedupe_key}
        if not keys:
            return {}
        clients, names = zip(*keys, strict=True)
        rows = await self.runtime.call(
            self.runtime.store.query, _DEDUPE_SEEN, (list(clients), list(names))
        )
        return {(r["client"], r["dedupe_key"]): (r["fired_at"], r["job_id"]) for r in rows}

    async def _refresh(self, stale: set[UUID]) -> None:
        streams = await self.runtime.call(self.runtime.store.streams, stale)
        rows: list[list] = []
        for events in streams.values():
            task = Task.fold(e for e in events if isinstance(e, TaskEvent))
            if task is not None:
                rows.append(
                    [
                        task.id,
                        task.client,
                        task.version,
                        task.status,
                        msgspec.json.encode(task.definition).decode(),
                        task.next_fire_at,
                        task.created_at,
                    ]
                )
        if rows:
            columns = [list(c) for c in zip(*rows, strict=True)]
            statements: list[Statement] = [(_UPSERT_TASKS, columns)]
            statements += [(_DROP_REQUESTS, (r[0],)) for r in rows if r[3] == CANCELED]
            await self.runtime.call(self.runtime.store.execute, statements)


def _batched(
    moved: dict[UUID, tuple[int, datetime | None]],
    done: list[tuple[UUID, str]],
    deduped: dict[tuple[str, str], tuple[datetime, int]],
) -> list[Statement]:
    """The fired batch's row changes as one array statement each."""
    statements: list[Statement] = []
    if moved:
        versions, next_fires = zip(*moved.values(), strict=True)
        statements.append((_MOVED, (list(moved), list(versions), list(next_fires))))
    if done:
        statements.append((_DONE_REQUESTS, [list(column) for column in zip(*done, strict=True)]))
    if deduped:
        rows = [(*key, *value) for key, value in deduped.items()]
        statements.append((_DEDUPE_FIRED, [list(column) for column in zip(*rows, strict=True)]))
    return statements
