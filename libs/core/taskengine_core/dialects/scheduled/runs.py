"""A scheduled task's runs: their ids, the same in every scheduler, the dedupe rule, and
what cancelling their task does to them."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from uuid import UUID, uuid5

from taskengine_contracts.events import JobCancelled

from taskengine_core.ids import NAMESPACE
from taskengine_core.jobs import ACTIVE_STATES, FINAL_STATES, Job, advance
from taskengine_core.timestamps import aware

OPEN_STATES = tuple(sorted(str(state) for state in ACTIVE_STATES))
"""The job states of a run that has not ended, as `rm_task_runs.status` holds them."""


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


def cancel_runs(runs: Iterable[Job], by: str, now: datetime) -> list[JobCancelled]:
    """Cancelling a task is final for its runs too: each run that has not ended (waiting,
    queued, retrying or running) is cancelled with it, so a queued run never starts, a pending
    retry never comes, and a running one is stopped by its dispatcher."""
    return [
        advance(run.ref, JobCancelled, at=now, reason="its scheduled task was canceled", by=by)
        for run in runs
        if run.state not in FINAL_STATES
    ]
