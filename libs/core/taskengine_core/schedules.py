"""The scheduler's named periodic duties (the Task Engine `/schedules`), on unless switched off."""

from __future__ import annotations

from collections.abc import Iterable

import msgspec
from taskengine_contracts.events import ScheduleSwitched

from taskengine_core.errors import DomainError

TICK = 0.25
"""How often the scheduler looks for due jobs, in seconds."""


class Duty(msgspec.Struct, frozen=True):
    name: str
    cls: str
    description: str
    queue: str = "scheduler"
    every: str | None = None
    """The setting holding its period in seconds; None: every TICK."""


DUTIES = {
    "queue_scheduled_jobs": Duty(
        "queue_scheduled_jobs",
        "QueueJobs",
        "Enqueues scheduled jobs that have a run_at time in the past and whose semaphore_url,"
        " if any, answers 2xx/3xx (asked again every schedule_interval until it does).",
    ),
    "fire_scheduled_tasks": Duty(
        "fire_scheduled_tasks",
        "FireTasks",
        "Starts the runs of scheduled tasks whose cron, rrule or once time came, and those asked"
        " for by run_now or a published event (dedupe applied; a run missed while stopped fires"
        " once).",
    ),
    "clear_finished_jobs": Duty(
        "clear_finished_jobs",
        "ClearFinishedJobs",
        "Removes finished jobs that are not persist from the job list and logs once they are"
        " older than retention_seconds (the event store keeps them).",
        every="schedule_interval",
    ),
}


class UnknownSchedule(DomainError):
    pass


def duty(name: object) -> Duty:
    if not isinstance(name, str) or name not in DUTIES:
        raise UnknownSchedule(f"unknown schedule {name!r}; known: {', '.join(DUTIES)}")
    return DUTIES[name]


def active_duties(events: Iterable[ScheduleSwitched]) -> dict[str, bool]:
    """Every duty and whether it is active, after these switches."""
    active = dict.fromkeys(DUTIES, True)
    for event in events:
        active[event.name] = event.active
    return active
