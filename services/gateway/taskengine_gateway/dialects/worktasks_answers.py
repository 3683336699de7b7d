"""What the work-tasks dialect (seed 000) answers, for the OpenAPI document (see `answers`)."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import Meta

from taskengine_gateway.answers import Answers

AT = "2030-01-31T14:30:00Z"


class WorkTaskFailure(msgspec.Struct):
    """An error: what went wrong."""

    error: str


ANSWERS = Answers(WorkTaskFailure, lambda message: {"error": message})


class QueueLength(msgspec.Struct):
    queue_length: Annotated[int, Meta(description="the client's work tasks waiting")]


class WorkTask(msgspec.Struct):
    """A work task (secret-looking values masked, except for the task's own worker)."""

    worktask_id: str
    type: str | None
    status: Annotated[
        str,
        Meta(
            description="queued, scheduled, spawned, executing, completed, failed, timeout,"
            " cancelled"
        ),
    ]
    priority: Annotated[int, Meta(description="1 (lowest) to 10 (highest)")]
    submitted_at: str | None
    started_at: str | None
    completed_at: str | None
    project_id: str | None
    task_spec: Any
    resource_requirements: dict[str, Any]
    data_access: dict[str, Any]
    error_message: str | None
    kubernetes_job_name: str | None
    cluster_name: str | None
    retry_count: int
    max_retries: int
    retry_reason: str | None
    output_location: str | None
    metadata: Any


WORKTASK = {
    "worktask_id": "42",
    "type": "pipeline_execution",
    "status": "queued",
    "priority": 5,
    "submitted_at": AT,
    "started_at": None,
    "completed_at": None,
    "project_id": "orbit",
    "task_spec": {"pipeline_id": "echo", "parameters": {"message": "hello"}},
    "resource_requirements": {"cpu": "500m", "memory": "512Mi"},
    "data_access": {},
    "error_message": None,
    "kubernetes_job_name": None,
    "cluster_name": None,
    "retry_count": 0,
    "max_retries": 3,
    "retry_reason": None,
    "output_location": None,
    "metadata": {},
}


class Reported(msgspec.Struct):
    status: Annotated[str, Meta(description="the task's status after the report")]


class Logged(msgspec.Struct):
    status: Annotated[str, Meta(description='"logged"')]
    lines: Annotated[int, Meta(description="how many lines were stored")]


class Queue(msgspec.Struct):
    length: int
    by_priority: Annotated[dict[str, int], Meta(description="waiting tasks by priority")]
    oldest_queued_at: str | None
    oldest_age_seconds: float | None


class Metrics(msgspec.Struct):
    """The client's work tasks: the queue, and counts by status and by type."""

    queue: Queue
    tasks_by_status: dict[str, int]
    tasks_by_type: dict[str, int]
    timestamp: str


METRICS = {
    "queue": {
        "length": 1,
        "by_priority": {"5": 1},
        "oldest_queued_at": AT,
        "oldest_age_seconds": 12.5,
    },
    "tasks_by_status": {"queued": 1, "completed": 4},
    "tasks_by_type": {"pipeline_execution": 5},
    "timestamp": AT,
}
