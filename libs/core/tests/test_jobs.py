"""The job lifecycle: legal moves via `advance()`, and the job folded from its event stream."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import pytest
from taskengine_contracts.events import (
    JOB_EVENTS,
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
    RunSpec,
)
from taskengine_core.errors import IllegalTransition
from taskengine_core.jobs import (
    ACTIVE_STATES,
    FINAL_STATES,
    HOLDS_SLOT,
    TRANSITIONS,
    Job,
    JobRef,
    JobState,
    advance,
    state_after,
)

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
JOB_UUID = UUID("6f1c1b8e-7a8e-4c1e-9d1c-0a1b2c3d4e5f")

# The event-specific fields `advance()` needs for each event type.
FIELDS: dict[type[JobEvent], dict[str, Any]] = {
    JobQueued: {"workflow": "echo", "priority": 3, "reason": "due"},
    JobAdmitted: {"workflow": "echo", "priority": 3, "attempt": 1, "running": 1, "max_jobs": 2},
    JobStarted: {"workflow": "echo", "attempt": 1, "executor": "local-1"},
    JobExecuting: {"attempt": 1, "by": "worker-1"},
    JobSucceeded: {"workflow": "echo", "attempt": 1},
    JobFailed: {
        "workflow": "echo",
        "attempt": 1,
        "reason": "exit 1",
        "failure": "other",
        "exit_code": 1,
    },
    JobTimedOut: {"workflow": "echo", "attempt": 1, "timeout": 2.5},
    JobRetryScheduled: {
        "workflow": "echo",
        "priority": 3,
        "attempt": 1,
        "retry_at": T0 + timedelta(seconds=5),
        "reason": "exit 1",
        "exit_code": 1,
    },
    JobCancelled: {"reason": "no longer needed", "by": "alice"},
    JobUpdated: {
        "workflow": "echo",
        "priority": 2,
        "run_at": T0,
        "persist": True,
        "changed": ["priority", "persist"],
    },
    JobScheduled: {"workflow": "echo", "priority": 3, "run_at": T0 + timedelta(hours=1)},
    JobPaused: {"by": "alice"},
    JobBroken: {"by": "alice", "reason": "rerun", "rerun_as": 43},
}

LEGAL = [
    (event_type, state)
    for event_type, (allowed, _) in TRANSITIONS.items()
    for state in sorted(allowed)
]
ILLEGAL = [
    (event_type, state)
    for event_type, (allowed, _) in TRANSITIONS.items()
    for state in sorted(JobState)
    if state not in allowed
]


def _id(value: object) -> str:
    return value.__name__ if isinstance(value, type) else str(value)


def ref(state: JobState, version: int = 4) -> JobRef:
    return JobRef(JOB_UUID, 42, "alice", version, state)


def submitted(state: str = "queued", at: datetime = T0, **overrides: Any) -> JobSubmitted:
    fields: dict[str, Any] = {
        "id": JOB_UUID,
        "version": 1,
        "at": at,
        "job_id": 42,
        "client": "alice",
        "workflow": "flaky",
        "parameters": {"failures": 1},
        "priority": 3,
        "run_at": at,
        "state": state,
        "run": RunSpec(),
    }
    fields.update(overrides)
    return JobSubmitted(**fields)


# --- states -----------------------------------------------------------------------------


def test_final_and_active_states_partition_every_job_state():
    assert FINAL_STATES | ACTIVE_STATES == frozenset(JobState)
    assert not FINAL_STATES & ACTIVE_STATES


def test_final_states_are_the_five_terminal_outcomes():
    assert {str(s) for s in FINAL_STATES} == {
        "succeeded",
        "failed",
        "timed_out",
        "cancelled",
        "broken",
    }


def test_only_admitted_and_running_jobs_hold_a_slot():
    assert HOLDS_SLOT == {JobState.ADMITTED, JobState.RUNNING}
    assert HOLDS_SLOT <= ACTIVE_STATES


def test_only_breaking_and_updating_follow_a_final_state():
    # A rerun breaks even a completed job (seed 002); persist may change on a finished one.
    for event_type, (allowed, _) in TRANSITIONS.items():
        if event_type not in (JobBroken, JobUpdated):
            assert not allowed & FINAL_STATES, event_type
    assert JobState.BROKEN not in TRANSITIONS[JobBroken][0]


def test_every_job_event_type_has_a_transition():
    assert set(TRANSITIONS) == set(JOB_EVENTS)


def test_the_lifecycle_table_is_the_documented_one():
    S = JobState
    expected = {
        JobSubmitted: (set(), None),
        JobQueued: ({S.SCHEDULED, S.RETRY_WAIT, S.PAUSED}, S.QUEUED),
        JobAdmitted: ({S.QUEUED}, S.ADMITTED),
        JobStarted: ({S.ADMITTED}, S.RUNNING),
        JobExecuting: ({S.RUNNING}, S.RUNNING),
        JobSucceeded: ({S.RUNNING}, S.SUCCEEDED),
        JobFailed: ({S.ADMITTED, S.RUNNING}, S.FAILED),
        JobTimedOut: ({S.RUNNING}, S.TIMED_OUT),
        JobRetryScheduled: ({S.ADMITTED, S.RUNNING}, S.RETRY_WAIT),
        JobCancelled: (set(ACTIVE_STATES), S.CANCELLED),
        JobScheduled: ({S.SCHEDULED, S.QUEUED, S.PAUSED}, S.SCHEDULED),
        JobPaused: ({S.SCHEDULED, S.QUEUED, S.RETRY_WAIT}, S.PAUSED),
        JobBroken: (set(JobState) - {S.BROKEN}, S.BROKEN),
        JobUpdated: (set(JobState) - {S.ADMITTED, S.RUNNING}, None),
    }
    assert {cls: (set(a), t) for cls, (a, t) in TRANSITIONS.items()} == expected


# --- advance ----------------------------------------------------------------------------


@pytest.mark.parametrize(("event_type", "state"), LEGAL, ids=_id)
def test_advance_builds_the_next_event_for_every_legal_transition(event_type, state):
    at = T0 + timedelta(minutes=1)
    event = advance(ref(state, version=4), event_type, at=at, **FIELDS[event_type])

    assert type(event) is event_type
    assert event.version == 5
    assert (event.id, event.job_id, event.client) == (JOB_UUID, 42, "alice")
    assert event.at == at
    for name, value in FIELDS[event_type].items():
        assert getattr(event, name) == value
    after = state if event_type is JobUpdated else TRANSITIONS[event_type][1]
    assert state_after(event) == after
    assert JobRef.of(event) == JobRef(JOB_UUID, 42, "alice", 5, after)


@pytest.mark.parametrize(("event_type", "state"), ILLEGAL, ids=_id)
def test_advance_refuses_every_illegal_transition_naming_the_state(event_type, state):
    with pytest.raises(IllegalTransition, match=rf"job 42 is {state}\b"):
        advance(ref(state), event_type, at=T0, **FIELDS.get(event_type, {}))


def test_advance_never_builds_a_submission():
    with pytest.raises(IllegalTransition, match="allowed from nothing"):
        advance(ref(JobState.QUEUED), JobSubmitted, at=T0)


def test_advance_names_the_target_and_allowed_states_when_refusing():
    with pytest.raises(IllegalTransition) as raised:
        advance(ref(JobState.QUEUED), JobStarted, at=T0, **FIELDS[JobStarted])
    assert "cannot become running" in str(raised.value)
    assert "allowed from admitted" in str(raised.value)


def test_advance_defaults_at_to_now_in_utc():
    before = datetime.now(UTC)
    event = advance(ref(JobState.QUEUED), JobAdmitted, **FIELDS[JobAdmitted])
    after = datetime.now(UTC)
    assert event.at.tzinfo is not None
    assert before <= event.at <= after


# --- JobRef / state_after -----------------------------------------------------------------


def test_ref_of_a_scheduled_submission_is_scheduled():
    event = submitted(state="scheduled", run_at=T0 + timedelta(hours=1))
    assert JobRef.of(event) == JobRef(JOB_UUID, 42, "alice", 1, JobState.SCHEDULED)


def test_ref_of_a_queued_submission_is_queued():
    assert JobRef.of(submitted(state="queued")).state is JobState.QUEUED


# --- fold -------------------------------------------------------------------------------


def realistic_stream() -> list[JobEvent]:
    """submitted -> admitted -> started -> retry_scheduled -> queued -> admitted -> started
    -> succeeded, each built with `advance()` from the previous event."""
    t = [T0 + timedelta(seconds=10 * i) for i in range(8)]
    retry_at = t[3] + timedelta(seconds=5)
    events: list[JobEvent] = [submitted(at=t[0])]

    def step(event_type: type[JobEvent], at: datetime, **fields: Any) -> None:
        events.append(advance(JobRef.of(events[-1]), event_type, at=at, **fields))

    step(JobAdmitted, t[1], workflow="flaky", priority=3, attempt=1, running=1, max_jobs=2)
    step(JobStarted, t[2], workflow="flaky", attempt=1, executor="local-1")
    step(
        JobRetryScheduled,
        t[3],
        workflow="flaky",
        priority=3,
        attempt=1,
        retry_at=retry_at,
        reason="exit code 1",
        exit_code=1,
    )
    step(JobQueued, t[4], workflow="flaky", priority=2, reason="retry", attempts=1)
    step(JobAdmitted, t[5], workflow="flaky", priority=2, attempt=2, running=1, max_jobs=2)
    step(JobStarted, t[6], workflow="flaky", attempt=2, executor="local-2")
    step(JobSucceeded, t[7], workflow="flaky", attempt=2)
    return events


def test_fold_of_a_retried_then_successful_stream():
    events = realistic_stream()
    job = Job.fold(events)

    assert job is not None
    assert job.state is JobState.SUCCEEDED
    assert job.version == 8
    assert job.attempt == 2
    assert job.priority == 2  # the re-queue's priority
    assert job.created_at == events[0].at
    assert job.updated_at == events[-1].at
    assert job.finished_at == events[-1].at
    assert job.started_at == events[2].at  # the first start, not the second
    assert job.run_at == events[3].retry_at
    # A success clears the earlier attempt's failure.
    assert job.failure is None
    assert job.exit_code is None
    assert not job.failed
    assert job.ref == JobRef(JOB_UUID, 42, "alice", 8, JobState.SUCCEEDED)


def test_fold_of_nothing_is_none():
    assert Job.fold([]) is None


def test_fold_keeps_the_submission_fields():
    job = Job.fold([submitted(state="scheduled", dialect="other", run_at=T0 + timedelta(1))])
    assert job is not None
    assert job.state is JobState.SCHEDULED
    assert (job.workflow, job.parameters, job.priority, job.dialect) == (
        "flaky",
        {"failures": 1},
        3,
        "other",
    )
    assert job.run_at == T0 + timedelta(1)
    assert job.attempt == 0 and job.finished_at is None and job.started_at is None


def test_fold_rejects_a_stream_not_starting_with_a_submission():
    events = realistic_stream()[1:]
    with pytest.raises(IllegalTransition, match="must begin with its submission"):
        Job.fold(events)


def test_fold_rejects_an_event_whose_version_does_not_follow():
    events = realistic_stream()
    skipped = [events[0], events[2]]  # admitted (v2) missing, started is v3
    with pytest.raises(IllegalTransition, match="does not follow"):
        Job.fold(skipped)


def test_fold_rejects_a_repeated_version():
    first, admitted = realistic_stream()[:2]
    again = advance(JobRef.of(first), JobCancelled, at=T0, reason="x", by="alice")
    with pytest.raises(IllegalTransition, match="does not follow"):
        Job.fold([first, admitted, again])  # both v2


def test_fold_rejects_an_event_the_state_does_not_allow():
    first = submitted()
    started = JobStarted(
        id=JOB_UUID, version=2, at=T0, job_id=42, client="alice", workflow="flaky",
        attempt=1, executor="local-1",
    )  # fmt: skip
    with pytest.raises(IllegalTransition, match="does not follow queued"):
        Job.fold([first, started])


def test_fold_of_a_failed_job_records_reason_exit_code_and_finish():
    first = submitted()
    admitted = advance(JobRef.of(first), JobAdmitted, at=T0, **FIELDS[JobAdmitted])
    failed = advance(
        JobRef.of(admitted), JobFailed, at=T0 + timedelta(seconds=3), **FIELDS[JobFailed]
    )
    job = Job.fold([first, admitted, failed])
    assert job is not None
    assert job.state is JobState.FAILED and job.failed
    assert (job.failure, job.exit_code) == ("exit 1", 1)
    assert job.finished_at == T0 + timedelta(seconds=3)


def test_fold_of_a_timed_out_job_describes_the_timeout():
    events: list[JobEvent] = [submitted()]
    for event_type in (JobAdmitted, JobStarted, JobTimedOut):
        events.append(advance(JobRef.of(events[-1]), event_type, at=T0, **FIELDS[event_type]))
    job = Job.fold(events)
    assert job is not None
    assert job.state is JobState.TIMED_OUT and job.failed
    assert job.failure == "timed out after 2.5s"
    assert job.finished_at == T0


def test_fold_of_a_cancelled_scheduled_job_is_finished():
    first = submitted(state="scheduled")
    cancelled = advance(
        JobRef.of(first), JobCancelled, at=T0 + timedelta(1), **FIELDS[JobCancelled]
    )
    job = Job.fold([first, cancelled])
    assert job is not None
    assert job.state is JobState.CANCELLED and not job.failed
    assert job.finished_at == T0 + timedelta(1)
