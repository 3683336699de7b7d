"""What the scheduled-tasks dialect (seed 001) answers, for the OpenAPI document (see
`answers`)."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import Meta

from taskengine_gateway.answers import Answers, answer

AT = "2030-01-31T03:00:00Z"
TASK_ID = "6c1f5e2a-8d1b-4c3e-9f7a-2b4d6e8f0a1c"


class FieldProblem(msgspec.Struct):
    """A request field that does not validate."""

    loc: Annotated[list[str], Meta(description='where: ["body", FIELD] or ["query", NAME]')]
    msg: str
    type: str


class TasksFailure(msgspec.Struct):
    """An error: a message, or (422) the fields that do not validate."""

    detail: str | list[FieldProblem]


ANSWERS = Answers(TasksFailure, lambda message: {"detail": message})
INVALID = {
    422: answer(
        TasksFailure,
        {"detail": [{"loc": ["body", "title"], "msg": "title is required", "type": "missing"}]},
        "a field does not validate",
    )
}


class ScheduledTask(msgspec.Struct):
    """A scheduled task (secret-looking values of its payload masked)."""

    id: str
    title: str
    description: str
    schedule_kind: Annotated[str, Meta(description="cron, rrule, once or event")]
    schedule_expr: str | None
    timezone: str
    payload: dict[str, Any]
    created_by: str
    priority: int
    max_retries: int
    backoff_strategy: str
    dedupe_key: str | None
    dedupe_window_seconds: int | None
    concurrency_key: str | None
    status: Annotated[str, Meta(description="active, paused or canceled")]
    next_run_at: str | None
    last_run_at: str | None
    snoozed_until: str | None
    snooze_reason: str | None
    run_count: int
    created_at: str
    updated_at: str


TASK = {
    "id": TASK_ID,
    "title": "nightly report",
    "description": "mails the day's figures",
    "schedule_kind": "cron",
    "schedule_expr": "0 3 * * *",
    "timezone": "Europe/Chisinau",
    "payload": {"workflow": "echo", "parameters": {"message": "nightly report"}},
    "created_by": "3f2b8a62-1c4e-4f0a-9d3e-8c1b2a4d5e6f",
    "priority": 5,
    "max_retries": 3,
    "backoff_strategy": "exponential_jitter",
    "dedupe_key": None,
    "dedupe_window_seconds": None,
    "concurrency_key": None,
    "status": "active",
    "next_run_at": AT,
    "last_run_at": None,
    "snoozed_until": None,
    "snooze_reason": None,
    "run_count": 0,
    "created_at": "2030-01-30T12:00:00Z",
    "updated_at": "2030-01-30T12:00:00Z",
}


class TaskRun(msgspec.Struct):
    """A run of a scheduled task."""

    id: str
    task_id: str
    trigger: Annotated[str, Meta(description="schedule, run_now or event")]
    status: str
    scheduled_for: str | None
    job_id: int | None
    attempts: int
    reason: str | None
    duplicate_of: int | None
    event_id: str | None
    created_at: str | None
    started_at: str | None
    finished_at: str | None
    updated_at: str | None


RUN = {
    "id": "0e9d8c7b-6a5f-4e3d-2c1b-0a9f8e7d6c5b",
    "task_id": TASK_ID,
    "trigger": "schedule",
    "status": "succeeded",
    "scheduled_for": AT,
    "job_id": 42,
    "attempts": 1,
    "reason": None,
    "duplicate_of": None,
    "event_id": None,
    "created_at": AT,
    "started_at": AT,
    "finished_at": AT,
    "updated_at": AT,
}
