"""A work task's status: the canonical lifecycle as the seed's statuses.

A running job is `spawned` until its worker reports `executing` (on the local executor the
dispatcher records it for the worker); waiting states are `queued` (or `scheduled`), a broken
job reads `cancelled`.
"""

from __future__ import annotations

from taskengine_core.jobs import Job, JobState

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


def status_of(job: Job) -> str:
    return status_named(job.state, job.executing)


def status_named(state: JobState, executing: bool = False) -> str:
    """The seed's status of a job in `state` (`executing`: its worker said it runs)."""
    if state == JobState.RUNNING:
        return "executing" if executing else "spawned"
    return STATUS[state]
