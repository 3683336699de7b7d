"""Retention in the read models: the projector applies `FinishedJobsCleared` at its place in
the log, and a replay (in any batch size) builds the same tables."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from taskengine_cli.ops import replay
from taskengine_contracts.events import (
    CallbackDelivered,
    Event,
    ExecutionLogged,
    FinishedJobsCleared,
    JobAdmitted,
    JobBroken,
    JobCancelled,
    JobEvent,
    JobFailed,
    JobStarted,
    JobSubmitted,
    JobSucceeded,
    JobUpdated,
    LogLine,
)
from taskengine_core.ids import RETENTION_STREAM, callback_stream, execution_stream
from taskengine_core.jobs import JobRef, advance

from tests.support.factories import submitted
from tests.support.waiting import wait_until

NOW = datetime.now(UTC)
OLD = NOW - timedelta(hours=3)
CUTOFF = NOW - timedelta(hours=1)


class History:
    """One job's events, each at a given time."""

    def __init__(self, at: datetime):
        job = submitted()
        self.first = JobSubmitted(**{**_fields(job), "at": at})
        self.events: list[JobEvent] = [self.first]

    @property
    def job_id(self) -> int:
        return self.first.job_id

    def then(self, event_type: type[JobEvent], at: datetime, **fields: Any) -> History:
        self.events.append(advance(JobRef.of(self.events[-1]), event_type, at=at, **fields))
        return self

    def run(self, at: datetime) -> History:
        self.then(JobAdmitted, at, workflow="noop", priority=5, attempt=1, running=1, max_jobs=10)
        return self.then(JobStarted, at, workflow="noop", attempt=1, executor="local-test")

    def output(self, at: datetime) -> ExecutionLogged:
        line = LogLine(at, 1, "INFO", f"job {self.job_id} says hi")
        return ExecutionLogged(
            id=execution_stream(self.job_id, 1),
            version=1,
            at=at,
            job_id=self.job_id,
            attempt=1,
            lines=[line],
        )


def _fields(event: JobSubmitted) -> dict[str, Any]:
    return {f: getattr(event, f) for f in event.__struct_fields__}


def callback(job_id: int, at: datetime) -> CallbackDelivered:
    url = "http://127.0.0.1:1/hook"
    return CallbackDelivered(
        id=callback_stream(job_id, "job.succeeded", url),
        version=1,
        at=at,
        job_id=job_id,
        url=url,
        event="job.succeeded",
        status_code=204,
        attempts=1,
    )


def cleared(version: int, finished_before: datetime) -> FinishedJobsCleared:
    return FinishedJobsCleared(
        id=RETENTION_STREAM,
        version=version,
        at=NOW,
        finished_before=finished_before,
        retention_seconds=int((NOW - finished_before).total_seconds()),
    )


def jobs_in(store, ids: list[int]) -> set[int]:  # type: ignore[no-untyped-def]
    rows = store.query("SELECT job_id FROM rm_jobs WHERE job_id = ANY(%s)", (ids,))
    return {row["job_id"] for row in rows}


def logged(store, ids: list[int]) -> set[int]:  # type: ignore[no-untyped-def]
    rows = store.query("SELECT DISTINCT job_id FROM rm_job_log WHERE job_id = ANY(%s)", (ids,))
    return {row["job_id"] for row in rows}


def test_finished_jobs_before_the_cutoff_leave_the_read_models_and_replay_agrees(services):
    succeeded = History(OLD).run(OLD)
    old_output = succeeded.output(OLD)
    succeeded.then(JobSucceeded, OLD, workflow="noop", attempt=1)
    failed = (
        History(OLD)
        .run(OLD)
        .then(JobFailed, OLD, workflow="noop", attempt=1, reason="x", failure="other")
    )
    cancelled = History(OLD).then(JobCancelled, OLD, reason="not needed", by="tester")
    persisted = History(OLD).run(OLD).then(JobSucceeded, OLD, workflow="noop", attempt=1)
    persisted.then(
        JobUpdated, OLD, workflow="noop", priority=5, run_at=OLD, persist=True, changed=["persist"]
    )
    running = History(OLD).run(OLD)
    recent = History(OLD).run(OLD).then(JobSucceeded, NOW, workflow="noop", attempt=1)
    # Finished long ago but broken (rerun) recently: finished_at is its first end, so it goes.
    rerun = History(OLD).run(OLD).then(JobSucceeded, OLD, workflow="noop", attempt=1)
    rerun.then(JobBroken, NOW, by="tester", reason="rerun", rerun_as=1)
    # Persisted only after the clearing: too late, it was cleared at the clearing's place.
    late = History(OLD).run(OLD).then(JobSucceeded, OLD, workflow="noop", attempt=1)
    histories = [succeeded, failed, cancelled, persisted, running, recent, rerun, late]
    ids = [h.job_id for h in histories]

    before: list[Event] = [e for h in histories for e in h.events] + [old_output]
    # After the clearing: late events of cleared jobs (a callback, a rerun breaking one) and a
    # job that ends only now.
    after: list[Event] = [
        callback(succeeded.job_id, NOW),
        advance(JobRef.of(failed.events[-1]), JobBroken, at=NOW, by="tester", reason="rerun"),
        advance(JobRef.of(running.events[-1]), JobSucceeded, at=NOW, workflow="noop", attempt=1),
        advance(
            JobRef.of(late.events[-1]),
            JobUpdated,
            at=NOW,
            workflow="noop",
            priority=5,
            run_at=OLD,
            persist=True,
            changed=["persist"],
        ),  # fmt: skip
        cleared(2, NOW - timedelta(days=365)),  # clears nothing
    ]
    services.store.commit(before[:10])
    services.start("projector")
    services.store.commit(before[10:])
    services.store.commit([cleared(1, CUTOFF)])
    services.store.commit(after)

    def caught_up() -> bool:
        return services.store.tracked("projector") == services.store.max_position()

    wait_until(caught_up, what="the projector to catch up")

    kept = {persisted.job_id, running.job_id, recent.job_id}
    assert jobs_in(services.store, ids) == kept
    assert logged(services.store, ids) == kept
    [row] = services.store.query(
        "SELECT state, finished_at FROM rm_jobs WHERE job_id = %s", (running.job_id,)
    )
    assert row == {"state": "succeeded", "finished_at": NOW}
    # The event store keeps the cleared jobs' events.
    assert services.store.stream(succeeded.first.id)[-1] == succeeded.events[-1]

    for batch in (5000, 1, 3, 7):
        done = replay(services.store, batch=batch)
        assert done.replayed == done.live, f"replay in batches of {batch}"
        assert done.position == services.store.max_position()


def test_a_job_finished_after_the_cutoff_stays_until_a_later_clearing(services):
    job = History(OLD).run(OLD).then(JobSucceeded, NOW, workflow="noop", attempt=1)
    services.store.commit([*job.events, cleared(1, CUTOFF)])
    services.start("projector")
    wait_until(
        lambda: services.store.tracked("projector") == services.store.max_position(),
        what="the projector to catch up",
    )
    assert jobs_in(services.store, [job.job_id]) == {job.job_id}

    services.store.commit([cleared(2, NOW + timedelta(seconds=1))])
    wait_until(lambda: not jobs_in(services.store, [job.job_id]), what="the job to be cleared")
    assert logged(services.store, [job.job_id]) == set()
    done = replay(services.store)
    assert done.replayed == done.live
