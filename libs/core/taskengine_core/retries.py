"""The one retry rule: what a failed attempt of any job leads to.

A failure is of one kind: `transient` (OOMKilled, Evicted, DeadlineExceeded: the place it ran
failed it), `lost` (its runner vanished), `timeout` (it ran past its timeout), `unstartable`
(it was never provisioned) or `other`. The
job's retry policy (set from its dialect at submission, in its run spec) decides which kinds
are retried and how often: a timeout never, transient and lost failures while retries remain,
other and unstartable failures unless the policy retries transient failures only. A job
without a policy retries any failure up to the `retry_limit` setting. A retry after OOMKilled
raises the memory limit ×1.5, up to a cap.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from taskengine_contracts.events import (
    FailureKind,
    JobEvent,
    JobFailed,
    JobRetryScheduled,
    JobTimedOut,
    RetryPolicy,
    RunSpec,
)

from taskengine_core.attempts import LOST
from taskengine_core.jobs import JobRef, advance
from taskengine_core.quotas import memory_bytes
from taskengine_core.settings import RuntimeSettings
from taskengine_core.steps import Outcome

Kind = FailureKind
DEFAULT_MAX_MEMORY = "16Gi"
OOM = "OOMKilled"
DEADLINE = "DeadlineExceeded"
"""A transient failure that, when not retried, ends the job timed out."""

_RNG = random.Random()


@dataclass(frozen=True)
class RetrySettings:
    """The engine's side of the rule: retries of a job without a policy (`retry_limit`), the
    backoff's base (`retry_delay`) and cap, and the highest memory a retry may raise to."""

    limit: int
    delay: float
    cap: float
    max_memory: str = DEFAULT_MAX_MEMORY

    @classmethod
    def of(cls, settings: RuntimeSettings, max_memory: str = DEFAULT_MAX_MEMORY) -> RetrySettings:
        return cls(settings.retry_limit, settings.retry_delay, settings.retry_cap, max_memory)


def kind_of(outcome: Outcome) -> Kind:
    if outcome.transient == LOST:
        return "lost"
    if outcome.transient:
        return "transient"
    if outcome.unstartable:
        return "unstartable"
    return "timeout" if outcome.status == "timed_out" else "other"


RETRIED: dict[Kind, Callable[[RetryPolicy | None], bool]] = {
    "transient": lambda policy: True,
    "lost": lambda policy: True,
    "timeout": lambda policy: False,
    "other": lambda policy: policy is None or not policy.transient_only,
    "unstartable": lambda policy: policy is None or not policy.transient_only,
}
"""Whether a failure of each kind is retried under a policy (None: the settings')."""


def retried(kind: Kind, policy: RetryPolicy | None) -> bool:
    return RETRIED[kind](policy)


def after_failure(
    ref: JobRef,
    outcome: Outcome,
    run: RunSpec,
    settings: RetrySettings,
    *,
    workflow: str,
    priority: int,
    attempt: int,
    concurrency_key: str | None = None,
    memory: str | None = None,
    callbacks: list[str] | None = None,
    custom_data: object = None,
    metadata: dict[str, object] | None = None,
    now: datetime | None = None,
) -> JobEvent:
    """The event ending attempt `attempt` that failed or timed out with `outcome`: a retry
    while the kind is retried and retries remain (`attempt` - 1 were retried before), else
    the job's end, timed out for a timeout or an exceeded deadline, failed otherwise.
    `memory` is the limit the attempt ran with when a retry raised it."""
    now = now or datetime.now(UTC)
    policy = run.retry
    limit = settings.limit if policy is None else policy.max_retries
    common = {"workflow": workflow, "attempt": attempt}
    final = {"callbacks": callbacks or [], "custom_data": custom_data}
    if retried(kind_of(outcome), policy) and attempt <= limit:
        delay = backoff_delay(
            "fixed" if policy is None else policy.backoff,
            attempt,
            base=settings.delay,
            cap=settings.cap,
        )
        return advance(
            ref,
            JobRetryScheduled,
            at=now,
            priority=priority,
            retry_at=now + timedelta(seconds=delay),
            reason=outcome.reason,
            exit_code=outcome.exit_code,
            concurrency_key=concurrency_key,
            transient=outcome.transient,
            memory=raised(outcome, memory or run.resources.memory, settings.max_memory),
            **common,
        )
    if outcome.status == "timed_out" or outcome.transient == DEADLINE:
        timeout = outcome.timeout or run.timeout or 0.0
        return advance(ref, JobTimedOut, at=now, timeout=timeout, **final, **common)
    return advance(
        ref,
        JobFailed,
        at=now,
        reason=outcome.reason,
        failure=kind_of(outcome),
        exit_code=outcome.exit_code,
        metadata=metadata or {},
        **final,
        **common,
    )


def raised(outcome: Outcome, memory: str | None, cap: str) -> str | None:
    """The memory limit of the attempt retrying `outcome`: raised after OOMKilled (when the
    job had a limit), else unchanged (None)."""
    if outcome.transient != OOM or not memory:
        return None
    return raised_memory(memory, cap)


def raised_memory(quantity: str, cap: str) -> str:
    """The memory limit after an OOM kill: ×1.5, at most `cap`, in whole Mi."""
    raised = min(memory_bytes(quantity) * 3 // 2, memory_bytes(cap))
    return f"{math.ceil(raised / 2**20)}Mi"


def backoff_delay(
    strategy: str, retry: int, base: float, cap: float, rng: random.Random | None = None
) -> float:
    """Seconds before retry number `retry` (1 = the first retry), at most `cap`.

    fixed: base; linear: base * retry; exponential_jitter ("full jitter"): uniform between 0
    and base * 2 ** (retry - 1).
    """
    if retry < 1 or base < 0 or cap < 0:
        raise ValueError(f"need retry >= 1, base >= 0, cap >= 0; got {retry}, {base}, {cap}")
    if strategy == "fixed":
        return min(cap, base)
    if strategy == "linear":
        return min(cap, base * retry)
    if strategy == "exponential_jitter":
        bound = min(cap, base * 2.0 ** min(retry - 1, 1000))
        return (rng or _RNG).uniform(0, bound)
    raise ValueError(f"backoff strategy {strategy!r} is not exponential_jitter, linear or fixed")
