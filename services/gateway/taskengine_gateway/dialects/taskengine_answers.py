"""What the Task Engine dialect (seed 002) answers, for the OpenAPI document (see `answers`)."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import Meta

from taskengine_gateway.answers import Answers

STAMP = "2030-01-31T14:30:00.000Z"


class TaskEngineError(msgspec.Struct):
    """An error: what went wrong; a refused job request names the job (`id`, null for a new
    job)."""

    error: Annotated[str, Meta(description="what went wrong")]
    id: Annotated[int | None, Meta(description="the job (job routes only)")] = None


ANSWERS = Answers(TaskEngineError, lambda message: {"error": message})
JOB_ERRORS = Answers(TaskEngineError, lambda message: {"id": 42, "error": message})


class Alive(msgspec.Struct):
    result: Annotated[str, Meta(description='"alive"')]


class ListedJob(msgspec.Struct):
    """A job in a list (the dashboard's leave out `parameters`)."""

    id: int
    client: str
    workflow: str
    priority: Annotated[int, Meta(description="1 (highest) to 10")]
    position: Annotated[int, Meta(description="the job's place in the store's order")]
    created_at: str
    updated_at: str
    queue_state: Annotated[
        str, Meta(description="queued, started, completed, pending, broken, scheduled, paused")
    ]
    failed: bool
    run_at: str
    parameters: Annotated[dict[str, Any], Meta(description="secret-looking values masked")] = {}


class JobView(msgspec.Struct):
    """A job."""

    id: int
    client: str
    workflow: str
    priority: int
    position: Annotated[int, Meta(description="its place in the queue; 0: not waiting")]
    top_of_queue: bool
    parameters: Annotated[dict[str, Any], Meta(description="secret-looking values masked")]
    created_at: str
    updated_at: str
    queue_state: str
    failed: bool
    run_at: str
    semaphore_url: str | None


JOB = {
    "id": 42,
    "client": "billing",
    "workflow": "echo",
    "priority": 5,
    "position": 0,
    "top_of_queue": False,
    "parameters": {"message": "hello"},
    "created_at": STAMP,
    "updated_at": STAMP,
    "queue_state": "completed",
    "failed": False,
    "run_at": STAMP,
    "semaphore_url": None,
}
LISTED = {k: v for k, v in JOB.items() if k not in ("top_of_queue", "semaphore_url")}


class JobChanged(msgspec.Struct):
    id: int
    result: Annotated[str, Meta(description="which updates were performed")]


class LogEntry(msgspec.Struct):
    """A line of the job's log."""

    id: int
    job_id: int
    severity: Annotated[int, Meta(description="0 DEBUG, 1 INFO, 2 WARN, 3 ERROR")]
    severity_description: str
    progname: Annotated[str, Meta(description="api, worker, controller or callback")]
    message: str
    created_at: str
    updated_at: str
    task_id: int | None
    visible: bool


LOG = {
    "id": 7,
    "job_id": 42,
    "severity": 1,
    "severity_description": "INFO",
    "progname": "worker",
    "message": "hello",
    "created_at": STAMP,
    "updated_at": STAMP,
    "task_id": 0,
    "visible": True,
}


class Dashboard(msgspec.Struct):
    max_jobs: int
    priority_slots: int
    started: list[ListedJob]
    queued: list[ListedJob]
    scheduled: list[ListedJob]
    version: str


class QueueHealth(msgspec.Struct):
    workers: int
    working: int
    pending: int


class Health(msgspec.Struct):
    """The engine's health: its databases, each queue's workers and backlog, counts."""

    version: str
    databases: dict[str, str]
    queues: dict[str, QueueHealth]
    tasks: dict[str, int]
    jobs: dict[str, int]
    rejected: dict[str, Any]


HEALTH = {
    "version": "0.1.0",
    "databases": {"postgres": "OK", "nats": "OK"},
    "queues": {"work": {"workers": 1, "working": 0, "pending": 0}},
    "tasks": {"processed": 12, "failed": 1, "pending": 0},
    "jobs": {"queued": 0, "started": 0, "max_jobs": 10, "priority_slots": 2},
    "rejected": {"total": 0, "by_consumer": {"admission": 0}},
}


class Schedule(msgspec.Struct, rename={"cls": "class"}):
    cls: str
    every: Annotated[list[Any], Meta(description='[seconds, {"first_in": 0}]')]
    queue: str
    description: str
    active: bool


class Schedules(msgspec.Struct):
    result: str
    schedules: dict[str, Schedule]


class Switched(msgspec.Struct):
    result: str
    schedules: Annotated[list[str], Meta(description="the schedules now active")]


class Done(msgspec.Struct):
    result: str
    message: str


SCHEDULES = {
    "result": "ok",
    "schedules": {
        "cleanup": {
            "class": "CleanupJob",
            "every": [3600, {"first_in": 0}],
            "queue": "scheduler",
            "description": "removes finished jobs past their retention",
            "active": True,
        }
    },
}
