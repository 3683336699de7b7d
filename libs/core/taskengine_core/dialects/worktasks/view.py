"""A work task as the seed shows it: the work-task object (`view`) and what each job event
changes in it (`update`, for the WebSocket feed)."""

from __future__ import annotations

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
)

from taskengine_core.clients import mask_values
from taskengine_core.dialects.worktasks.status import status_named, status_of
from taskengine_core.dialects.worktasks.submission import DEFAULT_MAX_RETRIES, DEFAULT_PRIORITY
from taskengine_core.jobs import FINAL_STATES, Job, JobState, state_after
from taskengine_core.timestamps import iso


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
