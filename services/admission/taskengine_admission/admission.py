"""The admission controller: grants queued jobs a slot and takes it back when they stop.

Its queue (waiting and admitted jobs) is kept in memory and mirrored in `admission_queue`,
written in the same transaction as the `JobAdmitted` events and the tracking record. A batch
that admits nothing (a job that stopped and freed its slot, say) commits nothing: its rows
go with the next commit, an admission's or the lazy record of the position (`Unsaved`), so
the mirror and the position never disagree, and a crash before it makes the bus deliver the
batch again. Only the holder of the leader lock admits (`leadership`); other instances wait
as standbys.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from uuid import UUID

from eventsourcing.persistence import Tracking
from taskengine_contracts import subjects
from taskengine_contracts.events import (
    JobAdmitted,
    JobBroken,
    JobCancelled,
    JobEvent,
    JobFailed,
    JobPaused,
    JobQueued,
    JobRetryScheduled,
    JobScheduled,
    JobSubmitted,
    JobSucceeded,
    JobTimedOut,
    JobUpdated,
    SettingChanged,
    decode,
)
from taskengine_core.ids import SETTINGS_STREAM
from taskengine_core.jobs import HOLDS_SLOT, Job, JobRef, JobState, advance
from taskengine_core.settings import RuntimeSettings
from taskengine_runtime import BatchConsumer, Delivered, Runtime, metrics
from taskengine_store.leadership import LeaderLock, run_as_leader
from taskengine_store.store import Conflict, Statement

from taskengine_admission.policy import Entry, Limits, choose

log = logging.getLogger(__name__)

NAME = "admission"
RELEASES = (
    JobSucceeded,
    JobFailed,
    JobTimedOut,
    JobCancelled,
    JobRetryScheduled,
    JobPaused,
    JobBroken,
    JobScheduled,
)
"""Events after which a job holds no slot and waits for none."""
CONSUMED = (JobSubmitted, JobQueued, JobUpdated, *RELEASES, SettingChanged)
"""Every event admission applies (settings included). Not its own `JobAdmitted`: it applies
each to its queue as the commit that stores it succeeds (`_admit`), and only it writes them,
in the same transaction as its queue rows and position; read back from the bus they would
change nothing, and cost a batch a job."""

_UPSERT = (
    "INSERT INTO admission_queue (job_uuid, job_id, client, workflow, priority, version,"
    " queued_at, admitted, attempt, concurrency_key) SELECT * FROM unnest(%b::uuid[],"
    " %b::bigint[], %b::text[], %b::text[], %b::int[], %b::bigint[], %b::timestamptz[],"
    " %b::bool[], %b::int[], %b::text[])"
    " ON CONFLICT (job_uuid) DO UPDATE SET priority = excluded.priority,"
    " version = excluded.version, queued_at = excluded.queued_at,"
    " admitted = excluded.admitted, attempt = excluded.attempt"
)
_DELETE = "DELETE FROM admission_queue WHERE job_uuid = ANY(%s)"


class Admission:
    def __init__(
        self,
        runtime: Runtime,
        entries: dict[UUID, Entry],
        position: int = 0,
        fence: Statement | None = None,
    ):
        self.runtime = runtime
        self.entries = entries
        self.position = position
        """The last log position applied to `entries` and the settings."""
        self.fence = fence
        self.committed = position
        """The last log position applied in a commit (it may lie past the bus batch's end)."""
        self.unsaved: set[UUID] = set()
        """Jobs whose queue rows changed since the last commit."""

    @property
    def limits(self) -> Limits:
        s = self.runtime.settings
        return Limits(s.max_jobs, s.int("priority_slots"), s.int("priority_threshold"))

    async def on_job_events(self, batch: list[Delivered]) -> bool:
        # Read ahead from the store with an earlier batch's commit: applied already.
        batch = [item for item in batch if item.position > self.committed]
        if not batch:
            return True
        rest, end = await self._rest_of_commit(batch[-1].position)
        batch += rest
        touched: set[UUID] = set()
        self.position = end
        for item in batch:
            event = item.event
            if self.runtime.apply(event):
                continue
            known = self.entries.get(event.id)
            if known is not None and event.version <= known.version:
                continue  # not news: a re-read of the job's stream (`_refresh`) told us more
            match event:
                case JobSubmitted(state="queued") | JobQueued():
                    attempts = event.attempts if isinstance(event, JobQueued) else 0
                    self.entries[event.id] = Entry(
                        event.id,
                        event.job_id,
                        event.client,
                        event.workflow,
                        event.priority,
                        event.version,
                        event.at,
                        attempt=attempts,
                        concurrency_key=event.concurrency_key,
                    )
                case JobUpdated() if event.id in self.entries:
                    entry = self.entries[event.id]
                    entry.priority, entry.version = event.priority, event.version
                case _ if isinstance(event, RELEASES):
                    self.entries.pop(event.id, None)
            touched.add(event.id)
        committed = await self._admit(touched, Tracking(NAME, end))
        self.committed = end
        return committed

    def rows(self) -> list[Statement]:
        """The queue rows of the jobs that changed since the last commit (`Unsaved`)."""
        return self._rows(self.unsaved, {})

    def saved(self) -> None:
        self.unsaved.clear()

    async def _rest_of_commit(self, position: int) -> tuple[list[Delivered], int]:
        """What admission applies of the events committed with `position` but after it, and
        the position of that commit's last event.

        A bus batch may end inside a commit (the relay is still publishing it). Jobs queued
        in one commit wait from the same moment, so admission decides on whole commits only:
        else it could admit a priority-5 job of a commit before seeing its priority-1 job.
        The store is read only when `position` is not known to end its commit.
        """
        if self.runtime.ends_a_commit(position):
            return [], position
        rest = await self.runtime.call(self.runtime.store.rest_of_commit, position)
        applied = [Delivered(p.position, p.event) for p in rest if isinstance(p.event, CONSUMED)]
        return applied, rest[-1].position if rest else position

    async def _admit(self, touched: set[UUID], tracking: Tracking) -> bool:
        """Admits what the limits allow; commits admissions, queue rows and position at once.
        False if there was nothing to admit: the rows of what changed are left unsaved and the
        position is recorded lazily, with them; a redelivery before that changes nothing
        twice."""
        touched = touched | self.unsaved
        while True:
            chosen = choose(self.entries.values(), self.limits)
            running = sum(e.admitted for e in self.entries.values())
            events = []
            for entry in chosen:
                running += 1
                ref = JobRef(
                    entry.job_uuid, entry.job_id, entry.client, entry.version, JobState.QUEUED
                )
                events.append(
                    advance(
                        ref,
                        JobAdmitted,
                        at=datetime.now(UTC),
                        workflow=entry.workflow,
                        priority=entry.priority,
                        attempt=entry.attempt + 1,
                        running=running,
                        max_jobs=self.limits.max_jobs,
                        position=self.position,
                    )
                )
            if not events:
                self.unsaved = touched
                return False
            rows = self._rows(touched | {e.job_uuid for e in chosen}, {e.id: e for e in events})
            if self.fence:
                rows.insert(0, self.fence)
            try:
                await self.runtime.call(self.runtime.store.commit, events, tracking, rows)
            except Conflict as conflict:
                if not conflict.stale:
                    return True  # the batch was already handled
                await self._refresh(conflict.stale)
                touched |= conflict.stale
                continue
            self.unsaved.clear()
            for event in events:
                entry = self.entries[event.id]
                entry.admitted, entry.version, entry.attempt = True, event.version, event.attempt
                wait = (event.at - entry.queued_at).total_seconds()
                metrics.ADMISSION_WAIT.observe(max(wait, 0.0))
            return True

    async def _refresh(self, stale: set[UUID]) -> None:
        """Rebuilds the entries of jobs that moved meanwhile from their streams."""
        streams = await self.runtime.call(self.runtime.store.streams, stale)
        for job_uuid, events in streams.items():
            self.entries.pop(job_uuid, None)
            job = Job.fold(e for e in events if isinstance(e, JobEvent))
            if job is None or job.state not in (JobState.QUEUED, *HOLDS_SLOT):
                continue
            # Queued (again) when its last queuing event says, exactly as if it had come by bus.
            queued_at = next(
                e.at
                for e in reversed(events)
                if isinstance(e, JobQueued) or (isinstance(e, JobSubmitted) and e.state == "queued")
            )
            self.entries[job_uuid] = Entry(
                job.id,
                job.job_id,
                job.client,
                job.workflow,
                job.priority,
                job.version,
                queued_at,
                job.state in HOLDS_SLOT,
                job.attempt,
                job.concurrency_key,
            )

    def _rows(self, jobs: set[UUID], admitted: dict[UUID, JobAdmitted]) -> list[Statement]:
        """The queue rows of `jobs` as they now are: one upsert and one delete, set-based."""
        upserts: list[list] = [[] for _ in range(10)]
        deletes: list[UUID] = []
        for job in jobs:
            entry = self.entries.get(job)
            if entry is None:
                deletes.append(job)
                continue
            event = admitted.get(job)
            row = (
                entry.job_uuid,
                entry.job_id,
                entry.client,
                entry.workflow,
                entry.priority,
                event.version if event else entry.version,
                entry.queued_at,
                entry.admitted or event is not None,
                event.attempt if event else entry.attempt,
                entry.concurrency_key,
            )
            for column, value in zip(upserts, row, strict=True):
                column.append(value)
        statements: list[Statement] = []
        if upserts[0]:
            statements.append((_UPSERT, upserts))
        if deletes:
            statements.append((_DELETE, (deletes,)))
        return statements


def filter_subjects() -> list[str]:
    """The subjects of what admission consumes (`CONSUMED`)."""
    jobs = (subjects.subject_for(e) for e in CONSUMED if e is not SettingChanged)
    return [*jobs, subjects.SETTINGS]


async def load_entries(runtime: Runtime) -> dict[UUID, Entry]:
    rows = await runtime.call(runtime.store.query, "SELECT * FROM admission_queue")
    return {r["job_uuid"]: Entry(**r) for r in rows}


async def settings_at(runtime: Runtime, position: int) -> RuntimeSettings:
    """The settings as of log `position`: what the queue mirrored at that position saw."""
    rows = await runtime.call(
        runtime.store.query,
        "SELECT state FROM stored_events WHERE originator_id = %s AND notification_id <= %s"
        " ORDER BY originator_version",
        (SETTINGS_STREAM, position),
    )
    events = (decode(bytes(row["state"])) for row in rows)
    return RuntimeSettings.fold(e for e in events if isinstance(e, SettingChanged))


async def admission(runtime: Runtime) -> None:
    await run_as_leader(runtime.config.database_url, NAME, lambda lock: lead(runtime, lock))


async def lead(runtime: Runtime, lock: LeaderLock) -> None:
    """Admits from where the last leader's commits left off."""
    metrics.LEADER.set(1)  # until the process ends: one that loses the lock exits
    position = await runtime.call(runtime.store.tracked, NAME)
    runtime.settings = await settings_at(runtime, position)
    service = Admission(runtime, await load_entries(runtime), position, lock.fence)
    runtime.working = lambda: sum(e.admitted for e in service.entries.values())
    consumer = BatchConsumer(
        runtime.nc,
        durable=NAME,
        filter_subjects=filter_subjects(),
        handler=service.on_job_events,
        handled=position,
        track=runtime.tracker(NAME, lock.fence, service),
        reject=runtime.rejecter(NAME, lock.fence, unsaved=service),
        latest=runtime.latest,
        heard=runtime.heard,
        attempts=runtime.config.poison_attempts,
        trace=runtime.hop_trace(NAME),
    )
    await consumer.run()
