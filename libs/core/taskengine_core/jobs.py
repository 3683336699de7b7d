"""The canonical job lifecycle: states, legal transitions, and the job folded from its events.

Services never read a job before moving it: the bus event they hold names the job's version
and state, `advance()` checks the move against the lifecycle and builds the next event with
version + 1, and the store refuses it if anyone else moved the job first.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TypeVar
from uuid import UUID

import msgspec
from taskengine_contracts.events import (
    FailureKind,
    JobAdmitted,
    JobBroken,
    JobCancelled,
    JobEvent,
    JobExecuting,
    JobFailed,
    JobPaused,
    JobQueued,
    JobRetryScheduled,
    JobScheduled,
    JobStarted,
    JobSubmitted,
    JobSucceeded,
    JobTimedOut,
    JobUpdated,
    RetryPolicy,
    RunSpec,
)

from taskengine_core.errors import IllegalTransition


class JobState(StrEnum):
    SCHEDULED = "scheduled"
    QUEUED = "queued"
    ADMITTED = "admitted"
    RUNNING = "running"
    RETRY_WAIT = "retry_wait"
    PAUSED = "paused"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"
    BROKEN = "broken"


FINAL_STATES = frozenset(
    {JobState.SUCCEEDED, JobState.FAILED, JobState.TIMED_OUT, JobState.CANCELLED, JobState.BROKEN}
)
ACTIVE_STATES = frozenset(JobState) - FINAL_STATES
HOLDS_SLOT = frozenset({JobState.ADMITTED, JobState.RUNNING})

S = JobState
# event type -> (states it may follow, state it leads to); JobSubmitted names its own state.
TRANSITIONS: dict[type[JobEvent], tuple[frozenset[JobState], JobState | None]] = {
    JobSubmitted: (frozenset(), None),
    JobQueued: (frozenset({S.SCHEDULED, S.RETRY_WAIT, S.PAUSED}), S.QUEUED),
    JobAdmitted: (frozenset({S.QUEUED}), S.ADMITTED),
    JobStarted: (frozenset({S.ADMITTED}), S.RUNNING),
    JobExecuting: (frozenset({S.RUNNING}), S.RUNNING),
    JobSucceeded: (frozenset({S.RUNNING}), S.SUCCEEDED),
    JobFailed: (frozenset({S.ADMITTED, S.RUNNING}), S.FAILED),
    JobTimedOut: (frozenset({S.RUNNING}), S.TIMED_OUT),
    JobRetryScheduled: (frozenset({S.ADMITTED, S.RUNNING}), S.RETRY_WAIT),
    JobCancelled: (ACTIVE_STATES, S.CANCELLED),
    JobScheduled: (frozenset({S.SCHEDULED, S.QUEUED, S.PAUSED}), S.SCHEDULED),
    JobPaused: (frozenset({S.SCHEDULED, S.QUEUED, S.RETRY_WAIT}), S.PAUSED),
    JobBroken: (frozenset(JobState) - {S.BROKEN}, S.BROKEN),
    # Not while admitted or running: the dispatcher appends the next event of those.
    JobUpdated: (frozenset(JobState) - {S.ADMITTED, S.RUNNING}, None),
}


_LEADS_TO = {kind: state for kind, (_, state) in TRANSITIONS.items() if state is not None}


def state_after(event: JobEvent) -> JobState:
    """The state a job is in after `event` (a replay asks it for every job event)."""
    state = _LEADS_TO.get(type(event))
    if state is None:
        assert isinstance(event, (JobSubmitted, JobUpdated))
        return JobState(event.state)
    return state


class JobRef(msgspec.Struct, frozen=True):
    """What a service knows of a job from the last event it saw: enough to move it."""

    id: UUID
    job_id: int
    client: str
    version: int
    state: JobState

    @classmethod
    def of(cls, event: JobEvent) -> JobRef:
        return cls(event.id, event.job_id, event.client, event.version, state_after(event))


E = TypeVar("E", bound=JobEvent)


def advance(ref: JobRef, event_type: type[E], at: datetime | None = None, **fields: Any) -> E:
    """The next event of the job's stream, if the lifecycle allows it from `ref.state`."""
    allowed, target = TRANSITIONS[event_type]
    if event_type is JobUpdated:
        fields.setdefault("state", str(ref.state))
        target = ref.state
    if ref.state not in allowed:
        raise IllegalTransition(
            f"job {ref.job_id} is {ref.state}: cannot become {target} "
            f"(allowed from {', '.join(sorted(allowed)) or 'nothing'})"
        )
    return event_type(
        id=ref.id,
        version=ref.version + 1,
        at=at or datetime.now(UTC),
        job_id=ref.job_id,
        client=ref.client,
        **fields,
    )


class Job(msgspec.Struct):
    """A job as its events tell it; the read side of the lifecycle."""

    id: UUID
    job_id: int
    client: str
    workflow: str
    parameters: dict[str, object]
    priority: int
    run_at: datetime
    created_at: datetime
    updated_at: datetime
    state: JobState
    version: int
    attempt: int = 0
    failure: str | None = None
    failure_kind: FailureKind | None = None
    """The kind of the failure that ended the job (`JobFailed.failure`)."""
    exit_code: int | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    dialect: str = "taskengine"
    persist: bool = False
    rerun_as: int | None = None
    semaphore_url: str | None = None
    task_id: UUID | None = None
    run: RunSpec = RunSpec()
    concurrency_key: str | None = None
    attributes: dict[str, object] = {}
    retries: int = 0
    """Attempts that failed and were retried."""
    retry_reason: str | None = None
    executing: bool = False
    """The current attempt's worker reported that it runs."""
    executor: str | None = None
    job_name: str | None = None
    cluster: str | None = None
    memory: str | None = None
    """The memory limit of the next (or current) attempt, when raised after OOMKilled."""
    output_location: str | None = None
    metadata: dict[str, object] = {}

    @property
    def retry(self) -> RetryPolicy | None:
        return self.run.retry

    @property
    def timeout(self) -> float | None:
        return self.run.timeout

    @property
    def failed(self) -> bool:
        return self.state in (JobState.FAILED, JobState.TIMED_OUT)

    @property
    def ref(self) -> JobRef:
        return JobRef(self.id, self.job_id, self.client, self.version, self.state)

    @classmethod
    def fold(cls, events: Iterable[JobEvent]) -> Job | None:
        job: Job | None = None
        for event in events:
            job = cls.started(event) if job is None else job.apply(event)
        return job

    @classmethod
    def started(cls, event: JobEvent) -> Job:
        if not isinstance(event, JobSubmitted):
            raise IllegalTransition(f"a job's stream must begin with its submission, not {event}")
        return cls(
            id=event.id,
            job_id=event.job_id,
            client=event.client,
            workflow=event.workflow,
            parameters=event.parameters,
            priority=event.priority,
            run_at=event.run_at,
            created_at=event.at,
            updated_at=event.at,
            state=JobState(event.state),
            version=event.version,
            dialect=event.dialect,
            semaphore_url=event.semaphore_url,
            task_id=event.task_id,
            run=event.run,
            concurrency_key=event.concurrency_key,
            attributes=event.attributes,
        )

    def apply(self, event: JobEvent) -> Job:
        allowed, _ = TRANSITIONS[type(event)]
        if self.state not in allowed or event.version != self.version + 1:
            raise IllegalTransition(f"job {self.job_id}: {event} does not follow {self.state}")
        if isinstance(event, JobUpdated) and event.state != self.state:
            raise IllegalTransition(f"job {self.job_id}: an update cannot change its state")
        self.state = state_after(event)
        self.version = event.version
        self.updated_at = event.at
        match event:
            case JobQueued(priority=priority):
                self.priority = priority
            case JobUpdated(priority=priority, run_at=run_at, persist=persist):
                self.priority, self.run_at, self.persist = priority, run_at, persist
                self.semaphore_url = event.semaphore_url
            case JobScheduled(priority=priority, run_at=run_at):
                self.priority, self.run_at = priority, run_at
                self.semaphore_url = event.semaphore_url
            case JobBroken(rerun_as=rerun_as):
                self.rerun_as, self.finished_at = rerun_as, self.finished_at or event.at
            case JobAdmitted(attempt=attempt):
                self.attempt = attempt
            case JobStarted():
                self.started_at = self.started_at or event.at
                self.executing = False
                self.executor, self.job_name, self.cluster = (
                    event.executor,
                    event.job_name,
                    event.cluster,
                )
            case JobExecuting(metadata=metadata):
                self.executing, self.metadata = True, metadata
            case JobRetryScheduled(reason=reason, exit_code=code, retry_at=retry_at):
                self.failure, self.exit_code, self.run_at = reason, code, retry_at
                self.retries += 1
                self.retry_reason = event.transient or reason
                self.memory = event.memory or self.memory
            case JobFailed(reason=reason, exit_code=code):
                self.failure, self.exit_code, self.finished_at = reason, code, event.at
                self.failure_kind = event.failure
                self.metadata = event.metadata or self.metadata
            case JobTimedOut(timeout=timeout):
                self.failure, self.finished_at = f"timed out after {timeout:g}s", event.at
            case JobSucceeded():
                self.failure, self.exit_code, self.finished_at = None, None, event.at
                self.output_location = event.output_location
                self.metadata = event.metadata or self.metadata
            case JobCancelled():
                self.finished_at = event.at
        return self
