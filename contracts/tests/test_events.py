"""The bus vocabulary: every event round-trips through JSON, and is named by its tag."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from uuid import UUID

import msgspec
import pytest
from taskengine_contracts import subjects
from taskengine_contracts.events import (
    ALL_EVENTS,
    JOB_EVENTS,
    TERMINAL_JOB_EVENTS,
    CallbackAttemptFailed,
    CallbackDelivered,
    ClientRegistered,
    ClientRevoked,
    Event,
    ExecutionLogged,
    FinishedJobsCleared,
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
    LogLine,
    Resources,
    RetryPolicy,
    RunSpec,
    ScheduleSwitched,
    SettingChanged,
    StepChanged,
    TaskCancelled,
    TaskCreated,
    TaskDefinition,
    TaskFired,
    TaskPaused,
    TaskResumed,
    TaskRunRequested,
    TaskRunSkipped,
    TaskSnoozed,
    TaskUpdated,
    TopicPublished,
    Volume,
    decode,
    encode,
    topic_of,
)
from taskengine_contracts.subjects import message_id, subject_for, subject_for_topic

JOB = UUID("6f1c1b8e-7a8e-4c1e-9d1c-0a1b2c3d4e5f")
T0 = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
JOB_FIELDS = {"id": JOB, "at": T0, "job_id": 42, "client": "alice"}
TASK = UUID("77777777-2222-4333-8444-555555555555")
TASK_FIELDS = {"id": TASK, "at": T0, "client": "alice", "next_fire_at": T0 + timedelta(hours=1)}
DEFINITION = TaskDefinition(
    title="Nightly report",
    description="Builds it",
    schedule_kind="cron",
    schedule_expr="0 3 * * *",
    timezone="Europe/Chisinau",
    payload={"workflow": "echo", "parameters": {"n": 1}},
    created_by=UUID("88888888-2222-4333-8444-555555555555"),
    priority=2,
    max_retries=5,
    backoff_strategy="linear",
    dedupe_key="nightly",
    dedupe_window_seconds=600,
    concurrency_key="reports",
)
RUN = UUID("99999999-2222-4333-8444-555555555555")

EXAMPLES: dict[type[Event], Event] = {
    JobSubmitted: JobSubmitted(
        **JOB_FIELDS,
        version=1,
        workflow="echo",
        parameters={"greeting": "hi", "n": 3, "nested": {"list": [1, 2.5, None, True]}},
        priority=3,
        run_at=T0 + timedelta(minutes=5),
        state="scheduled",
        run=RunSpec(
            kind="container",
            image="ghcr.io/org/task:2",
            args=["--fast"],
            env={"ITERATIONS": "10"},
            resources=Resources(cpu="2", memory="300Mi", gpu=1),
            volumes=[Volume(host_path="/mnt/acme/in", container_path="/data")],
            secret="acme-storage",
            timeout=30.0,
            retry=RetryPolicy(max_retries=2, backoff="exponential_jitter"),
        ),
        callbacks=["http://receiver.local/hook"],
        dialect="other",
        task_id=TASK,
        concurrency_key="reports",
    ),
    JobQueued: JobQueued(
        **JOB_FIELDS, version=2, workflow="echo", priority=3, reason="due", attempts=0
    ),
    JobAdmitted: JobAdmitted(
        **JOB_FIELDS, version=3, workflow="echo", priority=3, attempt=1, running=1, max_jobs=2
    ),
    JobStarted: JobStarted(
        **JOB_FIELDS,
        version=4,
        workflow="echo",
        attempt=1,
        executor="local-1",
        callbacks=["http://receiver.local/hook"],
    ),
    JobExecuting: JobExecuting(
        **JOB_FIELDS, version=5, attempt=1, by="worker-1", metadata={"pod": "p-1"}
    ),
    JobSucceeded: JobSucceeded(**JOB_FIELDS, version=5, workflow="echo", attempt=1),
    JobFailed: JobFailed(
        **JOB_FIELDS,
        version=5,
        workflow="fail",
        attempt=3,
        reason="exit code 7",
        failure="other",
        exit_code=7,
    ),
    JobTimedOut: JobTimedOut(**JOB_FIELDS, version=5, workflow="sleep", attempt=1, timeout=2.5),
    JobRetryScheduled: JobRetryScheduled(
        **JOB_FIELDS,
        version=5,
        workflow="flaky",
        priority=3,
        attempt=1,
        retry_at=T0 + timedelta(seconds=5),
        reason="exit code 1",
        exit_code=1,
    ),
    JobCancelled: JobCancelled(**JOB_FIELDS, version=3, reason="not needed", by="alice"),
    JobUpdated: JobUpdated(
        **JOB_FIELDS,
        version=3,
        state="queued",
        workflow="echo",
        priority=2,
        run_at=T0,
        persist=True,
        changed=["priority", "persist"],
    ),
    JobScheduled: JobScheduled(**JOB_FIELDS, version=3, workflow="echo", priority=5, run_at=T0),
    JobPaused: JobPaused(**JOB_FIELDS, version=3, by="alice"),
    JobBroken: JobBroken(**JOB_FIELDS, version=3, by="alice", reason="rerun", rerun_as=43),
    ExecutionLogged: ExecutionLogged(
        id=UUID("11111111-2222-4333-8444-555555555555"),
        version=1,
        at=T0,
        job_id=42,
        attempt=1,
        lines=[
            LogLine(T0, 1, "INFO", "$ echo hi"),
            LogLine(T0 + timedelta(milliseconds=3), 1, "ERROR", "boom"),
        ],
    ),
    StepChanged: StepChanged(
        id=UUID("11111111-2222-4333-8444-555555555555"),
        version=2,
        at=T0,
        job_id=42,
        client="alice",
        attempt=1,
        step=1,
        name="echo",
        event="fail",
        exit_code=3,
        reason="step 'echo' exited with 3",
        callbacks=["http://receiver.local/hook"],
    ),
    CallbackDelivered: CallbackDelivered(
        id=UUID("22222222-2222-4333-8444-555555555555"),
        version=1,
        at=T0,
        job_id=42,
        url="http://receiver.local/hook",
        event="job.succeeded",
        status_code=204,
        attempts=2,
    ),
    CallbackAttemptFailed: CallbackAttemptFailed(
        id=UUID("22222222-2222-4333-8444-555555555555"),
        version=1,
        at=T0,
        job_id=42,
        url="http://receiver.local/hook",
        event="job.failed",
        attempt=1,
        error="connection refused",
        next_at=T0 + timedelta(seconds=2),
    ),
    ClientRegistered: ClientRegistered(
        id=UUID("33333333-2222-4333-8444-555555555555"),
        version=2,
        at=T0,
        name="alice",
        key_hash="pbkdf2_sha256$120000$abcd$" + "0" * 64,
        key_lookup="a1b2c3",
        key_hint="****c3d4",
        admin=True,
    ),
    ScheduleSwitched: ScheduleSwitched(
        id=UUID("55555555-2222-4333-8444-555555555555"),
        version=1,
        at=T0,
        name="queue_scheduled_jobs",
        active=False,
        by="alice",
    ),
    ClientRevoked: ClientRevoked(
        id=UUID("33333333-2222-4333-8444-555555555555"),
        version=3,
        at=T0,
        name="alice",
        by="cli",
    ),
    FinishedJobsCleared: FinishedJobsCleared(
        id=UUID("66666666-2222-4333-8444-555555555555"),
        version=1,
        at=T0,
        finished_before=T0 - timedelta(days=30),
        retention_seconds=30 * 24 * 3600,
    ),
    SettingChanged: SettingChanged(
        id=UUID("44444444-2222-4333-8444-555555555555"),
        version=7,
        at=T0,
        name="max_jobs",
        value="4",
    ),
    TaskCreated: TaskCreated(**TASK_FIELDS, version=1, definition=DEFINITION),
    TaskUpdated: TaskUpdated(
        **TASK_FIELDS, version=2, definition=DEFINITION, changed=["schedule_expr"]
    ),
    TaskPaused: TaskPaused(**{**TASK_FIELDS, "next_fire_at": None}, version=3, by="alice"),
    TaskResumed: TaskResumed(**TASK_FIELDS, version=4, by="alice"),
    TaskSnoozed: TaskSnoozed(**TASK_FIELDS, version=5, by="alice", delay_seconds=60, reason="db"),
    TaskRunRequested: TaskRunRequested(**TASK_FIELDS, version=6, by="alice", run_id=RUN),
    TaskFired: TaskFired(
        **TASK_FIELDS, version=7, run_id=RUN, trigger="run_now", fire_at=T0, job_id=42, missed=0
    ),
    TaskRunSkipped: TaskRunSkipped(
        **TASK_FIELDS,
        version=8,
        run_id=RUN,
        trigger="schedule",
        fire_at=T0,
        reason="dedupe",
        duplicate_of=41,
    ),
    TaskCancelled: TaskCancelled(**{**TASK_FIELDS, "next_fire_at": None}, version=9, by="alice"),
    TopicPublished: TopicPublished(
        id=UUID("aaaaaaaa-2222-4333-8444-555555555555"),
        version=1,
        at=T0,
        client="alice",
        topic="files.new",
        payload={"file": "a.csv"},
        source_agent_id="88888888-2222-4333-8444-555555555555",
    ),
}

TAGS = {
    JobSubmitted: "job.submitted",
    JobQueued: "job.queued",
    JobAdmitted: "job.admitted",
    JobStarted: "job.started",
    JobSucceeded: "job.succeeded",
    JobExecuting: "job.executing",
    JobFailed: "job.failed",
    JobTimedOut: "job.timed_out",
    JobRetryScheduled: "job.retry_scheduled",
    JobCancelled: "job.cancelled",
    JobUpdated: "job.updated",
    JobScheduled: "job.scheduled",
    JobPaused: "job.paused",
    JobBroken: "job.broken",
    ExecutionLogged: "execution.logged",
    CallbackDelivered: "callback.delivered",
    CallbackAttemptFailed: "callback.attempt_failed",
    StepChanged: "execution.step",
    ClientRegistered: "client.registered",
    ClientRevoked: "client.revoked",
    FinishedJobsCleared: "schedule.jobs_cleared",
    SettingChanged: "settings.changed",
    ScheduleSwitched: "schedule.switched",
    TaskCreated: "task.created",
    TaskUpdated: "task.updated",
    TaskPaused: "task.paused",
    TaskResumed: "task.resumed",
    TaskSnoozed: "task.snoozed",
    TaskRunRequested: "task.run_requested",
    TaskFired: "task.fired",
    TaskRunSkipped: "task.run_skipped",
    TaskCancelled: "task.cancelled",
    TopicPublished: "task.topic_published",
}


def _name(cls: type) -> str:
    return cls.__name__


def test_every_event_class_has_an_example():
    assert set(EXAMPLES) == set(ALL_EVENTS)
    assert len(ALL_EVENTS) == len(set(ALL_EVENTS))


def test_job_events_are_the_job_stream_and_include_every_terminal_event():
    assert all(issubclass(cls, JobEvent) for cls in JOB_EVENTS)
    assert set(TERMINAL_JOB_EVENTS) <= set(JOB_EVENTS)
    assert not any(issubclass(cls, JobEvent) for cls in set(ALL_EVENTS) - set(JOB_EVENTS))


@pytest.mark.parametrize("cls", ALL_EVENTS, ids=_name)
def test_every_event_round_trips_through_encode_and_decode(cls):
    event = EXAMPLES[cls]
    decoded = decode(encode(event))
    assert type(decoded) is cls
    assert decoded == event


@pytest.mark.parametrize("cls", ALL_EVENTS, ids=_name)
def test_the_encoded_type_tag_is_the_topic(cls):
    event = EXAMPLES[cls]
    data = json.loads(encode(event))
    assert data["type"] == topic_of(event) == topic_of(cls) == TAGS[cls]


@pytest.mark.parametrize("cls", ALL_EVENTS, ids=_name)
def test_the_subject_is_taskengine_dot_tag(cls):
    assert subject_for(EXAMPLES[cls]) == f"taskengine.{TAGS[cls]}"
    assert subject_for(cls) == subject_for_topic(TAGS[cls])


@pytest.mark.parametrize("cls", ALL_EVENTS, ids=_name)
def test_every_subject_falls_under_its_family_wildcard(cls):
    family = {
        "job": subjects.JOBS,
        "execution": subjects.EXECUTIONS,
        "callback": subjects.CALLBACKS,
        "client": subjects.CLIENTS,
        "settings": subjects.SETTINGS,
        "schedule": subjects.SCHEDULES,
        "task": subjects.TASKS,
    }[TAGS[cls].split(".")[0]]
    assert subject_for(cls).startswith(family.removesuffix(">"))
    assert subject_for(cls).startswith(subjects.ALL.removesuffix(">"))


def test_encoded_events_are_plain_json_with_iso_times_and_string_uuids():
    data = json.loads(encode(EXAMPLES[JobSubmitted]))
    assert data["id"] == str(JOB)
    assert datetime.fromisoformat(data["at"].replace("Z", "+00:00")) == T0
    assert data["parameters"] == EXAMPLES[JobSubmitted].parameters


def test_log_lines_encode_as_arrays():
    data = json.loads(encode(EXAMPLES[ExecutionLogged]))
    assert data["lines"][1][1:] == [1, "ERROR", "boom"]


def test_defaults_are_filled_when_decoding_a_minimal_submission():
    data = {
        "type": "job.submitted",
        "id": str(JOB),
        "version": 1,
        "at": "2024-05-01T12:00:00Z",
        "job_id": 42,
        "client": "alice",
        "workflow": "noop",
        "parameters": {},
        "priority": 5,
        "run_at": "2024-05-01T12:00:00Z",
        "state": "queued",
    }
    event = decode(json.dumps(data).encode())
    assert isinstance(event, JobSubmitted)
    assert (event.callbacks, event.run.timeout, event.dialect) == ([], None, "taskengine")


def test_decode_rejects_an_unknown_type_tag():
    data = json.loads(encode(EXAMPLES[JobQueued]))
    data["type"] = "job.exploded"
    with pytest.raises(msgspec.ValidationError):
        decode(json.dumps(data).encode())


def test_decode_rejects_a_missing_type_tag():
    data = json.loads(encode(EXAMPLES[JobQueued]))
    del data["type"]
    with pytest.raises(msgspec.ValidationError):
        decode(json.dumps(data).encode())


def test_decode_rejects_a_value_outside_a_literal():
    data = json.loads(encode(EXAMPLES[JobQueued]))
    data["reason"] = "because"
    with pytest.raises(msgspec.ValidationError):
        decode(json.dumps(data).encode())


def test_decode_rejects_a_missing_required_field():
    data = json.loads(encode(EXAMPLES[SettingChanged]))
    del data["value"]
    with pytest.raises(msgspec.ValidationError, match="value"):
        decode(json.dumps(data).encode())


def test_decode_rejects_malformed_json():
    with pytest.raises(msgspec.DecodeError):
        decode(b"{not json")


def test_events_are_immutable():
    with pytest.raises(AttributeError):
        EXAMPLES[JobQueued].version = 9  # type: ignore[misc]


@pytest.mark.parametrize("cls", ALL_EVENTS, ids=_name)
def test_message_id_is_aggregate_id_colon_version(cls):
    event = EXAMPLES[cls]
    assert message_id(event.id, event.version) == f"{event.id}:{event.version}"


def test_message_id_differs_between_versions_of_one_stream():
    a = EXAMPLES[JobQueued]
    b = EXAMPLES[JobAdmitted]
    assert a.id == b.id
    assert message_id(a.id, a.version) == f"{JOB}:2"
    assert message_id(b.id, b.version) == f"{JOB}:3"


def test_subject_constants():
    assert subjects.STREAM == "TASKENGINE"
    assert subjects.ALL == "taskengine.>"
    assert subjects.JOBS == "taskengine.job.>"
    assert subjects.MSG_ID_HEADER == "Nats-Msg-Id"
