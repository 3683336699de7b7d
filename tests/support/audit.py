"""Checks over the whole event log: every job's history legal, complete and without repeats."""

from __future__ import annotations

from collections import Counter, defaultdict

from taskengine_contracts.events import JobAdmitted, JobEvent, JobStarted, JobSubmitted
from taskengine_core.jobs import FINAL_STATES, Job

from tests.support.waiting import wait_until


def job_histories(events) -> dict[int, list[JobEvent]]:  # type: ignore[no-untyped-def]
    histories: dict[int, list[JobEvent]] = defaultdict(list)
    for event in events:
        if isinstance(event, JobEvent):
            histories[event.job_id].append(event)
    return histories


def audit(events, accepted: set[int]) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """Asserts each accepted job is final with a legal history and no duplicated event.

    Returns the count of jobs per final state.
    """
    histories = job_histories(events)
    missing = accepted - set(histories)
    assert not missing, f"accepted jobs missing from the store: {sorted(missing)[:10]}"
    states: Counter[str] = Counter()
    for job_id in accepted:
        history = histories[job_id]
        assert isinstance(history[0], JobSubmitted)
        job = Job.fold(history)  # raises on an illegal or out-of-order history
        assert job is not None and job.state in FINAL_STATES, (job_id, job and job.state)
        assert [e.version for e in history] == list(range(1, len(history) + 1))
        per_attempt = Counter(
            (type(e).__name__, e.attempt)
            for e in history
            if isinstance(e, (JobAdmitted, JobStarted))
        )
        repeated = [key for key, n in per_attempt.items() if n > 1]
        assert not repeated, f"job {job_id} has duplicated lifecycle events: {repeated}"
        terminal = [
            e
            for e in history
            if type(e).__name__ in ("JobSucceeded", "JobFailed", "JobTimedOut", "JobCancelled")
        ]
        assert len(terminal) == 1, (job_id, terminal)
        states[str(job.state)] += 1
    return dict(states)


def audited_when_final(system, accepted: set[int], timeout: float = 180) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """Waits until `audit` passes on the system's event log; its count of jobs per final
    state. On timeout, fails with the audit's last complaint and the services' errors."""
    problem: list[str] = []

    def all_final() -> dict | None:
        try:
            return audit(system.events(), accepted)
        except AssertionError as error:
            problem[:] = [str(error)]
            return None

    try:
        return wait_until(all_final, timeout=timeout, every=1.0, what="every job to finish")
    except AssertionError:
        raise AssertionError(f"{problem}\n{system.service_errors()}") from None
