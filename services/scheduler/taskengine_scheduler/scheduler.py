"""The scheduler: holds jobs until their time comes, then queues them.

Jobs submitted with a future `run_at` or a `semaphore_url`, and attempts waiting out a retry
delay, become timers (rows written with the consumer's tracking record); when a timer is due
the scheduler appends `JobQueued` at the job's next version and drops the timer in the same
transaction. A due job with a semaphore is queued only once a GET of its URL answers 2xx/3xx;
until then its timer moves `schedule_interval` seconds ahead (no event: waiting is not news).
Each semaphore is asked on its own, within `outbound_deadline`, in its host's lane
(`taskengine_core.lanes`): a hung semaphore holds back only the jobs waiting on it.

It fires the runs of scheduled tasks (`tasks`), and clears finished jobs from the read models
after `retention_seconds` by appending `FinishedJobsCleared`, which the projector applies.

Only one scheduler works at a time: the holder of its leader lock; others wait as standbys
(`taskengine_store.leadership`), and every commit of the leader carries the lock's fence.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import time
from datetime import UTC, datetime, timedelta
from uuid import UUID

import aiohttp
from eventsourcing.persistence import Tracking
from taskengine_contracts import subjects
from taskengine_contracts.events import (
    FinishedJobsCleared,
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
from taskengine_core.clients import mask_secrets
from taskengine_core.ids import RETENTION_STREAM, SCHEDULES_STREAM
from taskengine_core.jobs import Job, JobRef, JobState, advance
from taskengine_core.lanes import lanes_from, origin
from taskengine_core.outbound import OutboundGuard, parse_allowlist
from taskengine_core.outbound_http import exchange, outbound_client
from taskengine_core.schedules import TICK, active_duties
from taskengine_runtime import BatchConsumer, Delivered, Runtime, metrics
from taskengine_store.leadership import LeaderLock, run_as_leader
from taskengine_store.store import Conflict, Statement

from taskengine_scheduler.tasks import TaskFiring, task_statements

log = logging.getLogger(__name__)

NAME = "scheduler"
DUE_BATCH = 500
GRID_MARGIN = 0.002
"""Seconds a tick comes after its instant on the wall clock, so that instant has passed."""

_UPSERT_TIMER = (
    "INSERT INTO scheduler_timers (job_uuid, job_id, client, workflow, priority, version,"
    " due_at, reason, attempts, semaphore_url, concurrency_key)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
    " ON CONFLICT (job_uuid) DO UPDATE SET version = excluded.version, due_at = excluded.due_at,"
    " reason = excluded.reason, priority = excluded.priority, attempts = excluded.attempts,"
    " semaphore_url = excluded.semaphore_url, concurrency_key = excluded.concurrency_key"
)
_DROP_TIMER = "DELETE FROM scheduler_timers WHERE job_uuid = %s"
_FOLLOW_UPDATE = (
    "UPDATE scheduler_timers SET version = %s, priority = %s,"
    " due_at = CASE WHEN reason = 'due' THEN %s ELSE due_at END,"
    " semaphore_url = CASE WHEN reason = 'due' THEN %s END WHERE job_uuid = %s"
)
_GATE_CLOSED = "UPDATE scheduler_timers SET due_at = %s WHERE job_uuid = %s AND version = %s"
_CLEARABLE = "SELECT 1 FROM rm_jobs WHERE finished_at < %s AND NOT persist LIMIT 1"
_WORK = (
    "SELECT (SELECT min(next_fire_at) FROM scheduler_tasks WHERE status = 'active'"
    " AND definition IS NOT NULL) AS next_fire,"
    " EXISTS (SELECT 1 FROM scheduler_requests) AS requested,"
    " EXISTS (SELECT 1 FROM scheduler_timers WHERE due_at <= now()) AS timers_due"
)
"""What a tick has to do: the next fire of any active schedule, whether runs were asked
for, whether a job's timer is due (each an index look-up)."""


def timer_statements(batch: list[Delivered]) -> list[Statement]:
    """What a batch of job events does to the timers."""
    statements: list[Statement] = []
    for item in batch:
        event = item.event
        match event:
            case JobSubmitted(state="scheduled"):
                statements.append(_timer(event, event.run_at, "due", 0, event.semaphore_url))
            case JobScheduled():
                statements.append(
                    _timer(event, event.run_at, "due", event.attempts, event.semaphore_url)
                )
            case JobRetryScheduled():
                statements.append(_timer(event, event.retry_at, "retry", event.attempt))
            case JobUpdated(state="scheduled" | "retry_wait"):
                statements.append(
                    (
                        _FOLLOW_UPDATE,
                        (
                            event.version,
                            event.priority,
                            event.run_at,
                            event.semaphore_url,
                            event.id,
                        ),
                    )
                )
            case JobCancelled() | JobPaused() | JobBroken():
                statements.append((_DROP_TIMER, (event.id,)))
    return statements


def _timer(
    event: JobSubmitted | JobScheduled | JobRetryScheduled,
    due_at: datetime,
    reason: str,
    attempts: int,
    semaphore: str | None = None,
) -> Statement:
    """A timer row from a job event (each of them carries the job's concurrency key)."""
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
            semaphore,
            event.concurrency_key,
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
            job.semaphore_url if reason == "due" else None,
            job.concurrency_key,
        ),
    )


class Scheduler:
    def __init__(
        self,
        runtime: Runtime,
        duties: dict[str, bool],
        http: aiohttp.ClientSession,
        fence: Statement | None = None,
    ):
        self.runtime = runtime
        self.duties = duties
        self.http = http
        self.fence = fence
        self.tasks = TaskFiring(runtime, fence, timedelta(seconds=runtime.config.min_fire_interval))
        self.next_tick = 0.0
        self.busy = asyncio.Lock()
        """Held while handling a batch or ticking: the two never interleave."""
        self.last_clear = -float("inf")
        self.checking: set[UUID] = set()
        """Jobs whose semaphore is being asked now."""
        self.checks: set[asyncio.Task] = set()
        self.lanes = lanes_from(runtime.config)
        self.asking = asyncio.Semaphore(runtime.config.outbound_concurrency)
        """Semaphore URLs asked at once."""

    async def on_job_events(self, batch: list[Delivered]) -> bool:
        async with self.busy:
            return await self._handle(batch)

    async def _handle(self, batch: list[Delivered]) -> bool:
        for item in batch:
            self.runtime.apply(item.event)
            if isinstance(item.event, ScheduleSwitched):
                self.duties[item.event.name] = item.event.active
                log.info("scheduler: %s %s", item.event.name, "on" if item.event.active else "off")
        statements = timer_statements(batch) + task_statements(batch)
        if not statements:
            return False
        tracking = Tracking(NAME, batch[-1].position)
        await self.runtime.call(self.runtime.store.commit, (), tracking, self._fenced(statements))
        self.next_tick = 0.0
        return True

    async def keep_ticking(self) -> None:
        """Ticks on time on its own: the consumer's idle calls stop while it waits on the bus."""
        while True:
            await asyncio.sleep(max(0.0, self.next_tick - time.monotonic()))
            await self.tick()

    async def tick(self) -> None:
        """Queues every due timer (one query, one commit) and asks due jobs' semaphores."""
        if time.monotonic() >= self.next_tick:
            async with self.busy:
                await self._tick()

    async def _tick(self) -> None:
        if time.monotonic() < self.next_tick:
            return
        # On the wall clock's TICK grid (just after it): whole seconds, where cron lines and
        # most other schedules fall due, start firing at once.
        self.next_tick = time.monotonic() + TICK - time.time() % TICK + GRID_MARGIN
        if self.duties["clear_finished_jobs"]:
            await self.clear_finished()
        # One query says what there is to do; each duty reads its rows only when it has some.
        # (Four queries a tick made the idle scheduler the engine's busiest process.)
        try:
            [work] = await self.runtime.call(self.runtime.store.query, _WORK)
        except Exception:  # e.g. the store is unreachable: everything stays due
            log.exception("scheduler: reading what is due failed")
            return
        if self.duties["fire_scheduled_tasks"]:
            upcoming = datetime.fromtimestamp(math.floor(time.time() / TICK + 1) * TICK, UTC)
            try:
                if await self.tasks.tick(work["next_fire"], work["requested"], upcoming):
                    self.next_tick = 0.0  # there may be more due
            except Exception:  # e.g. the store is unreachable: the runs stay due
                log.exception("scheduler: firing scheduled tasks failed")
        if not self.duties["queue_scheduled_jobs"] or not work["timers_due"]:
            return
        rows = await self.runtime.call(
            self.runtime.store.query,
            "SELECT * FROM scheduler_timers WHERE due_at <= now() AND job_uuid <> ALL(%s)"
            " ORDER BY due_at LIMIT %s",
            (list(self.checking), DUE_BATCH),
        )
        for row in rows:
            if row["semaphore_url"] and row["reason"] == "due":
                self.checking.add(row["job_uuid"])
                task = asyncio.create_task(self.check_gate(row))
                self.checks.add(task)
                task.add_done_callback(self.checks.discard)
        await self.queue([r for r in rows if not (r["semaphore_url"] and r["reason"] == "due")])
        if len(rows) == DUE_BATCH:
            self.next_tick = 0.0

    async def queue(self, rows: list[dict]) -> None:
        """Appends `JobQueued` for each row and drops its timer, in one commit."""
        store = self.runtime.store
        while rows:
            events = [self._queue(row) for row in rows]
            drops: list[Statement] = [(_DROP_TIMER, (row["job_uuid"],)) for row in rows]
            try:
                await self.runtime.call(store.commit, events, None, self._fenced(drops))
                queued = datetime.now(UTC)
                for row in rows:
                    late = (queued - row["due_at"]).total_seconds()
                    metrics.FIRE_LATENESS.labels("timer").observe(max(late, 0.0))
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

    async def check_gate(self, row: dict) -> None:
        """Queues the job if its semaphore answers 2xx/3xx, else it waits another interval.

        Each job's semaphore is asked on its own, so a hung one holds back only its own job.
        """
        try:
            why = await self.gate_closed(row["semaphore_url"])
            if why:
                interval = self.runtime.settings.int("schedule_interval")
                later = datetime.now(UTC) + timedelta(seconds=interval)
                log.info(
                    "job %s waits: semaphore %s %s; asking again in %ss",
                    row["job_id"],
                    mask_secrets(row["semaphore_url"]),
                    why,
                    interval,
                )
                await self.runtime.call(
                    self.runtime.store.execute,
                    self._fenced([(_GATE_CLOSED, (later, row["job_uuid"], row["version"]))]),
                )
            elif self.duties["queue_scheduled_jobs"]:
                await self.queue([row])
        except Exception:  # the timer stays due: the next tick asks again
            log.exception("scheduler: asking the semaphore of job %s failed", row["job_id"])
        finally:
            self.checking.discard(row["job_uuid"])

    async def gate_closed(self, url: str) -> str | None:
        """None when the semaphore is open (2xx/3xx), else why it is not; asked in its host's
        lane, the whole exchange within `outbound_deadline`."""
        host = origin(url)
        held = await self.lanes.acquire(host)
        if held is not None:
            return f"not asked: {host} keeps failing (held back {held:.0f}s more)"
        answered = False
        try:
            async with self.asking:
                status, error = await exchange(
                    self.http,
                    "GET",
                    url,
                    deadline=self.runtime.config.outbound_deadline,
                    max_bytes=self.runtime.config.outbound_max_response_bytes,
                )
            answered = error is None and status is not None and status < 500
        finally:
            if change := self.lanes.finish(host, answered):
                log.warning("scheduler: semaphore %s", change)
        if error or status is None:
            return f"unreachable ({error})"[:300]
        return None if status < 400 else f"answered HTTP {status}"

    async def clear_finished(self) -> None:
        """Every `schedule_interval`: if some finished job outlived `retention_seconds`, says
        so with `FinishedJobsCleared` (the projector then removes such jobs)."""
        settings = self.runtime.settings
        if time.monotonic() - self.last_clear < settings.int("schedule_interval"):
            return
        self.last_clear = time.monotonic()
        retention = settings.int("retention_seconds")
        now = datetime.now(UTC)
        before = now - timedelta(seconds=retention)
        store = self.runtime.store
        try:
            if not await self.runtime.call(store.query, _CLEARABLE, (before,)):
                return

            def cleared(events: list, version: int) -> FinishedJobsCleared:
                return FinishedJobsCleared(
                    id=RETENTION_STREAM,
                    version=version,
                    at=now,
                    finished_before=before,
                    retention_seconds=retention,
                )

            await self.runtime.call(store.append_next, RETENTION_STREAM, cleared)
            log.info("scheduler: clearing jobs finished before %s", before.isoformat())
        except Exception:  # retention can wait for the next interval
            log.exception("scheduler: clearing finished jobs failed")

    def _fenced(self, statements: list[Statement]) -> list[Statement]:
        return [self.fence, *statements] if self.fence else statements

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
            concurrency_key=row["concurrency_key"],
        )


async def scheduler(runtime: Runtime) -> None:
    await run_as_leader(runtime.config.database_url, NAME, lambda lock: lead(runtime, lock))


async def lead(runtime: Runtime, lock: LeaderLock) -> None:
    metrics.LEADER.set(1)  # until the process ends: one that loses the lock exits
    # What is loaded by now lives as long as the process: out of the collector's full passes,
    # which otherwise stall a burst of fires for 50-150 ms each.
    gc.collect()
    gc.freeze()
    switches = await runtime.call(runtime.store.stream, SCHEDULES_STREAM)
    guard = OutboundGuard(parse_allowlist(runtime.config.callback_allowlist))
    config = runtime.config
    async with outbound_client(
        guard, config.outbound_deadline, config.outbound_concurrency
    ) as http:
        service = Scheduler(
            runtime,
            active_duties(e for e in switches if isinstance(e, ScheduleSwitched)),
            http,
            lock.fence,
        )
        consumer = BatchConsumer(
            runtime.nc,
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
                subjects.TASKS,
            ],
            handler=service.on_job_events,
            handled=await runtime.call(runtime.store.tracked, NAME),
            track=runtime.tracker(NAME, lock.fence),
            reject=runtime.rejecter(NAME, lock.fence),
            # Paced: no `heard` (see `BatchConsumer.heard`).
            latest=runtime.latest,
            attempts=runtime.config.poison_attempts,
            trace=runtime.hop_trace(NAME),
            interval=runtime.config.reaction_interval,
            idle=service.tick,
        )
        async with asyncio.TaskGroup() as group:
            group.create_task(consumer.run())
            group.create_task(service.keep_ticking())
