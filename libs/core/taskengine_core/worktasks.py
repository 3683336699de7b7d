"""Work tasks (the `/api/worktasks` dialect): one job of the core seen through this dialect.

A work task is a job run by a remote worker (run kind `worker`, with its resources and storage
credentials), whose `attributes` keep the request for its views (type, project, spec,
resources, data access, its priority as given). Its retry policy, set at submission, retries
transient failures only (`OOMKilled`, `Evicted`, `DeadlineExceeded`, or an attempt lost with
its worker), each after a full-jitter backoff; the core's retry rule (retries.py) applies it,
raising the memory limit after OOMKilled. A worker's status report is planned here into the
job's next event, so the gateway only validates, plans and commits.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, overload

from taskengine_contracts.events import (
    JobBroken,
    JobCancelled,
    JobEvent,
    JobExecuting,
    JobFailed,
    JobRetryScheduled,
    JobStarted,
    JobSubmitted,
    JobSucceeded,
    JobTimedOut,
    JobUpdated,
    Resources,
    RetryPolicy,
    RunSpec,
)

from taskengine_core import quotas
from taskengine_core.attempts import TRANSIENT
from taskengine_core.clients import mask_values
from taskengine_core.errors import DomainError, IllegalTransition
from taskengine_core.jobs import FINAL_STATES, Job, JobState, advance, state_after
from taskengine_core.quotas import ResourceLimits, cpu_cores, gpu_count
from taskengine_core.retries import RetrySettings, after_failure
from taskengine_core.steps import Outcome
from taskengine_core.submission import job_submitted

DIALECT = "worktasks"
"""The `dialect` of a work task's job."""
TYPES = ("pipeline_execution", "ml_training", "ml_inference", "digital_twin_update")
REPORTS = ("executing", "completed", "failed", "timeout", "cancelled")
DEFAULT_MAX_RETRIES = 3
MAX_MAX_RETRIES = 100
DEFAULT_PRIORITY = 1
MAX_TIMEOUT = 7 * 24 * 3600
FIELDS = (
    "type",
    "priority",
    "project_id",
    "task_spec",
    "resource_requirements",
    "data_access",
    "max_retries",
)
REQUIRED = ("type", "project_id", "task_spec", "resource_requirements", "data_access")

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
STATUSES = (
    "queued",
    "scheduled",
    "spawned",
    "executing",
    "completed",
    "failed",
    "timeout",
    "cancelled",
)
WAITING = (
    JobState.SCHEDULED,
    JobState.QUEUED,
    JobState.ADMITTED,
    JobState.RETRY_WAIT,
    JobState.PAUSED,
)
"""Accepted but not yet running: the queue of `GET /api/worktasks` and `/api/metrics`."""


class InvalidWorkTask(DomainError):
    """A request this dialect refuses (400)."""


class ReportRefused(IllegalTransition):
    """A worker report the lifecycle forbids (409)."""


def status_of(job: Job) -> str:
    return status_named(job.state, job.executing)


def status_named(state: JobState, executing: bool = False) -> str:
    """The seed's status of a job in `state` (`executing`: its worker said it runs)."""
    if state == JobState.RUNNING:
        return "executing" if executing else "spawned"
    return STATUS[state]


def engine_priority(priority: object) -> int:
    """This dialect's priority (a number, higher = more urgent, default 1) on the engine's
    scale (1 = most urgent … 10): the default lands on the engine's default, 5."""
    if isinstance(priority, bool) or not isinstance(priority, (int, float)):
        raise InvalidWorkTask("priority must be a number (higher = more urgent)")
    if not math.isfinite(priority):
        raise InvalidWorkTask("priority must be a finite number")
    return max(1, min(10, 6 - round(priority)))


# --- memory quantities ------------------------------------------------------------------------


def memory_bytes(quantity: str) -> int:
    """A memory quantity of a request (`512Mi`, `2Gi`) in bytes; `InvalidWorkTask` if it is
    not one."""
    try:
        return quotas.memory_bytes(quantity)
    except ValueError as error:
        raise InvalidWorkTask(str(error)) from None


# --- submissions ------------------------------------------------------------------------------

_SECRET_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


@dataclass(frozen=True)
class Submission:
    """A validated `POST /api/worktasks`: what the work task's `JobSubmitted` carries."""

    workflow: str
    parameters: dict[str, Any]
    priority: int
    """On the engine's scale (see `engine_priority`)."""
    max_retries: int
    timeout: float | None
    attributes: dict[str, Any]

    def submitted(self, job_id: int, client: str, at: datetime) -> JobSubmitted:
        """The work task's job: a remote worker runs its workflow with its resources and
        storage credentials; it retries transient failures only, after a jittered backoff."""
        access = self.attributes["data_access"]
        return job_submitted(
            job_id,
            client,
            at,
            workflow=self.workflow,
            parameters=self.parameters,
            run=RunSpec(
                kind="worker",
                resources=requested(self.attributes["resource_requirements"]),
                secret=access.get("storage_credentials") or None,
                timeout=self.timeout,
                retry=RetryPolicy(
                    max_retries=self.max_retries,
                    backoff="exponential_jitter",
                    transient_only=True,
                ),
            ),
            dialect=DIALECT,
            priority=self.priority,
            attributes=self.attributes,
        )


def requested(resources: dict[str, Any]) -> Resources:
    """`resource_requirements` (as `submission` checked them) as the worker's Job asks for
    them: `gpu` true is one GPU."""
    cpu, memory, gpu = resources.get("cpu"), resources.get("memory"), resources.get("gpu")
    return Resources(
        cpu=None if cpu is None or isinstance(cpu, bool) else str(cpu),
        memory=None if memory is None else str(memory),
        gpu=1 if gpu is True else gpu if isinstance(gpu, int) and gpu > 0 else 0,
    )


def submission(data: dict[str, Any]) -> Submission:
    """Checks a submission (every field of the seed, plus `max_retries`); `InvalidWorkTask`
    names the first field that does not validate. The workflow run is `task_spec.pipeline_id`
    if given, else the type's name; `task_spec.parameters` are its parameters."""
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise InvalidWorkTask(f"unknown field {unknown[0]!r}")
    for field in REQUIRED:
        if data.get(field) is None:
            raise InvalidWorkTask(f"{field} is required")
    if data["type"] not in TYPES:
        raise InvalidWorkTask(f"type must be one of {', '.join(TYPES)}")
    project = data["project_id"]
    if not isinstance(project, str) or not project.strip() or len(project) > 200:
        raise InvalidWorkTask("project_id must be a non-empty string of at most 200 characters")
    spec, resources, access = (
        _object(data, name) for name in ("task_spec", "resource_requirements", "data_access")
    )
    pipeline = spec.get("pipeline_id")
    if pipeline is not None and (not isinstance(pipeline, str) or not pipeline.strip()):
        raise InvalidWorkTask("task_spec.pipeline_id must be a workflow name")
    parameters = spec.get("parameters", {})
    if not isinstance(parameters, dict):
        raise InvalidWorkTask("task_spec.parameters must be an object")
    if resources.get("memory") is not None:
        memory_bytes(resources["memory"])
    for name, parse in (("cpu", cpu_cores), ("gpu", gpu_count)):
        if resources.get(name) is not None:
            try:
                parse(resources[name])
            except ValueError as error:
                raise InvalidWorkTask(f"resource_requirements.{error}") from None
    credentials = access.get("storage_credentials")
    if credentials is not None and not (
        isinstance(credentials, str)
        and len(credentials) <= 253
        and _SECRET_NAME.fullmatch(credentials)
    ):
        raise InvalidWorkTask(
            "data_access.storage_credentials must name a Kubernetes Secret (lower-case letters,"
            " digits, '-' and '.'), never hold credentials"
        )
    priority = data.get("priority", DEFAULT_PRIORITY)
    engine = engine_priority(priority)
    max_retries = data.get("max_retries", DEFAULT_MAX_RETRIES)
    if (
        isinstance(max_retries, bool)
        or not isinstance(max_retries, int)
        or not 0 <= max_retries <= MAX_MAX_RETRIES
    ):
        raise InvalidWorkTask(f"max_retries must be an integer from 0 to {MAX_MAX_RETRIES}")
    return Submission(
        workflow=pipeline if pipeline is not None else data["type"],
        parameters=parameters,
        priority=engine,
        max_retries=max_retries,
        timeout=_timeout(spec.get("timeout")),
        attributes={
            "type": data["type"],
            "project_id": project,
            "task_spec": spec,
            "resource_requirements": resources,
            "data_access": access,
            "priority": priority,
        },
    )


def check_resources(resources: dict[str, Any], limits: ResourceLimits) -> None:
    """Refuses `resource_requirements` (as `submission` checked them) above the limits."""
    problem = limits.problem(
        cpu=cpu_cores(resources["cpu"]) if resources.get("cpu") is not None else 0,
        memory_bytes=memory_bytes(resources["memory"]) if resources.get("memory") else 0,
        gpu=gpu_count(resources["gpu"]) if resources.get("gpu") is not None else 0,
    )
    if problem:
        raise InvalidWorkTask(f"resource_requirements.{problem}")


def _object(data: dict[str, Any], field: str) -> dict[str, Any]:
    value = data[field]
    if not isinstance(value, dict):
        raise InvalidWorkTask(f"{field} must be an object")
    return value


def _timeout(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidWorkTask("task_spec.timeout must be a number of seconds")
    if not 0 < value <= MAX_TIMEOUT:
        raise InvalidWorkTask(f"task_spec.timeout must be from 0 to {MAX_TIMEOUT} seconds")
    return float(value)


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


# --- the seed's view --------------------------------------------------------------------------


def iso(moment: datetime | None) -> str | None:
    """ISO 8601 in UTC, `Z` for the offset."""
    return None if moment is None else moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def view(job: Job, masked: bool = True) -> dict[str, Any]:
    """The work-task object of the seed (every response field, plus what its worker reported:
    `output_location`, `metadata`). Values of secret-looking keys are masked unless `masked`
    is False (for the task's own worker); the `storage_credentials` Secret name is shown
    (only a Secret's name is accepted there)."""
    shown = mask_values if masked else _as_is
    attributes = job.attributes
    resources = _object_copy(attributes.get("resource_requirements"))
    if job.memory:
        resources["memory"] = job.memory
    given_access = _object_copy(attributes.get("data_access"))
    secret_name = given_access.pop("storage_credentials", None)
    access = shown(given_access)
    if secret_name is not None:
        access["storage_credentials"] = secret_name
    return {
        "worktask_id": str(job.job_id),
        "type": attributes.get("type"),
        "status": status_of(job),
        "priority": attributes.get("priority", DEFAULT_PRIORITY),
        "submitted_at": iso(job.created_at),
        "started_at": iso(job.started_at),
        "completed_at": iso(job.finished_at) if job.state in FINAL_STATES else None,
        "project_id": attributes.get("project_id"),
        "task_spec": shown(attributes.get("task_spec")),
        "resource_requirements": shown(resources),
        "data_access": access,
        "error_message": job.failure if job.state != JobState.SUCCEEDED else None,
        "kubernetes_job_name": job.job_name,
        "cluster_name": job.cluster,
        "retry_count": job.retries,
        "max_retries": job.retry.max_retries if job.retry else DEFAULT_MAX_RETRIES,
        "retry_reason": job.retry_reason,
        "output_location": job.output_location,
        "metadata": shown(job.metadata),
    }


@overload
def _as_is(data: dict[str, object]) -> dict[str, object]: ...
@overload
def _as_is(data: object) -> object: ...
def _as_is(data: object) -> object:
    return data


def _object_copy(value: object) -> dict[str, object]:
    """A copy of a JSON object attribute; empty when there is none."""
    return dict(value) if isinstance(value, dict) else {}


def update(event: JobEvent) -> dict[str, Any] | None:
    """What a job event changes in its work task's view: the status after it and the fields it
    sets (`None` values left out); None for an event that changes neither. `started_at` is
    the first attempt's start, as in `view`."""
    if isinstance(event, JobUpdated):
        return None
    changed: dict[str, Any] = {"status": status_named(state_after(event), False)}
    match event:
        case JobSubmitted():
            changed["submitted_at"] = iso(event.at)
        case JobStarted():
            changed["kubernetes_job_name"] = event.job_name
            changed["cluster_name"] = event.cluster
            if event.attempt == 1:
                changed["started_at"] = iso(event.at)
        case JobExecuting():
            changed["status"] = "executing"
        case JobRetryScheduled():
            # Every failed attempt of a work task before this one was retried too.
            changed["retry_count"] = event.attempt
            changed["retry_reason"] = event.transient or event.reason
            changed["error_message"] = event.reason
        case JobFailed():
            changed["error_message"] = event.reason
        case JobTimedOut():
            changed["error_message"] = f"timed out after {event.timeout:g}s"
        case JobSucceeded():
            changed["output_location"] = event.output_location
    if isinstance(event, (JobSucceeded, JobFailed, JobTimedOut, JobCancelled, JobBroken)):
        changed["completed_at"] = iso(event.at)
    return {name: value for name, value in changed.items() if value is not None}
