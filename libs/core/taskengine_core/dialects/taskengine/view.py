"""A job as the Task Engine dialect shows it: from its fold (`job_view`) or its read-model row
(`row_view`), with the seed's timestamps (`stamp`)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from taskengine_core.clients import mask_secrets, mask_values
from taskengine_core.dialects.taskengine.status import FAILED, QUEUE_STATE
from taskengine_core.jobs import Job, JobState


def stamp(moment: datetime) -> str:
    """The seed's timestamps: UTC, milliseconds, `Z`."""
    return (
        moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    )


def row_view(row: dict[str, Any]) -> dict[str, Any]:
    """A job of the `rm_jobs` read model in the seed's list shape."""
    state = JobState(row["state"])
    return {
        "id": row["job_id"],
        "client": row["client"],
        "workflow": row["workflow"],
        "priority": row["priority"],
        "position": row["position"],
        "created_at": stamp(row["created_at"]),
        "updated_at": stamp(row["updated_at"]),
        "queue_state": QUEUE_STATE[state][0],
        "parameters": mask_values(row["parameters"]),
        "failed": state in FAILED,
        "run_at": stamp(row["run_at"]),
    }


def job_view(job: Job, position: int) -> dict[str, Any]:
    """The job in the seed's shape; `position` is its place in the queue (0: not waiting)."""
    queue_state, _ = QUEUE_STATE[job.state]
    return {
        "id": job.job_id,
        "client": job.client,
        "workflow": job.workflow,
        "priority": job.priority,
        "position": position,
        "top_of_queue": position == 1,
        "parameters": mask_values(job.parameters),
        "created_at": stamp(job.created_at),
        "updated_at": stamp(job.updated_at),
        "queue_state": queue_state,
        "failed": job.failed,
        "run_at": stamp(job.run_at),
        "semaphore_url": job.semaphore_url and mask_secrets(job.semaphore_url),
    }
