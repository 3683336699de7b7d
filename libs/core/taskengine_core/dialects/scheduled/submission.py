"""A scheduled task's run as a job: its payload names the workflow (`pipeline`), and each run
the scheduler fires is submitted through the one factory (`run_submitted`) with the task's
priority, retry policy and concurrency key."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from taskengine_contracts.events import JobSubmitted, RetryPolicy, RunSpec, TaskDefinition

from taskengine_core.dialects.scheduled import DIALECT
from taskengine_core.dialects.scheduled.fields import InvalidTask
from taskengine_core.submission import job_submitted


def pipeline(payload: object) -> tuple[str, dict[str, object]]:
    """The workflow and parameters a task's payload names: `{"workflow": NAME, "parameters":
    {...}}`, or `{"steps": [...]}` run as the `inline` workflow."""
    if not isinstance(payload, dict):
        raise InvalidTask("payload", "must be an object naming a workflow or giving steps")
    parameters = payload.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidTask("payload", "payload.parameters must be an object")
    if "steps" in payload:
        return "inline", {"steps": payload["steps"], **parameters}
    if not isinstance(payload.get("workflow"), str):
        raise InvalidTask(
            "payload", "payload.workflow (a workflow name) or payload.steps is required"
        )
    return payload["workflow"], dict(parameters)


def run_submitted(
    job_id: int, client: str, at: datetime, task_id: UUID, definition: TaskDefinition
) -> JobSubmitted:
    """The job of a run of task `task_id` fired at `at`: the payload's workflow, retried as
    the task's `max_retries` and `backoff_strategy` say."""
    workflow, parameters = pipeline(definition.payload)
    retry = RetryPolicy(max_retries=definition.max_retries, backoff=definition.backoff_strategy)
    return job_submitted(
        job_id,
        client,
        at,
        workflow=workflow,
        parameters=parameters,
        run=RunSpec(retry=retry),
        dialect=DIALECT,
        priority=definition.priority,
        task_id=task_id,
        concurrency_key=definition.concurrency_key,
    )
