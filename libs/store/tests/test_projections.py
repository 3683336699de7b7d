"""Read-model projection, pure parts: the job-log rows of each event, and `project()`'s
statements for a batch. No database: only the statements' shape and parameters are checked."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import pytest
from taskengine_contracts.events import (
    CallbackAttemptFailed,
    CallbackDelivered,
    ClientRegistered,
    Event,
    ExecutionLogged,
    JobAdmitted,
    JobCancelled,
    JobEvent,
    JobFailed,
    JobQueued,
    JobRetryScheduled,
    JobStarted,
    JobSubmitted,
    JobSucceeded,
    JobTimedOut,
    LogLine,
    SettingChanged,
)
from taskengine_core.jobs import Job, JobRef, advance
from taskengine_store.projections import LINES_PER_EVENT, SEVERITY, log_rows, project
from taskengine_store.store import Position

JOB = UUID("6f1c1b8e-7a8e-4c1e-9d1c-0a1b2c3d4e5f")
OTHER = UUID("7f1c1b8e-7a8e-4c1e-9d1c-0a1b2c3d4e5f")
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
RETRY_AT = T0 + timedelta(seconds=30)


def submitted(
    parameters: dict[str, object] | None = None, job: UUID = JOB, job_id: int = 42
) -> JobSubmitted:
    return JobSubmitted(
        id=job,
        version=1,
        at=T0,
        job_id=job_id,
        client="alice",
        workflow="flaky",
        parameters={"failures": 1} if parameters is None else parameters,
        priority=4,
        run_at=T0,
        state="queued",
    )


def job_fields(version: int, job: UUID = JOB, job_id: int = 42) -> dict[str, Any]:
    return {
        "id": job,
        "version": version,
        "at": T0 + timedelta(seconds=version),
        "job_id": job_id,
        "client": "alice",
    }


def stream() -> list[JobEvent]:
    """submitted -> admitted -> started -> retry_scheduled -> queued -> admitted -> started
    -> succeeded, built with the lifecycle's own `advance()`."""
    events: list[JobEvent] = [submitted()]

    def step(event_type: type[JobEvent], **fields: Any) -> None:
        at = T0 + timedelta(seconds=len(events))
        events.append(advance(JobRef.of(events[-1]), event_type, at=at, **fields))

    step(JobAdmitted, workflow="flaky", priority=4, attempt=1, running=1, max_jobs=2)
    step(JobStarted, workflow="flaky", attempt=1, executor="local-1")
    step(
        JobRetryScheduled,
        workflow="flaky",
        priority=4,
        attempt=1,
        retry_at=RETRY_AT,
        reason="exit code 1",
        exit_code=1,
    )
    step(JobQueued, workflow="flaky", priority=2, reason="retry", attempts=1)
    step(JobAdmitted, workflow="flaky", priority=2, attempt=2, running=1, max_jobs=2)
    step(JobStarted, workflow="flaky", attempt=2, executor="local-2")
    step(JobSucceeded, workflow="flaky", attempt=2)
    return events


def positioned(events: list[Event], start: int = 100) -> list[Position]:
    return [Position(start + i, event) for i, event in enumerate(events)]


def statement(statements: list, starts_with: str) -> tuple[str, Any]:
    found = [s for s in statements if s[0].startswith(starts_with)]
    assert len(found) == 1, [s[0][:40] for s in statements]
    return found[0]


def jobs_insert(statements: list) -> list[list[Any]]:
    """The rm_jobs INSERT's rows, transposed back from its unnest column arrays."""
    _, columns = statement(statements, "INSERT INTO rm_jobs")
    return [list(row) for row in zip(*columns, strict=True)]


def jobs_update(statements: list) -> list[list[Any]]:
    _, columns = statement(statements, "UPDATE rm_jobs")
    return [list(row) for row in zip(*columns, strict=True)]


def log_insert(statements: list) -> list[list[Any]]:
    _, columns = statement(statements, "INSERT INTO rm_job_log")
    return [list(row) for row in zip(*columns, strict=True)]


# --- log_rows ---------------------------------------------------------------------------

LOG_CASES: list[tuple[Event, str, str, str]] = [
    (JobQueued(**job_fields(2), workflow="w", priority=1, reason="due"), "INFO", "scheduler",
     "job queued (run_at reached)"),
    (JobQueued(**job_fields(2), workflow="w", priority=1, reason="retry"), "INFO", "scheduler",
     "job queued (retry delay over)"),
    (JobQueued(**job_fields(2), workflow="w", priority=1, reason="resumed"), "INFO",
     "scheduler", "job queued (resumed)"),
    (JobAdmitted(**job_fields(3), workflow="w", priority=1, attempt=2, running=3, max_jobs=4),
     "INFO", "controller", "job admitted, attempt 2 (3/4 slots)"),
    (JobStarted(**job_fields(4), workflow="w", attempt=2, executor="local-7"), "INFO", "worker",
     "attempt 2 started (local-7)"),
    (JobSucceeded(**job_fields(5), workflow="w", attempt=1), "INFO", "controller",
     "job has completed successfully"),
    (JobFailed(**job_fields(5), workflow="w", attempt=3, reason="exit code 7", exit_code=7),
     "ERROR", "controller", "job failed: exit code 7"),
    (JobTimedOut(**job_fields(5), workflow="w", attempt=1, timeout=2.5), "ERROR", "controller",
     "job timed out after 2.5s"),
    (JobRetryScheduled(**job_fields(5), workflow="w", priority=1, attempt=1, retry_at=RETRY_AT,
                       reason="exit code 1"), "WARN", "controller",
     f"attempt 1 failed (exit code 1); retrying at {RETRY_AT.isoformat()}"),
    (JobCancelled(**job_fields(3), reason="not needed", by="bob"), "WARN", "api",
     "job cancelled by bob: not needed"),
    (CallbackDelivered(id=OTHER, version=1, at=T0, job_id=42, url="http://r/hook",
                       event="job.succeeded", status_code=204, attempts=1), "INFO", "callback",
     "job.succeeded callback delivered to http://r/hook (HTTP 204)"),
    (CallbackAttemptFailed(id=OTHER, version=1, at=T0, job_id=42, url="http://r/hook",
                           event="job.failed", attempt=1, error="refused", next_at=RETRY_AT),
     "WARN", "callback",
     f"job.failed callback to http://r/hook failed: refused; retry at {RETRY_AT.isoformat()}"),
    (CallbackAttemptFailed(id=OTHER, version=2, at=T0, job_id=42, url="http://r/hook",
                           event="job.failed", attempt=5, error="refused", next_at=None),
     "ERROR", "callback", "job.failed callback to http://r/hook failed: refused; abandoned"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("event", "severity", "progname", "message"),
    LOG_CASES,
    ids=[f"{type(c[0]).__name__}-{i}" for i, c in enumerate(LOG_CASES)],
)
def test_log_rows_of_each_event_name_its_source_and_severity(event, severity, progname, message):
    assert log_rows(event) == [(severity, progname, message, 0)]


def test_a_submission_is_logged_by_the_api_as_the_request_it_came_from():
    [(severity, progname, message, task_id)] = log_rows(submitted({"n": 3}))
    assert (severity, progname, task_id) == ("INFO", "api", 0)
    assert json.loads(message) == {
        "path": "POST /job",
        "parameters": {
            "client": "alice",
            "job": {"workflow": "flaky"},
            "parameters": {"n": 3},
            "priority": 4,
        },
        "payload": "job_created",
    }


def test_secrets_in_submitted_parameters_are_masked_in_the_api_row():
    event = submitted({"api_key": "sk-live-0123456789", "token": "abcdefghijkl", "n": 3})
    [(_, _, message, _)] = log_rows(event)
    assert "sk-live-0123456789" not in message
    assert "abcdefghijkl" not in message
    parameters = json.loads(message)["parameters"]["parameters"]
    assert parameters == {"api_key": "**************6789", "token": "********ijkl", "n": 3}


def test_execution_lines_become_worker_rows_with_task_id_the_step():
    event = ExecutionLogged(
        id=OTHER,
        version=1,
        at=T0,
        job_id=42,
        attempt=1,
        lines=[
            LogLine(T0, 1, "INFO", "$ echo hi"),
            LogLine(T0, 1, "DEBUG", "hi"),
            LogLine(T0, 2, "WARN", "disk nearly full"),
            LogLine(T0, 2, "ERROR", "exit 3"),
        ],
    )
    assert log_rows(event) == [
        ("INFO", "worker", "$ echo hi", 1),
        ("DEBUG", "worker", "hi", 1),
        ("WARN", "worker", "disk nearly full", 2),
        ("ERROR", "worker", "exit 3", 2),
    ]


def test_secrets_printed_by_a_step_are_masked():
    event = ExecutionLogged(
        id=OTHER,
        version=1,
        at=T0,
        job_id=42,
        attempt=1,
        lines=[LogLine(T0, 1, "INFO", "Authorization: Bearer abcdefghijkl")],
    )
    assert log_rows(event) == [("INFO", "worker", "Authorization: Bearer ********ijkl", 1)]


def test_execution_lines_beyond_the_per_event_limit_are_dropped():
    lines = [LogLine(T0, 1, "INFO", f"line {i}") for i in range(LINES_PER_EVENT + 5)]
    rows = log_rows(ExecutionLogged(id=OTHER, version=1, at=T0, job_id=42, attempt=1, lines=lines))
    assert len(rows) == LINES_PER_EVENT
    assert rows[-1][2] == f"line {LINES_PER_EVENT - 1}"


@pytest.mark.parametrize(
    "event",
    [
        ClientRegistered(
            id=OTHER, version=1, at=T0, name="a", key_hash="h", key_lookup="l", key_hint="x"
        ),
        SettingChanged(id=OTHER, version=1, at=T0, name="max_jobs", value="3"),
    ],
    ids=["ClientRegistered", "SettingChanged"],
)
def test_non_job_events_have_no_log_rows(event):
    assert log_rows(event) == []


def test_every_log_severity_has_a_numeric_level():
    assert SEVERITY == {"DEBUG": 0, "INFO": 1, "WARN": 2, "ERROR": 3}
    for event, severity, _, _ in LOG_CASES:
        assert severity in SEVERITY, event


# --- project ----------------------------------------------------------------------------


def test_empty_batch_has_no_statements():
    assert project([]) == []


def test_a_submission_and_its_later_events_in_one_batch_make_one_insert_and_no_update():
    events = stream()
    statements = project(positioned(events))

    assert not any(s[0].startswith("UPDATE") for s in statements)
    [row] = jobs_insert(statements)
    job = Job.fold(events)
    assert job is not None
    assert row == [
        JOB,
        42,
        "alice",
        "flaky",
        2,  # the re-queue's priority
        "succeeded",
        2,  # the last attempt
        T0,  # created_at: the submission
        events[-1].at,  # updated_at: the last event
        RETRY_AT,  # run_at: moved by the retry
        8,
        '{"failures": 1}',  # the parameters, for search and listing
        False,  # persist
    ]
    # the row matches the job folded from the same events
    assert row[4:7] == [job.priority, str(job.state), job.attempt]
    assert (row[8], row[9], row[10]) == (job.updated_at, job.run_at, job.version)


def test_the_jobs_insert_is_idempotent_on_job_uuid():
    query, _ = statement(project(positioned([submitted()])), "INSERT INTO rm_jobs")
    assert "ON CONFLICT (job_uuid) DO NOTHING" in query


def test_events_of_a_job_submitted_in_an_earlier_batch_make_one_update_with_the_last_state():
    events = stream()
    statements = project(positioned(events[1:], start=101))

    assert not any(s[0].startswith("INSERT INTO rm_jobs") for s in statements)
    query, _ = statement(statements, "UPDATE rm_jobs")
    assert "j.version < u.version" in query  # an older replayed update never wins
    assert jobs_update(statements) == [[JOB, "succeeded", 8, events[-1].at, 2, 2, RETRY_AT, None]]


def test_an_update_carries_attempt_priority_and_run_at_from_earlier_events_in_the_batch():
    events = stream()
    # retry_scheduled (run_at), queued (priority), then cancellation (neither, no attempt)
    retry, queued = events[3], events[4]
    cancelled = advance(JobRef.of(queued), JobCancelled, at=T0 + timedelta(1), reason="x", by="b")
    [row] = jobs_update(project(positioned([retry, queued, cancelled])))
    assert row == [JOB, "cancelled", 6, T0 + timedelta(1), 1, 2, RETRY_AT, None]


def test_an_update_leaves_unknown_columns_null_for_coalesce():
    cancelled = JobCancelled(**job_fields(2), reason="x", by="b")
    [row] = jobs_update(project(positioned([cancelled])))
    assert row == [JOB, "cancelled", 2, cancelled.at, None, None, None, None]


def test_two_jobs_in_one_batch_get_one_row_each():
    a = submitted()
    b = submitted(job=OTHER, job_id=43)
    admitted_b = advance(
        JobRef.of(b), JobAdmitted, at=T0, workflow="flaky", priority=4, attempt=1, running=1,
        max_jobs=2,
    )  # fmt: skip
    rows = jobs_insert(project(positioned([a, b, admitted_b])))
    assert [(r[0], r[5], r[6]) for r in rows] == [(JOB, "queued", 0), (OTHER, "admitted", 1)]


def test_log_row_ids_are_position_times_1000_plus_line_number():
    execution = ExecutionLogged(
        id=OTHER,
        version=1,
        at=T0 + timedelta(seconds=9),
        job_id=42,
        attempt=1,
        lines=[LogLine(T0, 1, "INFO", "a"), LogLine(T0, 2, "ERROR", "b")],
    )
    events: list[Event] = [submitted(), execution]
    rows = log_insert(project([Position(7, events[0]), Position(12, events[1])]))
    assert [r[0] for r in rows] == [7000, 12000, 12001]
    assert rows[1] == [12000, 42, SEVERITY["INFO"], "worker", "a", execution.at, 1]
    assert rows[2] == [12001, 42, SEVERITY["ERROR"], "worker", "b", execution.at, 2]
    assert rows[0][1:4] == [42, SEVERITY["INFO"], "api"]


def test_the_log_insert_is_idempotent_on_row_id():
    query, _ = statement(project(positioned([submitted()])), "INSERT INTO rm_job_log")
    assert "ON CONFLICT (id) DO NOTHING" in query


def test_a_whole_stream_logs_one_row_per_event_in_order():
    events = stream()
    rows = log_insert(project(positioned(events, start=100)))
    assert [r[0] for r in rows] == [(100 + i) * 1000 for i in range(len(events))]
    assert [r[3] for r in rows] == [
        "api",
        "controller",
        "worker",
        "controller",
        "scheduler",
        "controller",
        "worker",
        "controller",
    ]
    assert [r[5] for r in rows] == [e.at for e in events]


def test_a_registered_client_is_upserted_and_not_logged():
    client = ClientRegistered(
        id=OTHER,
        version=1,
        at=T0,
        name="alice",
        key_hash="pbkdf2_sha256$1$s$d",
        key_lookup="a1b2c3",
        key_hint="****c3d4",
        admin=True,
    )
    statements = project(positioned([client]))
    assert len(statements) == 1
    query, params = statements[0]
    assert query.startswith("INSERT INTO rm_clients")
    assert "ON CONFLICT (name) DO UPDATE" in query
    assert params == ("alice", "pbkdf2_sha256$1$s$d", "a1b2c3", "****c3d4", True, T0)


def test_a_setting_change_projects_nothing():
    change = SettingChanged(id=OTHER, version=1, at=T0, name="max_jobs", value="3")
    assert project(positioned([change])) == []


def test_table_names_can_be_redirected():
    statements = project(positioned([submitted()]), jobs="x_jobs", log="x_log", clients="x_c")
    assert {s[0].split()[2] for s in statements} == {"x_jobs", "x_log"}
