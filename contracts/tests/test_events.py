"""The bus vocabulary: every event round-trips through JSON, and is named by its tag."""

from __future__ import annotations

import json
from datetime import datetime

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
    ScheduleSwitched,
    SettingChanged,
    StepChanged,
    TaskCancelled,
    TaskCreated,
    TaskFired,
    TaskPaused,
    TaskResumed,
    TaskRunRequested,
    TaskRunSkipped,
    TaskSnoozed,
    TaskUpdated,
    TopicPublished,
    decode,
    encode,
    topic_of,
)
from taskengine_contracts.examples import EXAMPLES, JOB, T0
from taskengine_contracts.subjects import message_id, subject_for, subject_for_topic

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
