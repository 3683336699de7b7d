"""The scheduler: holds jobs until their time comes, then queues them.

Jobs submitted with a future `run_at` and attempts waiting out a retry delay become timers
(rows written with the consumer's tracking record); when a timer is due the scheduler appends
`JobQueued` at the job's next version and drops the timer in the same transaction.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime

from eventsourcing.persistence import Tracking
from taskengine_bus import BatchConsumer, Delivered, Runtime
from taskengine_contracts import subjects
from taskengine_contracts.events import (
    JobBroken,
    JobCancelled,
    JobPaused,
    JobQueued,
    JobRetryScheduled,
    JobScheduled,
    JobSubmitted,
    JobUpdated,
    ScheduleSwitched,
)
from taskengine_core.ids import SCHEDULES_STREAM
from taskengine_core.jobs import Job, JobRef, JobState, advance
from taskengine_core.schedules import TICK, active_duties
from taskengine_store.store import Conflict, Statement

log = logging.getLogger(__name__)

NAME = "scheduler"
DUE_BATCH = 500

_UPSERT_TIMER = (
    "INSERT INTO scheduler_timers (job_uuid, job_id, client, workflow, priority, version,"
    " due_at, reason, attempts) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
    " ON CONFLICT (job_uuid) DO UPDATE SET version = excluded.version, due_at = excluded.due_at,"
    " reason = excluded.reason, priority = excluded.priority, attempts = excluded.attempts"
)
_DROP_TIMER = "DELETE FROM scheduler_timers WHERE job_uuid = %s"
_FOLLOW_UPDATE = (
    "UPDATE scheduler_timers SET version = %s, priority = %s,"
    " due_at = CASE WHEN reason = 'due' THEN %s ELSE due_at END WHERE job_uuid = %s"
)


def timer_statements(batch: list[Delivered]) -> list[Statement]:
    """What a batch of job events does to the timers."""
    statements: list[Statement] = []
    for item in batch:
        event = item.event
        match event:
            case JobSubmitted(state="scheduled"):
                statements.append(_timer(event, event.run_at, "due", 0))
            case JobScheduled():
                statements.append(_timer(event, event.run_at, "due", event.attempts))
            case JobRetryScheduled():
                statements.append(_timer(event, event.retry_at, "retry", event.attempt))
            case JobUpdated(state="scheduled" | "retry_wait"):
                statements.append(
                    (_FOLLOW_UPDATE, (event.version, event.priority, event.run_at, event.id))
                )
            case JobCancelled() | JobPaused() | JobBroken():
                statements.append((_DROP_TIMER, (event.id,)))
    return statements


def _timer(event, due_at, reason: str, attempts: int) -> Statement:  # type: ignore[no-untyped-def]
    return (
        _UPSERT_TIMER,
        (
            event.id,
            event.job_id,
            event.client,
            event.workflow,
            event.priority,
            event.version,
            due_at,
            reason,
            attempts,
        ),
    )


def timer_for(job: Job) -> Statement:
    """The timer a job needs as its stream now tells it: none unless it is waiting for a time."""
    if job.state == JobState.SCHEDULED:
        reason = "due"
    elif job.state == JobState.RETRY_WAIT:
        reason = "retry"
    else:
        return (_DROP_TIMER, (job.id,))
    return (
        _UPSERT_TIMER,
        (
            job.id,
            job.job_id,
            job.client,
            job.workflow,
            job.priority,
            job.version,
            job.run_at,
            reason,
            job.attempt,
        ),
    )


class Scheduler:
    def __init__(self, runtime: Runtime, duties: dict[str, bool]):
        self.runtime = runtime
        self.duties = duties
        self.next_tick = 0.0

    async def on_job_events(self, batch: list[Delivered]) -> bool:
        for item in batch:
            self.runtime.apply(item.event)
            if isinstance(item.event, ScheduleSwitched):
                self.duties[item.event.name] = item.event.active
                log.info("scheduler: %s %s", item.event.name, "on" if item.event.active else "off")
        statements = timer_statements(batch)
        if not statements:
            return False
        tracking = Tracking(NAME, batch[-1].position)
        await self.runtime.call(self.runtime.store.commit, (), tracking, statements)
        self.next_tick = 0.0
        return True

    async def tick(self) -> None:
        """Queues every due timer: one query, one commit."""
        if time.monotonic() < self.next_tick or not self.duties["queue_scheduled_jobs"]:
            return
        self.next_tick = time.monotonic() + TICK
        store = self.runtime.store
        rows = await self.runtime.call(
            store.query,
            "SELECT * FROM scheduler_timers WHERE due_at <= now() ORDER BY due_at LIMIT %s",
            (DUE_BATCH,),
        )
        full = len(rows) == DUE_BATCH
        while rows:
            events = [self._queue(row) for row in rows]
            drops = [(_DROP_TIMER, (row["job_uuid"],)) for row in rows]
            try:
                await self.runtime.call(store.commit, events, statements=drops)
                rows = []
            except Conflict as conflict:
                # The job moved meanwhile (updated, paused, cancelled...): rebuild its timer.
                jobs = await self.runtime.call(store.jobs, conflict.stale)
                await self.runtime.call(
                    store.execute,
                    [
                        timer_for(jobs[job]) if job in jobs else (_DROP_TIMER, (job,))
                        for job in conflict.stale
                    ],
                )
                rows = [r for r in rows if r["job_uuid"] not in conflict.stale]
        if full:
            self.next_tick = 0.0

    @staticmethod
    def _queue(row: dict) -> JobQueued:
        state = JobState.SCHEDULED if row["reason"] == "due" else JobState.RETRY_WAIT
        ref = JobRef(row["job_uuid"], row["job_id"], row["client"], row["version"], state)
        return advance(
            ref,
            JobQueued,
            at=datetime.now(UTC),
            workflow=row["workflow"],
            priority=row["priority"],
            reason=row["reason"],
            attempts=row["attempts"],
        )


async def scheduler(runtime: Runtime) -> None:
    switches = await runtime.call(runtime.store.stream, SCHEDULES_STREAM)
    service = Scheduler(
        runtime, active_duties(e for e in switches if isinstance(e, ScheduleSwitched))
    )
    consumer = BatchConsumer(
        runtime.js,
        durable=NAME,
        filter_subjects=[
            subjects.subject_for(JobSubmitted),
            subjects.subject_for(JobRetryScheduled),
            subjects.subject_for(JobCancelled),
            subjects.subject_for(JobScheduled),
            subjects.subject_for(JobUpdated),
            subjects.subject_for(JobPaused),
            subjects.subject_for(JobBroken),
            subjects.SETTINGS,
            subjects.SCHEDULES,
        ],
        handler=service.on_job_events,
        handled=await runtime.call(runtime.store.tracked, NAME),
        track=runtime.tracker(NAME),
        idle=service.tick,
    )
    await consumer.run()
