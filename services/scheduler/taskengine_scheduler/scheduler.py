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
    JobCancelled,
    JobQueued,
    JobRetryScheduled,
    JobSubmitted,
)
from taskengine_core.jobs import JobRef, JobState, advance
from taskengine_store.store import Conflict, Statement

log = logging.getLogger(__name__)

NAME = "scheduler"
DUE_BATCH = 500
TICK = 0.25

_UPSERT_TIMER = (
    "INSERT INTO scheduler_timers (job_uuid, job_id, client, workflow, priority, version,"
    " due_at, reason, attempts) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
    " ON CONFLICT (job_uuid) DO UPDATE SET version = excluded.version, due_at = excluded.due_at,"
    " reason = excluded.reason, priority = excluded.priority, attempts = excluded.attempts"
)
_DROP_TIMER = "DELETE FROM scheduler_timers WHERE job_uuid = %s"


def timer_statements(batch: list[Delivered]) -> list[Statement]:
    """What a batch of job events does to the timers."""
    statements: list[Statement] = []
    for item in batch:
        event = item.event
        match event:
            case JobSubmitted(state="scheduled"):
                statements.append(
                    (
                        _UPSERT_TIMER,
                        (
                            event.id,
                            event.job_id,
                            event.client,
                            event.workflow,
                            event.priority,
                            event.version,
                            event.run_at,
                            "due",
                            0,
                        ),
                    )
                )
            case JobRetryScheduled():
                statements.append(
                    (
                        _UPSERT_TIMER,
                        (
                            event.id,
                            event.job_id,
                            event.client,
                            event.workflow,
                            event.priority,
                            event.version,
                            event.retry_at,
                            "retry",
                            event.attempt,
                        ),
                    )
                )
            case JobCancelled():
                statements.append((_DROP_TIMER, (event.id,)))
    return statements


class Scheduler:
    def __init__(self, runtime: Runtime):
        self.runtime = runtime
        self.next_tick = 0.0

    async def on_job_events(self, batch: list[Delivered]) -> bool:
        for item in batch:
            self.runtime.apply(item.event)
        statements = timer_statements(batch)
        if not statements:
            return False
        tracking = Tracking(NAME, batch[-1].position)
        await self.runtime.call(self.runtime.store.commit, (), tracking, statements)
        self.next_tick = 0.0
        return True

    async def tick(self) -> None:
        """Queues every due timer: one query, one commit."""
        if time.monotonic() < self.next_tick:
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
                # The job moved (cancelled, paused...): its timer is obsolete.
                log.info("scheduler: %d timer(s) superseded", len(conflict.stale))
                await self.runtime.call(
                    store.execute, [(_DROP_TIMER, (job,)) for job in conflict.stale]
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
    service = Scheduler(runtime)
    consumer = BatchConsumer(
        runtime.js,
        durable=NAME,
        filter_subjects=[
            subjects.subject_for(JobSubmitted),
            subjects.subject_for(JobRetryScheduled),
            subjects.subject_for(JobCancelled),
            subjects.SETTINGS,
        ],
        handler=service.on_job_events,
        handled=await runtime.call(runtime.store.tracked, NAME),
        track=runtime.tracker(NAME),
        idle=service.tick,
    )
    await consumer.run()
