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


FailureKind = Literal["transient", "lost", "timeout", "unstartable", "other"]
"""Why an attempt failed: `transient` (the place it ran failed it: OOMKilled, Evicted,
DeadlineExceeded), `lost` (its runner vanished), `timeout`, `unstartable` (it was never
provisioned: not startable, its image not pulled in time) or `other` (its own failure)."""

Backoff = Literal["exponential_jitter", "linear", "fixed"]
"""How the delay before a retry grows from one attempt to the next."""


class RetryPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """How a job's failed attempts are retried: up to `max_retries` times, each after a delay
    from `backoff` based on the `retry_delay` setting (capped by `retry_max_delay`)."""

    max_retries: int
    backoff: Backoff = "fixed"
    transient_only: bool = False
    """Retry only failures classified transient (OOMKilled, Evicted, DeadlineExceeded, lost)."""


class Resources(msgspec.Struct, frozen=True, kw_only=True):
    """What one attempt may use, as Kubernetes quantities (requests and limits alike)."""

    cpu: str | None = None
    """Cores: `2`, `0.5`, `500m`."""
    memory: str | None = None
    """`512Mi`, `2Gi`: the first attempt's limit (a retry after OOMKilled raises it)."""
    gpu: int = 0


class Volume(msgspec.Struct, frozen=True, kw_only=True):
    """A host directory mounted into a container (only where the operator allows)."""

    host_path: str
    container_path: str
    read_only: bool = True


class Limit(msgspec.Struct, frozen=True, kw_only=True):
    """A time limit the client set: `seconds`, and how it named (`opSpec.timeout`) and gave
    (`5m`) it, which the reason of a job that passed it quotes."""

    seconds: float
    name: str
    given: str


class RunSpec(msgspec.Struct, frozen=True, kw_only=True):
    """What a job executes, whatever API it came through.

    - `steps`: the steps of the job's `workflow` with its `parameters`, on the dispatcher.
    - `worker`: the same workflow run by a remote worker that reports back (a process, or a
      Kubernetes Job with `resources` and the `secret`); on the local executor its steps run
      on the dispatcher.
    - `container`: `image` with `args` as a plain Kubernetes Job, mounting `volumes`.

    `env` reaches the steps or the container; `timeout` bounds an attempt (None: the
    engine's default); `retry` decides what a failed attempt leads to (None: the `retry_limit`
    and `retry_delay` settings, any failure retried)."""

    kind: Literal["steps", "worker", "container"] = "steps"
    image: str | None = None
    args: list[str] = []
    env: dict[str, str] = {}
    resources: Resources = Resources()
    volumes: list[Volume] = []
    secret: str | None = None
    """The Kubernetes Secret holding the job's storage credentials (a name, never a value)."""
    timeout: float | None = None
    retry: RetryPolicy | None = None
    start_timeout: Limit | None = None
    """An attempt not started within this of the submission fails instead of starting."""
    pull_timeout: Limit | None = None
    """How long a container's image may fail to pull before its attempt fails (None: the
    executor's default)."""
    unstartable: str | None = None
    """Why no executor can start this run (e.g. files to put in a container): its attempt
    fails saying so as it would start."""


class JobSubmitted(JobEvent, frozen=True, kw_only=True, tag="job.submitted"):
    """A client's job was accepted. `state` is `queued`, or `scheduled` when `run_at` is ahead
    or a `semaphore_url` must answer 2xx/3xx before the job is queued. `run` says what it
    executes; `workflow` and `parameters` are what its steps (or worker) run, and how every
    view names the job."""

    workflow: str
    parameters: JsonObject
    priority: int
    run_at: datetime
    state: Literal["queued", "scheduled"]
    run: RunSpec
    callbacks: list[str] = []
    dialect: str = "taskengine"
    semaphore_url: str | None = None
    task_id: UUID | None = None
    """The scheduled task this job is a run of, if any."""
    concurrency_key: str | None = None
    """At most one job of the client with this key holds a slot at a time."""
    attributes: JsonObject = {}
    """What the job's dialect keeps for its views (a work task: type, project_id, task_spec,
    resource_requirements, data_access, its priority as given; a Drove task: its spec)."""


class JobQueued(JobEvent, frozen=True, kw_only=True, tag="job.queued"):
    """The job waits for a slot: its run_at came (`due`), a retry delay passed (`retry`)."""

    workflow: str
    priority: int
    reason: Literal["due", "retry", "resumed"]
    attempts: int = 0
    """Attempts already made; the next admission runs attempt `attempts + 1`."""
    concurrency_key: str | None = None


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
    """An executor accepted the attempt and the workflow is running (a remote worker: it was
    spawned, e.g. as Kubernetes Job `job_name` on `cluster`)."""

    workflow: str
    attempt: int
    executor: str
    callbacks: list[str] = []
    job_name: str | None = None
    cluster: str | None = None
    memory: str | None = None
    """The memory limit this attempt runs with, when the job asks for one."""


class JobExecuting(JobEvent, frozen=True, kw_only=True, tag="job.executing"):
    """The attempt's worker reported that it runs (a remote worker's first report)."""

    attempt: int
    by: str
    metadata: JsonObject = {}


class JobSucceeded(JobEvent, frozen=True, kw_only=True, tag="job.succeeded"):
    workflow: str
    attempt: int
    callbacks: list[str] = []
    custom_data: object = None
    """The job's `parameters.custom_data`, echoed to callbacks at the job's end."""
    output_location: str | None = None
    metadata: JsonObject = {}
    """What a worker reported with its result."""


class JobFailed(JobEvent, frozen=True, kw_only=True, tag="job.failed"):
    """The job ended failed: retries exhausted or a failure that is not retried."""

    workflow: str
    attempt: int
    reason: str
    failure: FailureKind
    """The kind of the failure that ended it (views such as Drove's LOST read it)."""
    exit_code: int | None = None
    callbacks: list[str] = []
    custom_data: object = None
    metadata: JsonObject = {}


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
    concurrency_key: str | None = None
    transient: str | None = None
    """The transient failure retried (OOMKilled, Evicted, DeadlineExceeded, lost), if so."""
    memory: str | None = None
    """The raised memory limit the next attempt runs with (after OOMKilled)."""


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
    concurrency_key: str | None = None


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
    JobExecuting,
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


# --- scheduled tasks: definitions that fire runs (jobs) ------------------------------------


class TaskDefinition(msgspec.Struct, frozen=True, kw_only=True):
    """A scheduled task as it now stands: what fires it and what each run is."""

    title: str
    description: str
    schedule_kind: Literal["cron", "rrule", "once", "event"]
    schedule_expr: str | None
    """The cron line, the RRULE, the ISO-8601 instant, or (for `event`) the topic."""
    timezone: str = "UTC"
    payload: JsonObject
    """The pipeline each run executes: `{"workflow": NAME, "parameters": {...}}` or inline
    `{"steps": [...]}`."""
    created_by: UUID
    priority: int = 5
    max_retries: int = 3
    backoff_strategy: Backoff = "exponential_jitter"
    dedupe_key: str | None = None
    dedupe_window_seconds: int | None = None
    concurrency_key: str | None = None


class TaskEvent(Event, frozen=True, kw_only=True):
    """An event in a scheduled task's stream (`id` is the task's public UUID).

    `next_fire_at` is when the schedule fires next after this event (None: not by the clock,
    e.g. paused, cancelled, exhausted, or an `event` task)."""

    client: str
    next_fire_at: datetime | None = None


class TaskCreated(TaskEvent, frozen=True, kw_only=True, tag="task.created"):
    definition: TaskDefinition


class TaskUpdated(TaskEvent, frozen=True, kw_only=True, tag="task.updated"):
    """Fields of the definition changed; carries the whole new definition."""

    definition: TaskDefinition
    changed: list[str]


class TaskPaused(TaskEvent, frozen=True, kw_only=True, tag="task.paused"):
    by: str


class TaskResumed(TaskEvent, frozen=True, kw_only=True, tag="task.resumed"):
    by: str


class TaskCancelled(TaskEvent, frozen=True, kw_only=True, tag="task.cancelled"):
    """Final: the task never fires again."""

    by: str


class TaskSnoozed(TaskEvent, frozen=True, kw_only=True, tag="task.snoozed"):
    """The pending run moved `delay_seconds` later (to `next_fire_at`)."""

    by: str
    delay_seconds: int
    reason: str | None = None


class TaskRunRequested(TaskEvent, frozen=True, kw_only=True, tag="task.run_requested"):
    """`run_now`: one run outside the schedule (which stays as it is); the scheduler fires it
    as `run_id`."""

    by: str
    run_id: UUID


class TaskFired(TaskEvent, frozen=True, kw_only=True, tag="task.fired"):
    """A run started: job `job_id` was submitted in the same commit. `fire_at` is the instant
    it was due (schedule) or asked for (run_now, event); `run_id` derives from task and
    fire instant (or the request), so two schedulers cannot fire the same run twice."""

    run_id: UUID
    trigger: Literal["schedule", "run_now", "event"]
    fire_at: datetime
    job_id: int
    event_id: UUID | None = None
    missed: int = 0
    """Scheduled fires that passed while no scheduler ran, folded into this one."""


class TaskRunSkipped(TaskEvent, frozen=True, kw_only=True, tag="task.run_skipped"):
    """A due run did not start: a run with the same `dedupe_key` (job `duplicate_of`) started
    less than `dedupe_window_seconds` before it."""

    run_id: UUID
    trigger: Literal["schedule", "run_now", "event"]
    fire_at: datetime
    reason: str
    duplicate_of: int | None = None
    event_id: UUID | None = None


class TopicPublished(Event, frozen=True, kw_only=True, tag="task.topic_published"):
    """`POST /events`: starts a run of each of the client's active `event` tasks on `topic`."""

    client: str
    topic: str
    payload: JsonObject = {}
    source_agent_id: str | None = None


TASK_EVENTS = (
    TaskCreated,
    TaskUpdated,
    TaskPaused,
    TaskResumed,
    TaskCancelled,
    TaskSnoozed,
    TaskRunRequested,
    TaskFired,
    TaskRunSkipped,
)


# --- clients and settings -----------------------------------------------------------------


class ClientRegistered(Event, frozen=True, kw_only=True, tag="client.registered"):
    """A client and a hash of its key (never the key). Re-registering replaces the key; a
    registration with the same key_lookup may only replace its hash (PBKDF2 migrated to HMAC)."""

    name: str
    key_hash: str
    """`hmac_sha256$<hex>` under the servers' key secret, or from older stores
    `pbkdf2_sha256$<iterations>$<salt>$<hex>`."""
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
    | JobExecuting
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
    | TaskCreated
    | TaskUpdated
    | TaskPaused
    | TaskResumed
    | TaskCancelled
    | TaskSnoozed
    | TaskRunRequested
    | TaskFired
    | TaskRunSkipped
    | TopicPublished
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
    *TASK_EVENTS,
    TopicPublished,
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
_decoder: msgspec.json.Decoder[AnyEvent] = msgspec.json.Decoder(AnyEvent)


def encode(event: Event) -> bytes:
    return _encoder.encode(event)


def decode(data: bytes) -> AnyEvent:
    """The event `data` holds; a stored event of an older shape is upcast to the current one."""
    try:
        return _decoder.decode(data)
    except msgspec.ValidationError:
        from taskengine_contracts.upcasts import upcast  # only old events need it

        upcast_data = upcast(msgspec.json.decode(data))
        if upcast_data is None:
            raise
        return _decoder.decode(msgspec.json.encode(upcast_data))


def topic_of(event: Event | type[Event]) -> str:
    """The event's topic, e.g. `job.submitted`: its tag, also the tail of its subject."""
    cls = event if isinstance(event, type) else type(event)
    tag = cls.__struct_config__.tag
    assert isinstance(tag, str), cls  # msgspec allows int tags; every event is tagged by name
    return tag
