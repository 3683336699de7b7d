"""How an attempt ends: success, timeout, a retry with the job's backoff, or failure when the
job's retries are spent (its own policy, or the `retry_limit` / `retry_delay` settings)."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import UUID

import pytest
from taskengine_contracts.events import (
    JobFailed,
    JobRetryScheduled,
    JobSucceeded,
    JobTimedOut,
    RetryPolicy,
    SettingChanged,
)
from taskengine_core.jobs import JobRef, JobState
from taskengine_core.settings import RuntimeSettings
from taskengine_dispatcher.dispatcher import ended
from taskengine_dispatcher.local import Outcome

REF = JobRef(UUID(int=1), 1, "alice", 4, JobState.RUNNING)
REF_AT = datetime(2025, 1, 1, tzinfo=UTC)
FAILED = Outcome("failed", "exit 1", 1)


def settings(**values: int) -> RuntimeSettings:
    folded = RuntimeSettings()
    for n, (name, value) in enumerate(values.items(), start=1):
        folded.apply(
            SettingChanged(id=UUID(int=9), version=n, at=REF_AT, name=name, value=str(value))
        )
    return folded


def end(attempt: int, retry: RetryPolicy | None = None, outcome: Outcome = FAILED, **values):  # type: ignore[no-untyped-def]
    return ended(REF, "w", 5, attempt, [], outcome, settings(**values), None, retry, "key")


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
