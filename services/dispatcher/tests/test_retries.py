"""How an attempt ends: success, timeout, a retry with the job's backoff, or failure when the
job's retries are spent (its own policy, or the `retry_limit` / `retry_delay` settings)."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import UUID

import pytest
from taskengine_contracts.events import (
    JobEvent,
    JobFailed,
    JobRetryScheduled,
    JobSubmitted,
    JobSucceeded,
    JobTimedOut,
    Resources,
    RetryPolicy,
    RunSpec,
    SettingChanged,
)
from taskengine_core.dialects.worktasks import DIALECT
from taskengine_core.jobs import Job, JobRef, JobState
from taskengine_core.retries import RetrySettings
from taskengine_core.settings import RuntimeSettings
from taskengine_core.steps import Outcome
from taskengine_dispatcher.outcomes import Running, ended, ended_now

REF = JobRef(UUID(int=1), 1, "alice", 4, JobState.RUNNING)
REF_AT = datetime(2025, 1, 1, tzinfo=UTC)
FAILED = Outcome("failed", "exit 1", 1)


def settings(**values: int) -> RetrySettings:
    folded = RuntimeSettings()
    for n, (name, value) in enumerate(values.items(), start=1):
        folded.apply(
            SettingChanged(id=UUID(int=9), version=n, at=REF_AT, name=name, value=str(value))
        )
    return RetrySettings.of(folded)


def end(
    attempt: int, retry: RetryPolicy | None = None, outcome: Outcome = FAILED, **values: int
) -> JobEvent:
    running = Running(
        ref=REF,
        workflow="w",
        priority=5,
        attempt=attempt,
        run=RunSpec(retry=retry),
        concurrency_key="key",
    )
    return ended(running, outcome, settings(**values))


def delay(event: JobRetryScheduled) -> float:
    return (event.retry_at - event.at).total_seconds()


def test_success_and_timeout_end_the_job_whatever_its_retries():
    assert isinstance(end(1, outcome=Outcome("succeeded", "")), JobSucceeded)
    timed_out = Outcome("timed_out", "slow", timeout=3.0)
    assert isinstance(end(1, RetryPolicy(max_retries=5), outcome=timed_out), JobTimedOut)


def test_without_a_policy_the_settings_decide():
    retry = end(3, retry_limit=3, retry_delay=7)
    assert isinstance(retry, JobRetryScheduled) and delay(retry) == pytest.approx(7, abs=0.1)
    assert retry.concurrency_key == "key" and retry.attempt == 3
    assert isinstance(end(4, retry_limit=3), JobFailed)


@pytest.mark.parametrize(
    ("backoff", "expected"),
    [("fixed", [2, 2, 2, 2]), ("linear", [2, 4, 6, 8])],
)
def test_fixed_and_linear_backoff_from_retry_delay(backoff, expected):
    policy = RetryPolicy(max_retries=4, backoff=backoff)
    delays = [delay(end(n, policy, retry_delay=2)) for n in range(1, 5)]
    assert delays == pytest.approx(expected, abs=0.1)
    assert isinstance(end(5, policy, retry_delay=2), JobFailed)


def test_exponential_jitter_stays_under_a_doubling_bound_and_the_cap():
    policy = RetryPolicy(max_retries=10, backoff="exponential_jitter")
    for n in range(1, 11):
        bound = min(2 * 2 ** (n - 1), 20)
        delays = [delay(end(n, policy, retry_delay=2, retry_max_delay=20)) for _ in range(30)]
        assert all(0 <= d <= bound + 0.1 for d in delays), (n, delays)
        assert max(delays) > bound / 4  # jitter spreads over the range, not stuck at 0


def test_a_policy_of_no_retries_fails_at_once_even_if_the_settings_allow_more():
    assert isinstance(end(1, RetryPolicy(max_retries=0), retry_limit=5), JobFailed)


def test_a_transient_only_policy_fails_a_plain_failure_at_once_and_retries_a_lost_attempt():
    policy = RetryPolicy(max_retries=3, backoff="exponential_jitter", transient_only=True)
    assert isinstance(end(1, policy), JobFailed)
    lost = Outcome("failed", "lost: the dispatcher running it stopped", transient="lost")
    retry = end(1, policy, outcome=lost)
    assert isinstance(retry, JobRetryScheduled) and retry.transient == "lost"
    assert isinstance(end(4, policy, outcome=lost), JobFailed)  # out of retries all the same


def test_a_lost_attempt_of_a_job_without_a_policy_is_retried_like_any_failure():
    lost = Outcome("failed", "lost", transient="lost")
    assert isinstance(end(1, outcome=lost, retry_limit=1), JobRetryScheduled)
    assert isinstance(end(2, outcome=lost, retry_limit=1), JobFailed)


def work_task(**fields) -> Job:  # type: ignore[no-untyped-def]
    submitted = JobSubmitted(
        id=REF.id,
        version=1,
        at=REF_AT,
        job_id=1,
        client="alice",
        workflow="echo",
        parameters={},
        priority=5,
        run_at=REF_AT,
        state="queued",
        run=RunSpec(
            kind="worker",
            resources=Resources(memory="1Gi"),
            retry=RetryPolicy(max_retries=2, backoff="exponential_jitter", transient_only=True),
        ),
        dialect=DIALECT,
        attributes={"resource_requirements": {"memory": "1Gi"}},
    )
    job = Job.started(submitted)
    for name, value in fields.items():
        setattr(job, name, value)
    return job


def test_a_work_task_whose_worker_vanished_is_requeued_as_lost_until_its_retries_are_spent():
    reason = "lost: the worker exited (code -9) without a final report"
    lost = Outcome("failed", reason, exit_code=-9, transient="lost")
    job = work_task(state=JobState.RUNNING, version=4, attempt=1)
    retry = ended_now(job, lost, settings(retry_delay=0), [])
    assert isinstance(retry, JobRetryScheduled) and retry.transient == "lost"
    assert retry.reason == reason
    assert retry.version == 5 and retry.memory is None
    spent = work_task(state=JobState.RUNNING, version=9, attempt=3, retries=2)
    failed = ended_now(spent, lost, settings(), [])
    assert isinstance(failed, JobFailed) and failed.metadata == {"exit_code": -9}


def test_a_work_task_fails_a_plain_failure_at_once_and_ends_a_timeout_timed_out():
    job = work_task(state=JobState.RUNNING, version=4, attempt=1)
    assert isinstance(ended_now(job, FAILED, settings(), []), JobFailed)
    timed_out = ended_now(job, Outcome("timed_out", "slow", timeout=3.0), settings(), [])
    assert isinstance(timed_out, JobTimedOut) and timed_out.timeout == 3.0
