"""The one retry rule: which failure kinds a job's policy retries, after which backoff, and the
memory a retry after OOMKilled runs with; the same for every dialect."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from uuid import UUID

import pytest
from taskengine_contracts.events import (
    JobFailed,
    JobRetryScheduled,
    JobTimedOut,
    Resources,
    RetryPolicy,
    RunSpec,
)
from taskengine_core.jobs import JobRef, JobState
from taskengine_core.retries import (
    RetrySettings,
    after_failure,
    backoff_delay,
    kind_of,
    raised_memory,
    retried,
)
from taskengine_core.steps import Outcome

NOW = datetime(2030, 1, 1, tzinfo=UTC)
REF = JobRef(UUID(int=1), 1, "acme", 4, JobState.RUNNING)
SETTINGS = RetrySettings(limit=3, delay=5, cap=600, max_memory="4Gi")
TRANSIENT_ONLY = RetryPolicy(max_retries=2, backoff="exponential_jitter", transient_only=True)
OOM = Outcome("failed", "OOMKilled: out of memory", 137, transient="OOMKilled")
PLAIN = Outcome("failed", "exit 1", 1)


def end(outcome: Outcome, run: RunSpec, attempt: int = 1, **fields):  # type: ignore[no-untyped-def]
    return after_failure(
        REF, outcome, run, SETTINGS, workflow="w", priority=5, attempt=attempt, now=NOW, **fields
    )


def test_each_failure_has_one_kind():
    assert kind_of(OOM) == "transient"
    assert kind_of(Outcome("failed", "lost", transient="lost")) == "lost"
    assert kind_of(Outcome("timed_out", "slow", timeout=3)) == "timeout"
    assert kind_of(PLAIN) == "other"


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (None, {"transient": True, "lost": True, "timeout": False, "other": True}),
        (
            RetryPolicy(max_retries=1),
            {"transient": True, "lost": True, "timeout": False, "other": True},
        ),
        (TRANSIENT_ONLY, {"transient": True, "lost": True, "timeout": False, "other": False}),
    ],
)
def test_a_predicate_per_kind_decides_under_the_jobs_policy(policy, expected):
    assert {kind: retried(kind, policy) for kind in expected} == expected


def test_a_retry_after_oomkilled_raises_the_runs_memory_up_to_the_cap():
    run = RunSpec(kind="worker", resources=Resources(memory="2Gi"), retry=TRANSIENT_ONLY)
    retry = end(OOM, run)
    assert isinstance(retry, JobRetryScheduled) and retry.memory == "3072Mi"
    again = end(OOM, run, attempt=2, memory=retry.memory)
    assert isinstance(again, JobRetryScheduled) and again.memory == "4096Mi"
    assert isinstance(end(OOM, run, attempt=3, memory=again.memory), JobFailed)
    assert end(OOM, RunSpec(retry=TRANSIENT_ONLY)).memory is None  # no limit: none to raise


def test_a_job_without_a_policy_retries_any_failure_up_to_the_setting():
    assert isinstance(end(PLAIN, RunSpec(), attempt=3), JobRetryScheduled)
    failed = end(PLAIN, RunSpec(), attempt=4, callbacks=["http://h"], custom_data={"a": 1})
    assert isinstance(failed, JobFailed) and failed.exit_code == 1
    assert (failed.callbacks, failed.custom_data) == (["http://h"], {"a": 1})


def test_an_exceeded_deadline_or_a_timeout_ends_timed_out():
    deadline = Outcome("failed", "DeadlineExceeded: too slow", transient="DeadlineExceeded")
    ended = end(deadline, RunSpec(timeout=60, retry=RetryPolicy(max_retries=0)))
    assert isinstance(ended, JobTimedOut) and ended.timeout == 60
    slow = end(Outcome("timed_out", "slow", timeout=3.0), RunSpec(timeout=60))
    assert isinstance(slow, JobTimedOut) and slow.timeout == 3.0


def test_memory_is_raised_by_half_in_whole_mebibytes_at_most_the_cap():
    assert raised_memory("2Gi", "16Gi") == "3072Mi"
    assert raised_memory("12Gi", "16Gi") == "16384Mi"


def test_fixed_backoff_waits_the_base_capped():
    assert [backoff_delay("fixed", retry, 5, 60) for retry in (1, 2, 10)] == [5, 5, 5]
    assert backoff_delay("fixed", 1, 90, 60) == 60


def test_linear_backoff_grows_by_the_base_up_to_the_cap():
    assert [backoff_delay("linear", retry, 5, 12) for retry in (1, 2, 3, 4)] == [5, 10, 12, 12]


def test_exponential_jitter_is_uniform_below_a_doubling_bound():
    rng = random.Random(42)
    for retry, bound in [(1, 2), (2, 4), (3, 8), (4, 16), (5, 32), (6, 50), (12, 50)]:
        delays = [backoff_delay("exponential_jitter", retry, 2, 50, rng) for _ in range(4000)]
        assert all(0 <= delay <= bound for delay in delays)
        assert max(delays) > 0.97 * bound
        assert sum(delays) / len(delays) == pytest.approx(bound / 2, rel=0.05)


def test_exponential_jitter_with_the_same_seed_repeats_itself():
    def draw(seed):
        return [backoff_delay("exponential_jitter", 3, 1, 60, random.Random(seed)) for _ in "ab"]

    assert draw(1) == draw(1)


def test_exponential_jitter_survives_huge_retry_numbers():
    assert 0 <= backoff_delay("exponential_jitter", 100_000, 1e6, 300) <= 300


def test_backoff_refuses_unknown_strategies_and_nonsense_numbers():
    with pytest.raises(ValueError, match="quadratic"):
        backoff_delay("quadratic", 1, 1, 10)
    for retry, base, cap in [(0, 1, 10), (1, -1, 10), (1, 1, -10)]:
        with pytest.raises(ValueError):
            backoff_delay("fixed", retry, base, cap)
