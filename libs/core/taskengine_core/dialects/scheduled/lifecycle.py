"""A scheduled task's lifecycle: its state folded from its stream, and the events that move it.

The gateway folds a task's stream, plans the next event at version + 1 and commits it; the store
refuses it if a fire of the scheduler or another request moved the task first. Every event
carries `next_fire_at`, so the scheduler keeps its timers from the events alone.

Statuses are the seed's: `active`, `paused`, `canceled` (final). A task keeps `active` after a
`once` schedule has fired; it just has no next fire.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

import msgspec
from taskengine_contracts.events import (
    TaskCancelled,
    TaskCreated,
    TaskDefinition,
    TaskEvent,
    TaskFired,
    TaskPaused,
    TaskResumed,
    TaskRunRequested,
    TaskRunSkipped,
    TaskSnoozed,
    TaskUpdated,
)

from taskengine_core.dialects.scheduled.runs import manual_run_id
from taskengine_core.dialects.scheduled.schedule import Schedule, parse_schedule
from taskengine_core.errors import IllegalTransition

ACTIVE, PAUSED, CANCELED = "active", "paused", "canceled"
SCHEDULE_FIELDS = frozenset({"schedule_kind", "schedule_expr", "timezone"})
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def schedule_of(definition: TaskDefinition, created_at: datetime) -> Schedule:
    """The task's schedule; an rrule without DTSTART starts when the task was created."""
    return parse_schedule(
        definition.schedule_kind, definition.schedule_expr, definition.timezone, created_at
    )


def first_fire(definition: TaskDefinition, created_at: datetime, now: datetime) -> datetime | None:
    """When a task (re)starting now fires first. A `once` instant that has passed fires at
    once; other schedules fire at their next instant after `now` (what was missed is not
    caught up). An `event` task fires by topic only."""
    if definition.schedule_kind == "event":
        return None
    schedule = schedule_of(definition, created_at)
    if definition.schedule_kind == "once":
        return schedule.next_after(_EPOCH)
    return schedule.next_after(now)


class Task(msgspec.Struct):
    """A task as its events tell it."""

    id: UUID
    client: str
    definition: TaskDefinition
    status: str
    version: int
    created_at: datetime
    updated_at: datetime
    next_fire_at: datetime | None = None
    last_fire_at: datetime | None = None
    snoozed_until: datetime | None = None
    snooze_reason: str | None = None
    runs: int = 0
    scheduled_runs: int = 0
    """Runs fired by the schedule itself (a `once` task fires once)."""
    fired_jobs: list[int] = msgspec.field(default_factory=list)
    """The jobs of the runs fired by the events this fold applied (a task started from its
    read-model row knows those after the row only; the row's runs are in `rm_task_runs`)."""

    @classmethod
    def fold(cls, events: Iterable[TaskEvent]) -> Task | None:
        task: Task | None = None
        for event in events:
            if task is None:
                if not isinstance(event, TaskCreated):
                    raise IllegalTransition(
                        f"a task's stream must begin with its creation, not {event}"
                    )
                task = cls(
                    event.id,
                    event.client,
                    event.definition,
                    ACTIVE,
                    event.version,
                    event.at,
                    event.at,
                    event.next_fire_at,
                )
            else:
                task.apply(event)
        return task

    def apply(self, event: TaskEvent) -> None:
        self.version, self.updated_at = event.version, event.at
        self.next_fire_at = event.next_fire_at
        match event:
            case TaskUpdated(definition=definition):
                self.definition = definition
                self.snoozed_until = self.snooze_reason = None
            case TaskPaused():
                self.status = PAUSED
            case TaskResumed():
                self.status, self.snoozed_until, self.snooze_reason = ACTIVE, None, None
            case TaskCancelled():
                self.status = CANCELED
            case TaskSnoozed(reason=reason):
                self.snoozed_until, self.snooze_reason = event.next_fire_at, reason
            case TaskFired(trigger=trigger, fire_at=fire_at, job_id=job_id):
                self.runs += 1
                self.fired_jobs.append(job_id)
                self.scheduled_runs += trigger == "schedule"
                self.last_fire_at = fire_at
                if trigger == "schedule":
                    self.snoozed_until = self.snooze_reason = None
            case TaskRunSkipped(trigger="schedule"):
                self.scheduled_runs += 1
                self.snoozed_until = self.snooze_reason = None

    def _not_canceled(self, action: str) -> None:
        if self.status == CANCELED:
            raise IllegalTransition(f"task {self.id} is canceled: cannot {action} it")

    # --- the moves a client can ask for ------------------------------------------------------

    def update(self, definition: TaskDefinition, changed: list[str], now: datetime) -> TaskUpdated:
        """A new definition; a changed schedule fires next by the new one, from now."""
        self._not_canceled("update")
        next_fire = self.next_fire_at
        if self.status == ACTIVE and SCHEDULE_FIELDS & set(changed):
            next_fire = self._fire_after(definition, now)
        elif self.status != ACTIVE:
            next_fire = None
        return TaskUpdated(
            id=self.id,
            version=self.version + 1,
            at=now,
            client=self.client,
            definition=definition,
            changed=changed,
            next_fire_at=next_fire,
        )

    def pause(self, by: str, now: datetime) -> TaskPaused:
        self._not_canceled("pause")
        if self.status == PAUSED:
            raise IllegalTransition(f"task {self.id} is already paused")
        return TaskPaused(
            id=self.id,
            version=self.version + 1,
            at=now,
            client=self.client,
            by=by,
            next_fire_at=None,
        )

    def resume(self, by: str, now: datetime) -> TaskResumed:
        self._not_canceled("resume")
        if self.status != PAUSED:
            raise IllegalTransition(f"task {self.id} is not paused")
        return TaskResumed(
            id=self.id,
            version=self.version + 1,
            at=now,
            client=self.client,
            by=by,
            next_fire_at=self._fire_after(self.definition, now),
        )

    def cancel(self, by: str, now: datetime) -> TaskCancelled:
        self._not_canceled("cancel")
        return TaskCancelled(
            id=self.id,
            version=self.version + 1,
            at=now,
            client=self.client,
            by=by,
            next_fire_at=None,
        )

    def snooze(self, delay_seconds: int, reason: str | None, by: str, now: datetime) -> TaskSnoozed:
        """Moves the pending run `delay_seconds` later (from now, if it is already due)."""
        self._not_canceled("snooze")
        if self.status == PAUSED:
            raise IllegalTransition(f"task {self.id} is paused: resume it first")
        if self.next_fire_at is None:
            raise IllegalTransition(f"task {self.id} has no pending run to snooze")
        pending = max(self.next_fire_at, now)
        return TaskSnoozed(
            id=self.id,
            version=self.version + 1,
            at=now,
            client=self.client,
            by=by,
            delay_seconds=delay_seconds,
            reason=reason,
            next_fire_at=pending + timedelta(seconds=delay_seconds),
        )

    def run_now(self, by: str, now: datetime) -> TaskRunRequested:
        """One run now, outside the schedule (a paused task may be run by hand)."""
        self._not_canceled("run")
        return TaskRunRequested(
            id=self.id,
            version=self.version + 1,
            at=now,
            client=self.client,
            by=by,
            run_id=manual_run_id(self.id, uuid4().hex),
            next_fire_at=self.next_fire_at,
        )

    def _fire_after(self, definition: TaskDefinition, now: datetime) -> datetime | None:
        if definition.schedule_kind == "once" and self.scheduled_runs:
            return None  # it has had its one run
        return first_fire(definition, self.created_at, now)


def created(task_id: UUID, client: str, definition: TaskDefinition, now: datetime) -> TaskCreated:
    return TaskCreated(
        id=task_id,
        version=1,
        at=now,
        client=client,
        definition=definition,
        next_fire_at=first_fire(definition, now, now),
    )
