"""The scheduler queues a job when its run_at comes, not before."""

from __future__ import annotations

from datetime import UTC, datetime

from taskengine_contracts.events import JobCancelled, JobQueued
from taskengine_core.jobs import JobRef, advance

from tests.support.factories import submitted
from tests.support.system import wait_events


def test_scheduled_job_is_queued_when_due_and_a_cancelled_one_never(services):
    services.start("relay", "scheduler")
    later = submitted(delay=2.0)
    cancelled = submitted(delay=2.0)
    services.store.commit([later, cancelled])
    services.store.commit([advance(JobRef.of(cancelled), JobCancelled, reason="test", by="tester")])

    events = wait_events(
        services,
        lambda es: any(isinstance(e, JobQueued) for e in es),
        what="the due job to be queued",
    )
    queued = [e for e in events if isinstance(e, JobQueued)]
    assert [(q.job_id, q.version, q.reason) for q in queued] == [(later.job_id, 2, "due")]
    assert queued[0].at >= later.run_at
    assert datetime.now(UTC) >= later.run_at
    assert services.store.query("SELECT count(*) AS n FROM scheduler_timers")[0]["n"] == 0
