"""Admission against real NATS and PostgreSQL: priority then FIFO, max_jobs, slot release."""

from __future__ import annotations

from taskengine_contracts.events import JobAdmitted, JobStarted, JobSucceeded
from taskengine_core.jobs import JobRef, advance

from tests.support.factories import settings, submitted
from tests.support.system import wait_events


def admitted(events) -> list[int]:  # type: ignore[no-untyped-def]
    return [e.job_id for e in events if isinstance(e, JobAdmitted)]


def test_admits_by_priority_then_fifo_up_to_max_jobs_and_refills_freed_slots(services):
    settings(services.store, max_jobs=2)
    jobs = [submitted(priority=p) for p in (5, 3, 5, 1, 9)]
    services.store.commit(jobs)
    services.start("relay", "admission")

    events = wait_events(services, lambda es: len(admitted(es)) == 2, what="two admissions")
    by_priority = sorted(jobs, key=lambda j: (j.priority, j.job_id))
    assert admitted(events) == [by_priority[0].job_id, by_priority[1].job_id]

    # Finish one: exactly one more is admitted, the next in priority order (5, first come).
    first = next(e for e in events if isinstance(e, JobAdmitted))
    started = advance(JobRef.of(first), JobStarted, workflow="noop", attempt=1, executor="test")
    done = advance(JobRef.of(started), JobSucceeded, workflow="noop", attempt=1)
    services.store.commit([started, done])
    events = wait_events(services, lambda es: len(admitted(es)) == 3, what="a third admission")
    assert admitted(events)[2] == jobs[0].job_id

    # Raising max_jobs live admits the rest, lowest priority last.
    settings(services.store, max_jobs=10)
    events = wait_events(services, lambda es: len(admitted(es)) == 5, what="all admitted")
    assert admitted(events)[3:] == [jobs[2].job_id, jobs[4].job_id]
    assert len(admitted(events)) == len(set(admitted(events)))
