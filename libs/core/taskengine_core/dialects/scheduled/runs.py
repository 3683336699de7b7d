"""A scheduled task's runs: their ids, the same in every scheduler, and the dedupe rule."""

from __future__ import annotations

from datetime import datetime, timedelta
from uuid import UUID, uuid5

from taskengine_core.ids import NAMESPACE
from taskengine_core.timestamps import aware


def dedupe_blocks(window_seconds: int | None, last_started: datetime | None, now: datetime) -> bool:
    """Whether a run is skipped: one with its dedupe key started less than the window ago."""
    if window_seconds is None or last_started is None:
        return False
    return aware(now) - aware(last_started) < timedelta(seconds=window_seconds)


def run_id(task_id: UUID, fire_at: datetime) -> UUID:
    """The id of the scheduled run firing at `fire_at`: the same in every scheduler."""
    return uuid5(NAMESPACE, f"task-run:{task_id}:at:{aware(fire_at).isoformat()}")


def manual_run_id(task_id: UUID, token: str) -> UUID:
    """The id of a run_now or event run; `token` must be unique per such run of the task."""
    return uuid5(NAMESPACE, f"task-run:{task_id}:manual:{token}")
