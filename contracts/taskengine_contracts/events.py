"""The bus vocabulary: every event Taskengine stores and publishes.

Each event is stored verbatim (msgspec JSON) in the PostgreSQL event store and published
unchanged on JetStream, so an outside subscriber decodes exactly what the store holds.
`id` is the aggregate (stream) the event belongs to and `version` its place in that stream;
`(id, version)` is unique and is the `Nats-Msg-Id` on the bus.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal
from uuid import UUID

import msgspec

JsonObject = dict[str, object]
"""A JSON object supplied by a client (job parameters); opaque to the engine."""


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """Common envelope: aggregate id, version in that aggregate's stream, time of the fact."""

    id: UUID
    version: int
    at: datetime


class JobEvent(Event, frozen=True, kw_only=True):
    """An event in a job's stream. `job_id` is the job's public number."""

    job_id: int
    client: str


# --- job lifecycle -------------------------------------------------------------------------


class JobSubmitted(JobEvent, frozen=True, kw_only=True, tag="job.submitted"):
    """A client's job was accepted. `state` is `queued`, or `scheduled` when `run_at` is ahead
    or a `semaphore_url` must answer 2xx/3xx before the job is queued."""

    workflow: str
    parameters: JsonObject
    priority: int
    run_at: datetime
    state: Literal["queued", "scheduled"]
    callbacks: list[str] = []
    timeout: float | None = None
    dialect: str = "taskengine"
    semaphore_url: str | None = None


class JobQueued(JobEvent, frozen=True, kw_only=True, tag="job.queued"):
    """The job waits for a slot: its run_at came (`due`), a retry delay passed (`retry`)."""

    workflow: str
    priority: int
    reason: Literal["due", "retry", "resumed"]
    attempts: int = 0
    """Attempts already made; the next admission runs attempt `attempts + 1`."""


class JobAdmitted(JobEvent, frozen=True, kw_only=True, tag="job.admitted"):
    """Admission granted the job a slot; the dispatcher runs `attempt` next."""

    workflow: str
    priority: int
    attempt: int
    running: int
    max_jobs: int
    position: int = 0
    """The last log position admission had applied when it chose this job: replaying the log
    up to it gives exactly what the controller saw."""


class JobStarted(JobEvent, frozen=True, kw_only=True, tag="job.started"):
    """An executor accepted the attempt and the workflow is running."""

    workflow: str
    attempt: int
    executor: str
    callbacks: list[str] = []


class JobSucceeded(JobEvent, frozen=True, kw_only=True, tag="job.succeeded"):
    workflow: str
    attempt: int
    callbacks: list[str] = []
    custom_data: object = None
    """The job's `parameters.custom_data`, echoed to callbacks at the job's end."""


class JobFailed(JobEvent, frozen=True, kw_only=True, tag="job.failed"):
    """The job ended failed: retries exhausted or a failure that is not retried."""

    workflow: str
    attempt: int
    reason: str
    exit_code: int | None = None
    callbacks: list[str] = []
    custom_data: object = None


class JobTimedOut(JobEvent, frozen=True, kw_only=True, tag="job.timed_out"):
    workflow: str
    attempt: int
    timeout: float
    callbacks: list[str] = []
    custom_data: object = None


class JobRetryScheduled(JobEvent, frozen=True, kw_only=True, tag="job.retry_scheduled"):
    """An attempt failed and another follows at `retry_at`; the slot is released."""

    workflow: str
    priority: int
    attempt: int
    retry_at: datetime
    reason: str
    exit_code: int | None = None


class JobCancelled(JobEvent, frozen=True, kw_only=True, tag="job.cancelled"):
    reason: str
    by: str


class JobUpdated(JobEvent, frozen=True, kw_only=True, tag="job.updated"):
    """Fields changed without a change of state; carries the job's current values."""

    state: str
    workflow: str
    priority: int
    run_at: datetime
    persist: bool
    changed: list[str]
    semaphore_url: str | None = None


class JobScheduled(JobEvent, frozen=True, kw_only=True, tag="job.scheduled"):
    """The job waits for `run_at` again (a new run_at, or resumed before its time)."""

    workflow: str
    priority: int
    run_at: datetime
    attempts: int = 0
    semaphore_url: str | None = None


class JobPaused(JobEvent, frozen=True, kw_only=True, tag="job.paused"):
    """Held until resumed; a paused job takes no slot."""

    by: str


class JobBroken(JobEvent, frozen=True, kw_only=True, tag="job.broken"):
    """Invalidated (by a client, or by a rerun that replaces it); final."""

    by: str
    reason: str
    rerun_as: int | None = None


JOB_EVENTS = (
    JobSubmitted,
    JobQueued,
    JobAdmitted,
    JobStarted,
    JobSucceeded,
    JobFailed,
    JobTimedOut,
    JobRetryScheduled,
    JobCancelled,
    JobUpdated,
    JobScheduled,
    JobPaused,
    JobBroken,
)
TERMINAL_JOB_EVENTS = (JobSucceeded, JobFailed, JobTimedOut, JobCancelled, JobBroken)


# --- executions: what an attempt printed (kept out of the job's stream) --------------------


class LogLine(msgspec.Struct, frozen=True, array_like=True):
    at: datetime
    step: int
    severity: Literal["DEBUG", "INFO", "WARN", "ERROR"]
    text: str


class ExecutionLogged(Event, frozen=True, kw_only=True, tag="execution.logged"):
    """Lines an attempt's steps printed (step start and exit lines included), in order."""

    job_id: int
    attempt: int
    lines: list[LogLine]


class StepChanged(Event, frozen=True, kw_only=True, tag="execution.step"):
    """A step of an attempt started, completed or failed (in the attempt's execution stream)."""

    job_id: int
    client: str
    attempt: int
    step: int
    name: str
    event: Literal["start", "complete", "fail"]
    exit_code: int | None = None
    reason: str | None = None
    callbacks: list[str] = []


# --- callbacks --------------------------------------------------------------------------


class CallbackDelivered(Event, frozen=True, kw_only=True, tag="callback.delivered"):
    job_id: int
    url: str
    event: str
    status_code: int
    attempts: int


class CallbackAttemptFailed(Event, frozen=True, kw_only=True, tag="callback.attempt_failed"):
    """A delivery attempt failed; `next_at` is the retry, or None when it was abandoned."""

    job_id: int
    url: str
    event: str
    attempt: int
    error: str
    next_at: datetime | None


# --- clients and settings -----------------------------------------------------------------


class ClientRegistered(Event, frozen=True, kw_only=True, tag="client.registered"):
    """A client and a hash of its key (never the key). Re-registering replaces the key."""

    name: str
    key_hash: str
    key_lookup: str
    """First 6 hex digits of the key's SHA-256: finds the client of a bare bearer key."""
    key_hint: str
    admin: bool = False


class ClientRevoked(Event, frozen=True, kw_only=True, tag="client.revoked"):
    """The client's key no longer works; registering it again gives it a new one."""

    name: str
    by: str


class SettingChanged(Event, frozen=True, kw_only=True, tag="settings.changed"):
    name: str
    value: str


class ScheduleSwitched(Event, frozen=True, kw_only=True, tag="schedule.switched"):
    """One of the scheduler's periodic duties was switched on or off."""

    name: str
    active: bool
    by: str


class FinishedJobsCleared(Event, frozen=True, kw_only=True, tag="schedule.jobs_cleared"):
    """Retention: finished jobs that are not `persist` and ended before `finished_before` leave
    the read models (job list and job log). Their events stay in the store."""

    finished_before: datetime
    retention_seconds: int


AnyEvent = (
    JobSubmitted
    | JobQueued
    | JobAdmitted
    | JobStarted
    | JobSucceeded
    | JobFailed
    | JobTimedOut
    | JobRetryScheduled
    | JobCancelled
    | JobUpdated
    | JobScheduled
    | JobPaused
    | JobBroken
    | ExecutionLogged
    | StepChanged
    | CallbackDelivered
    | CallbackAttemptFailed
    | ClientRegistered
    | ClientRevoked
    | SettingChanged
    | ScheduleSwitched
    | FinishedJobsCleared
)

ALL_EVENTS: tuple[type[Event], ...] = (
    *JOB_EVENTS,
    ExecutionLogged,
    StepChanged,
    CallbackDelivered,
    CallbackAttemptFailed,
    ClientRegistered,
    ClientRevoked,
    SettingChanged,
    ScheduleSwitched,
    FinishedJobsCleared,
)


class Heartbeat(msgspec.Struct, frozen=True, kw_only=True):
    """A service instance is alive (core NATS, never stored); `working`: what it has in hand."""

    service: str
    instance: str
    working: int
    at: datetime


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(AnyEvent)


def encode(event: Event) -> bytes:
    return _encoder.encode(event)


def decode(data: bytes) -> AnyEvent:
    return _decoder.decode(data)


def topic_of(event: Event | type[Event]) -> str:
    """The event's topic, e.g. `job.submitted`: its tag, also the tail of its subject."""
    cls = event if isinstance(event, type) else type(event)
    return cls.__struct_config__.tag  # type: ignore[return-value]
