"""A Drove task's state: the one mapping of the canonical lifecycle onto Drove's task states
(`task_status`), with the task's result once it ran to an end."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from taskengine_core.jobs import Job, JobState


class TaskState(StrEnum):
    PENDING = "PENDING"
    PROVISIONING = "PROVISIONING"
    PROVISIONING_FAILED = "PROVISIONING_FAILED"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    RUN_COMPLETED = "RUN_COMPLETED"
    DEPROVISIONING = "DEPROVISIONING"
    STOPPED = "STOPPED"
    LOST = "LOST"
    UNKNOWN = "UNKNOWN"


@dataclass(frozen=True)
class TaskStatus:
    """A job as a Drove task instance: `state`, `result` once it ran to an end
    (`{"status", "exitCode"}`), and `error_message`."""

    state: TaskState
    result: dict[str, Any] | None
    error_message: str


NOT_STARTED = {
    JobState.SCHEDULED: TaskState.PENDING,
    JobState.QUEUED: TaskState.PENDING,
    JobState.PAUSED: TaskState.PENDING,
    JobState.RETRY_WAIT: TaskState.PENDING,
    JobState.ADMITTED: TaskState.PROVISIONING,
}
ENDED = {
    JobState.SUCCEEDED: "SUCCESSFUL",
    JobState.FAILED: "FAILED",
    JobState.TIMED_OUT: "TIMED_OUT",
    JobState.CANCELLED: "CANCELLED",
    JobState.BROKEN: "CANCELLED",
}


def task_status(job: Job) -> TaskStatus:
    """The one mapping from the canonical lifecycle to Drove's task states:

    - scheduled, queued, paused, retry_wait: PENDING; admitted (a slot granted): PROVISIONING
    - running: RUNNING (STARTING while a remote worker has not reported yet)
    - failed before it started (no JobStarted, or failure kind `unstartable`, e.g. its
      image was not pulled in time): PROVISIONING_FAILED
    - failed because its executor vanished (failure kind `lost`): LOST, taskResult LOST
    - succeeded / failed / timed_out: STOPPED, taskResult SUCCESSFUL / FAILED / TIMED_OUT
    - cancelled (KILL) or broken: STOPPED, taskResult CANCELLED

    `exitCode` is the last step's exit code (0 on success, -1 where none was seen).
    RUN_COMPLETED and DEPROVISIONING are no separate moments here (an attempt's end is one
    event); UNKNOWN is never answered.
    """
    state = job.state
    if state in NOT_STARTED:
        return TaskStatus(NOT_STARTED[state], None, "")
    if state == JobState.RUNNING:
        remote = job.executor not in (None, "local")
        waiting = remote and not job.executing
        return TaskStatus(TaskState.STARTING if waiting else TaskState.RUNNING, None, "")
    error = job.failure or ""
    if state == JobState.FAILED and job.failure_kind == "lost":
        return TaskStatus(TaskState.LOST, _result("LOST", job.exit_code), error)
    unstarted = job.started_at is None or job.failure_kind == "unstartable"
    if state == JobState.FAILED and unstarted:
        return TaskStatus(TaskState.PROVISIONING_FAILED, None, error)
    status = ENDED.get(state)
    if status is None:  # pragma: no cover - every state is mapped above
        return TaskStatus(TaskState.UNKNOWN, None, error)
    code = 0 if state == JobState.SUCCEEDED else job.exit_code
    return TaskStatus(TaskState.STOPPED, _result(status, code), error)


def _result(status: str, exit_code: int | None) -> dict[str, Any]:
    return {"status": status, "exitCode": -1 if exit_code is None else exit_code}
