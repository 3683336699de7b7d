"""Scheduled tasks and their runs as the seed shows them: a task from its fold (`task_view`)
or its read-model row (`row_view`), in one shape; a run from its row (`run_view`)."""

from __future__ import annotations

from typing import Any

import msgspec
from taskengine_contracts.events import TaskDefinition

from taskengine_core.clients import mask_values
from taskengine_core.dialects.scheduled.lifecycle import Task
from taskengine_core.dialects.scheduled.status import run_status
from taskengine_core.timestamps import iso


def as_body(definition: TaskDefinition) -> dict[str, Any]:
    """A task definition as a request body gives it (`created_by` a string)."""
    body: dict[str, Any] = msgspec.to_builtins(definition)
    body["created_by"] = str(definition.created_by)
    return body


def task_view(task: Task) -> dict[str, Any]:
    body = as_body(task.definition)
    body["payload"] = mask_values(body["payload"])
    return {
        "id": str(task.id),
        **body,
        "status": task.status,
        "next_run_at": iso(task.next_fire_at),
        "last_run_at": iso(task.last_fire_at),
        "snoozed_until": iso(task.snoozed_until),
        "snooze_reason": task.snooze_reason,
        "run_count": task.runs,
        "created_at": iso(task.created_at),
        "updated_at": iso(task.updated_at),
    }


def row_view(row: dict[str, Any]) -> dict[str, Any]:
    """A task of the `rm_tasks` read model in the same shape as `task_view`."""
    return {
        "id": str(row["task_uuid"]),
        "title": row["title"],
        "description": row["description"],
        "schedule_kind": row["schedule_kind"],
        "schedule_expr": row["schedule_expr"],
        "timezone": row["timezone"],
        "payload": mask_values(row["payload"]),
        "created_by": str(row["created_by"]),
        "priority": row["priority"],
        "max_retries": row["max_retries"],
        "backoff_strategy": row["backoff_strategy"],
        "dedupe_key": row["dedupe_key"],
        "dedupe_window_seconds": row["dedupe_window_seconds"],
        "concurrency_key": row["concurrency_key"],
        "status": row["status"],
        "next_run_at": iso(row["next_fire_at"]),
        "last_run_at": iso(row["last_fire_at"]),
        "snoozed_until": iso(row["snoozed_until"]),
        "snooze_reason": row["snooze_reason"],
        "run_count": row["runs"],
        "created_at": iso(row["created_at"]),
        "updated_at": iso(row["updated_at"]),
    }


def run_view(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": str(row["run_id"]),
        "task_id": str(row["task_uuid"]),
        "trigger": row["trigger"],
        "status": run_status(row["status"]),
        "scheduled_for": iso(row["fire_at"]),
        "job_id": row["job_id"],
        "attempts": row["attempts"],
        "reason": row["reason"],
        "duplicate_of": row["duplicate_of"],
        "event_id": row["event_id"] and str(row["event_id"]),
        "created_at": iso(row["created_at"]),
        "started_at": iso(row["started_at"]),
        "finished_at": iso(row["finished_at"]),
        "updated_at": iso(row["updated_at"]),
    }
