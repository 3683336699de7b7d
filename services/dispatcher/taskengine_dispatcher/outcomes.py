"""How an attempt ends: the event the dispatcher appends for an attempt's outcome."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from taskengine_contracts.events import (
    JobEvent,
    JobFailed,
    JobRetryScheduled,
    JobSucceeded,
    JobTimedOut,
    RetryPolicy,
)
from taskengine_core import worktasks
from taskengine_core.jobs import Job, JobRef, advance
from taskengine_core.settings import RuntimeSettings
from taskengine_core.steps import Outcome
from taskengine_core.tasks import backoff_delay


def ended(
    ref: JobRef,
    workflow_name: str,
    priority: int,
    attempt: int,
    callbacks: list[str],
    outcome: Outcome,
    settings: RuntimeSettings,
    custom_data: object = None,
    retry: RetryPolicy | None = None,
    concurrency_key: str | None = None,
) -> JobEvent:
    """The event ending an attempt: success, timeout, a retry while attempts remain, or failure.

    A job with its own retry policy is retried up to `retry.max_retries` times, after a delay
    from its backoff strategy (a `transient_only` policy retries only a transient outcome,
    e.g. a lost attempt); others up to the `retry_limit` setting after `retry_delay`."""
    common = {"workflow": workflow_name, "attempt": attempt}
    final = {"callbacks": callbacks, "custom_data": custom_data}
    if outcome.status == "succeeded":
        return advance(ref, JobSucceeded, **final, **common)
    if outcome.status == "timed_out":
        return advance(ref, JobTimedOut, timeout=outcome.timeout, **final, **common)
    limit = settings.retry_limit if retry is None else retry.max_retries
    retried = retry is None or not retry.transient_only or outcome.transient is not None
    if retried and attempt <= limit:
        delay = backoff_delay(
            "fixed" if retry is None else retry.backoff,
            attempt,
            base=settings.retry_delay,
            cap=settings.retry_cap,
        )
        return advance(
            ref,
            JobRetryScheduled,
            priority=priority,
            retry_at=datetime.now(UTC) + timedelta(seconds=delay),
            reason=outcome.reason,
            exit_code=outcome.exit_code,
            concurrency_key=concurrency_key,
            transient=outcome.transient,
            **common,
        )
    return advance(
        ref,
        JobFailed,
        reason=outcome.reason,
        exit_code=outcome.exit_code,
        **final,
        **common,
    )


def ended_now(
    job: Job,
    outcome: Outcome,
    settings: RuntimeSettings,
    callbacks: list[str],
    custom_data: object = None,
    max_memory: str = "16Gi",
) -> JobEvent:
    """The event ending the job's current attempt, decided on the job as it now stands (its
    worker vanished or timed out, its dispatcher restarted). A work task's failure is planned
    as a worker's report of it would be."""
    if job.dialect == worktasks.DIALECT and outcome.status == "failed":
        metadata = {} if outcome.exit_code is None else {"exit_code": outcome.exit_code}
        message = outcome.reason  # `failed` puts the transient's name before it
        if outcome.transient:
            message = message.removeprefix(f"{outcome.transient}: ")
        events, _ = worktasks.failed(
            job,
            "failed",
            outcome.transient,
            message,
            now=datetime.now(UTC),
            metadata=metadata,
            retry_delay=settings.retry_delay,
            retry_max_delay=settings.retry_cap,
            max_memory=max_memory,
        )
        return events[0]
    return ended(
        job.ref,
        job.workflow,
        job.priority,
        job.attempt,
        callbacks,
        outcome,
        settings,
        custom_data,
        job.retry,
        job.concurrency_key,
    )
