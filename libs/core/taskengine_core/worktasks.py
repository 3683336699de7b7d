"""Work tasks (the `/api/worktasks` dialect): one job of the core seen through this dialect.

A work task is a job whose `attributes` keep the request (type, project, spec, resources, data
access, its priority as given). Its retries are for transient failures only (`OOMKilled`,
`Evicted`, `DeadlineExceeded`, or an attempt lost with its worker), each after a full-jitter
backoff; an OOM retry raises the memory limit ×1.5 up to a cap. A worker's status report is
planned here into the job's next event, so the gateway only validates, plans and commits.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import re
from datetime import datetime, timedelta
from typing import Any

from taskengine_contracts.events import (
    JobCancelled,
    JobEvent,
    JobExecuting,
    JobFailed,
    JobRetryScheduled,
    JobSucceeded,
    JobTimedOut,
)

from taskengine_core.errors import DomainError, IllegalTransition
from taskengine_core.jobs import Job, JobState, advance
from taskengine_core.tasks import backoff_delay

TYPES = ("pipeline_execution", "ml_training", "ml_inference", "digital_twin_update")
REPORTS = ("executing", "completed", "failed", "timeout", "cancelled")
TRANSIENT = ("OOMKilled", "Evicted", "DeadlineExceeded")
LOST = "lost"
"""An attempt whose worker vanished without a final report: retried like a transient one."""
DEFAULT_MAX_RETRIES = 3
MAX_MAX_RETRIES = 100

STATUS = {
    JobState.SCHEDULED: "scheduled",
    JobState.QUEUED: "queued",
    JobState.ADMITTED: "queued",
    JobState.RETRY_WAIT: "queued",
    JobState.PAUSED: "queued",
    JobState.SUCCEEDED: "completed",
    JobState.FAILED: "failed",
    JobState.TIMED_OUT: "timeout",
    JobState.CANCELLED: "cancelled",
    JobState.BROKEN: "cancelled",
}
"""The seed's statuses; a running job is `spawned` until its worker reports `executing`."""


class InvalidWorkTask(DomainError):
    """A request this dialect refuses (400)."""


class ReportRefused(IllegalTransition):
    """A worker report the lifecycle forbids (409)."""


def status_of(job: Job) -> str:
    if job.state == JobState.RUNNING:
        return "executing" if job.executing else "spawned"
    return STATUS[job.state]


def engine_priority(priority: object) -> int:
    """This dialect's priority (a number, higher = more urgent, default 1) on the engine's
    scale (1 = most urgent … 10): the default lands on the engine's default, 5."""
    if isinstance(priority, bool) or not isinstance(priority, (int, float)):
        raise InvalidWorkTask("priority must be a number (higher = more urgent)")
    if not math.isfinite(priority):
        raise InvalidWorkTask("priority must be a finite number")
    return max(1, min(10, 6 - round(priority)))


def worker_token(key: str, job_id: int, attempt: int) -> str:
    """The token the worker of one attempt reports with: derived from the engine's signing key
    (TASKENGINE_WEBHOOK_KEY), so the gateway checks it without storing it; it is refused once
    its attempt is over."""
    digest = hmac.new(key.encode(), f"worker:{job_id}:{attempt}".encode(), hashlib.sha256)
    return "wt_" + base64.urlsafe_b64encode(digest.digest()).decode().rstrip("=")


def token_fits(token: str, key: str, job_id: int, attempt: int) -> bool:
    return bool(key) and hmac.compare_digest(token, worker_token(key, job_id, attempt))


# --- memory quantities ------------------------------------------------------------------------

_UNITS = {
    "": 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}
_QUANTITY = re.compile(r"([0-9]+(?:\.[0-9]+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?")


def memory_bytes(quantity: str) -> int:
    """A Kubernetes memory quantity (`512Mi`, `2Gi`, `1G`, `1048576`) in bytes."""
    match = _QUANTITY.fullmatch(str(quantity).strip())
    if not match:
        raise InvalidWorkTask(f"memory {quantity!r} is not a quantity like 512Mi or 2Gi")
    return int(float(match.group(1)) * _UNITS[match.group(2) or ""])


def raised_memory(quantity: str, cap: str) -> str:
    """The memory limit after an OOM kill: ×1.5, at most `cap`, in whole Mi."""
    raised = min(memory_bytes(quantity) * 3 // 2, memory_bytes(cap))
    return f"{math.ceil(raised / 2**20)}Mi"


# --- worker reports ---------------------------------------------------------------------------


def transient_reason(metadata: dict[str, Any], error_message: str | None) -> str | None:
    """The transient failure a report names: `metadata.reason`, or the word alone as the
    error message (never found by searching inside text)."""
    reason = metadata.get("reason")
    if isinstance(reason, str) and reason in TRANSIENT:
        return reason
    if error_message and error_message.strip() in TRANSIENT:
        return error_message.strip()
    return None


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
    if job.state in (JobState.SUCCEEDED, JobState.FAILED, JobState.TIMED_OUT) or job.state in (
        JobState.CANCELLED,
        JobState.BROKEN,
    ):
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
    common = {"workflow": job.workflow, "attempt": job.attempt}
    if status == "executing":
        if job.executing:
            return [], "updated"  # said before: not news
        return [
            advance(job.ref, JobExecuting, at=now, attempt=job.attempt, by=by, metadata=metadata)
        ], ("updated")
    if status == "completed":
        event = advance(
            job.ref,
            JobSucceeded,
            at=now,
            output_location=output_location,
            metadata=metadata,
            **common,
        )
        return [event], "updated"
    return failed(
        job,
        status,
        transient_reason(metadata, error_message),
        error_message or f"the worker reported {status}",
        now=now,
        metadata=metadata,
        retry_delay=retry_delay,
        retry_max_delay=retry_max_delay,
        max_memory=max_memory,
    )


def failed(
    job: Job,
    status: str,
    transient: str | None,
    message: str,
    *,
    now: datetime,
    metadata: dict[str, Any] | None = None,
    retry_delay: float = 5,
    retry_max_delay: float = 600,
    max_memory: str = "16Gi",
) -> tuple[list[JobEvent], str]:
    """A failed attempt of a work task: requeued while a transient failure has retries left,
    else ended `failed` (or `timeout` for a deadline)."""
    limit = job.retry.max_retries if job.retry else DEFAULT_MAX_RETRIES
    common = {"workflow": job.workflow, "attempt": job.attempt}
    if transient and job.retries < limit:
        memory = None
        if transient == "OOMKilled" and (current := job.memory or _requested_memory(job)):
            memory = raised_memory(current, max_memory)
        delay = backoff_delay(
            "exponential_jitter", job.retries + 1, base=retry_delay, cap=retry_max_delay
        )
        event = advance(
            job.ref,
            JobRetryScheduled,
            at=now,
            priority=job.priority,
            retry_at=now + timedelta(seconds=delay),
            reason=f"{transient}: {message}" if message != transient else transient,
            concurrency_key=job.concurrency_key,
            transient=transient,
            memory=memory,
            **common,
        )
        return [event], "requeued_for_retry"
    if status == "timeout" or transient == "DeadlineExceeded":
        timeout = job.timeout or 0.0
        return [advance(job.ref, JobTimedOut, at=now, timeout=timeout, **common)], "updated"
    event = advance(job.ref, JobFailed, at=now, reason=message, metadata=metadata or {}, **common)
    return [event], "updated"


def _requested_memory(job: Job) -> str | None:
    resources = job.attributes.get("resource_requirements")
    memory = resources.get("memory") if isinstance(resources, dict) else None
    return str(memory) if memory is not None else None


# --- the seed's view --------------------------------------------------------------------------


def iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat().replace("+00:00", "Z")


def view(job: Job) -> dict[str, Any]:
    """The work-task object of the seed (every response field)."""
    attributes = job.attributes
    resources = dict(attributes.get("resource_requirements") or {})  # type: ignore[call-overload]
    if job.memory:
        resources["memory"] = job.memory
    finished = job.state in (
        JobState.SUCCEEDED,
        JobState.FAILED,
        JobState.TIMED_OUT,
        JobState.CANCELLED,
        JobState.BROKEN,
    )
    return {
        "worktask_id": str(job.job_id),
        "type": attributes.get("type"),
        "status": status_of(job),
        "priority": attributes.get("priority", 1),
        "submitted_at": iso(job.created_at),
        "started_at": iso(job.started_at),
        "completed_at": iso(job.finished_at) if finished else None,
        "project_id": attributes.get("project_id"),
        "task_spec": attributes.get("task_spec"),
        "resource_requirements": resources,
        "data_access": attributes.get("data_access"),
        "error_message": job.failure if job.state != JobState.SUCCEEDED else None,
        "kubernetes_job_name": job.job_name,
        "cluster_name": job.cluster,
        "retry_count": job.retries,
        "max_retries": job.retry.max_retries if job.retry else DEFAULT_MAX_RETRIES,
        "retry_reason": job.retry_reason,
        "output_location": job.output_location,
        "metadata": job.metadata,
    }
