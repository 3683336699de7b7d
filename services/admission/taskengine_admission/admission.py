"""The admission controller: grants queued jobs a slot and takes it back when they stop.

Its queue (waiting and admitted jobs) is kept in memory and mirrored in `admission_queue`,
written in the same transaction as the `JobAdmitted` events and the tracking record.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from uuid import UUID

from eventsourcing.persistence import Tracking
from taskengine_bus import BatchConsumer, Delivered, Runtime
from taskengine_contracts import subjects
from taskengine_contracts.events import (
    JobAdmitted,
    JobBroken,
    JobCancelled,
    JobFailed,
    JobPaused,
    JobQueued,
    JobRetryScheduled,
    JobScheduled,
    JobSubmitted,
    JobSucceeded,
    JobTimedOut,
    JobUpdated,
)
from taskengine_core.jobs import HOLDS_SLOT, JobRef, JobState, advance
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

_UPSERT = (
    "INSERT INTO admission_queue (job_uuid, job_id, client, workflow, priority, version,"
    " queued_at, admitted, attempt) SELECT * FROM unnest(%s::uuid[], %s::bigint[], %s::text[],"
    " %s::text[], %s::int[], %s::bigint[], %s::timestamptz[], %s::bool[], %s::int[])"
    " ON CONFLICT (job_uuid) DO UPDATE SET priority = excluded.priority,"
    " version = excluded.version, queued_at = excluded.queued_at,"
    " admitted = excluded.admitted, attempt = excluded.attempt"
)
_DELETE = "DELETE FROM admission_queue WHERE job_uuid = ANY(%s)"


class Admission:
    def __init__(self, runtime: Runtime, entries: dict[UUID, Entry]):
        self.runtime = runtime
        self.entries = entries

    @property
    def limits(self) -> Limits:
        s = self.runtime.settings
        return Limits(s.max_jobs, s.int("priority_slots"), s.int("priority_threshold"))

    async def on_job_events(self, batch: list[Delivered]) -> bool:
        touched: set[UUID] = set()
        for item in batch:
            event = item.event
            if self.runtime.apply(event):
                continue
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
                    )
                case JobAdmitted() if event.id in self.entries:
                    entry = self.entries[event.id]
                    entry.admitted, entry.version = True, event.version
                    entry.attempt = event.attempt
                case JobUpdated() if event.id in self.entries:
                    entry = self.entries[event.id]
                    entry.priority, entry.version = event.priority, event.version
                case _ if isinstance(event, RELEASES):
                    self.entries.pop(event.id, None)
            touched.add(event.id)
        await self._admit(touched, Tracking(NAME, batch[-1].position))
        return True

    async def _admit(self, touched: set[UUID], tracking: Tracking) -> None:
        """Admits what the limits allow; commits admissions, queue rows and position at once."""
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
                    )
                )
            rows = touched | {e.job_uuid for e in chosen}
            try:
                await self.runtime.call(
                    self.runtime.store.commit,
                    events,
                    tracking,
                    self._rows(rows, {e.id: e for e in events}),
                )
            except Conflict as conflict:
                if not conflict.stale:
                    return  # the batch was already handled
                await self._refresh(conflict.stale)
                touched |= conflict.stale
                continue
            for event in events:
                entry = self.entries[event.id]
                entry.admitted, entry.version, entry.attempt = True, event.version, event.attempt
            return

    async def _refresh(self, stale: set[UUID]) -> None:
        """Rebuilds the entries of jobs that moved meanwhile from their streams."""
        jobs = await self.runtime.call(self.runtime.store.jobs, stale)
        for job_uuid in stale:
            job, entry = jobs.get(job_uuid), self.entries.pop(job_uuid, None)
            if job is None or job.state not in (JobState.QUEUED, *HOLDS_SLOT):
                continue
            queued_at = entry.queued_at if entry else job.updated_at
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
            )

    def _rows(self, jobs: set[UUID], admitted: dict[UUID, JobAdmitted]) -> list[Statement]:
        """The queue rows of `jobs` as they now are: one upsert and one delete, set-based."""
        upserts: list[list] = [[] for _ in range(9)]
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
            )
            for column, value in zip(upserts, row, strict=True):
                column.append(value)
        statements: list[Statement] = []
        if upserts[0]:
            statements.append((_UPSERT, upserts))
        if deletes:
            statements.append((_DELETE, (deletes,)))
        return statements


async def load_entries(runtime: Runtime) -> dict[UUID, Entry]:
    rows = await runtime.call(runtime.store.query, "SELECT * FROM admission_queue")
    return {r["job_uuid"]: Entry(**r) for r in rows}


async def admission(runtime: Runtime) -> None:
    service = Admission(runtime, await load_entries(runtime))
    runtime.working = lambda: sum(e.admitted for e in service.entries.values())
    consumer = BatchConsumer(
        runtime.js,
        durable=NAME,
        filter_subjects=[
            subjects.subject_for(JobSubmitted),
            subjects.subject_for(JobQueued),
            subjects.subject_for(JobAdmitted),
            subjects.subject_for(JobUpdated),
            *(subjects.subject_for(e) for e in RELEASES),
            subjects.SETTINGS,
        ],
        handler=service.on_job_events,
        handled=await runtime.call(runtime.store.tracked, NAME),
        track=runtime.tracker(NAME),
    )
    await consumer.run()
