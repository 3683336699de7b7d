"""A worker's status reports on its work task, planned into the job's next event.

`plan_report` answers the seed's `POST /api/worktasks/<id>`: `executing`, `completed`,
`cancelled`, or a failure (`failed`, `timeout`) that the core's retry rule (retries.py) either
retries, when the report names a transient cause (in its metadata or as a word of its
error message), or ends the job with.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from taskengine_contracts.events import (
    JobCancelled,
    JobEvent,
    JobExecuting,
    JobRetryScheduled,
    JobSucceeded,
)

from taskengine_core.attempts import TRANSIENT
from taskengine_core.dialects.worktasks.status import status_of
from taskengine_core.dialects.worktasks.submission import DEFAULT_MAX_RETRIES, InvalidWorkTask
from taskengine_core.errors import IllegalTransition
from taskengine_core.jobs import FINAL_STATES, Job, JobState, advance
from taskengine_core.retries import RetrySettings, after_failure
from taskengine_core.steps import Outcome

REPORTS = ("executing", "completed", "failed", "timeout", "cancelled")


class ReportRefused(IllegalTransition):
    """A worker report the lifecycle forbids (409)."""


MESSAGE_SCAN = 4096
"""How much of an error message is searched for a transient cause's word."""
_WORD = re.compile(r"\w+")


def transient_reason(metadata: dict[str, Any], error_message: str | None) -> str | None:
    """The transient failure a report names: `metadata.reason`, else the first of the
    documented words (`OOMKilled`, `Evicted`, `DeadlineExceeded`, case as written) standing
    as a whole word in the error message's first `MESSAGE_SCAN` characters ("Pod OOMKilled
    (137)" names one, "NotOOMKilledX" does not)."""
    reason = metadata.get("reason")
    if isinstance(reason, str) and reason in TRANSIENT:
        return reason
    if not error_message:
        return None
    head = error_message[:MESSAGE_SCAN]
    words = _WORD.findall(head)
    if len(error_message) > MESSAGE_SCAN and _WORD.match(error_message, MESSAGE_SCAN):
        words = words[:-1]  # cut inside a word: not a whole word
    return next((word for word in words if word in TRANSIENT), None)


def plan_report(
    job: Job,
    status: str,
    *,
    by: str,
    now: datetime,
    output_location: str | None = None,
    metadata: dict[str, Any] | None = None,
    error_message: str | None = None,
    attempt: int | None = None,
    retry_delay: float = 5,
    retry_max_delay: float = 600,
    max_memory: str = "16Gi",
) -> tuple[list[JobEvent], str]:
    """The events a worker's report appends and the seed's answer (`updated` or
    `requeued_for_retry`). `attempt` is the reporting worker's attempt when it is known (its
    token says): a report from an attempt that is over is refused."""
    metadata = metadata or {}
    if status not in REPORTS:
        raise InvalidWorkTask(f"status must be one of {', '.join(REPORTS)}")
    if job.state in FINAL_STATES:
        raise ReportRefused(f"work task {job.job_id} is already {status_of(job)}")
    if attempt is not None and (attempt != job.attempt or job.state != JobState.RUNNING):
        raise ReportRefused(
            f"attempt {attempt} of work task {job.job_id} is over (now {status_of(job)},"
            f" attempt {job.attempt})"
        )
    if status == "cancelled":
        return [advance(job.ref, JobCancelled, at=now, reason="cancelled by its worker", by=by)], (
            "updated"
        )
    if job.state != JobState.RUNNING:
        raise ReportRefused(f"work task {job.job_id} is {status_of(job)}: no worker runs it")
    if status == "executing":
        if job.executing:
            return [], "updated"  # said before: not news
        return [
            advance(job.ref, JobExecuting, at=now, attempt=job.attempt, by=by, metadata=metadata)
        ], ("updated")
    if status == "completed":
        succeeded = advance(
            job.ref,
            JobSucceeded,
            at=now,
            workflow=job.workflow,
            attempt=job.attempt,
            output_location=output_location,
            metadata=metadata,
        )
        return [succeeded], "updated"
    transient = transient_reason(metadata, error_message)
    message = error_message or transient_reason(metadata, None) or f"the worker reported {status}"
    reason = f"{transient}: {message}" if transient and message != transient else message
    timed_out = status == "timeout"
    outcome = Outcome(
        "timed_out" if timed_out else "failed",
        reason,
        timeout=(job.timeout or 0.0) if timed_out else 0.0,
        transient=transient,
    )
    settings = RetrySettings(DEFAULT_MAX_RETRIES, retry_delay, retry_max_delay, max_memory)
    event = after_failure(
        job.ref,
        outcome,
        job.run,
        settings,
        workflow=job.workflow,
        priority=job.priority,
        attempt=job.attempt,
        concurrency_key=job.concurrency_key,
        memory=job.memory,
        metadata=metadata,
        now=now,
    )
    return [event], "requeued_for_retry" if isinstance(event, JobRetryScheduled) else "updated"
