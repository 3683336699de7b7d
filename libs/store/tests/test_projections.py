"""Read-model projection, pure parts: the job-log rows of each event, and `project()`'s
statements for a batch. No database: only the statements' shape and parameters are checked."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import msgspec
import pytest
from psycopg.types.json import Json
from taskengine_contracts.events import (
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
    JobFailed,
    JobQueued,
    JobRetryScheduled,
    JobStarted,
    JobSubmitted,
    JobSucceeded,
    JobTimedOut,
    JobUpdated,
    LogLine,
    RunSpec,
    SettingChanged,
)
from taskengine_core.jobs import Job, JobRef, JobState, advance
from taskengine_store.projections import (
    LINES_PER_EVENT,
    SEVERITY,
    clear_finished_jobs,
    log_rows,
    project,
    segments,
    submission_message,
)
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
        run=RunSpec(),
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


def rows(params: Any) -> list[list[Any]]:
    """A statement's rows (its one `records()` parameter), as values in column order."""
    (recordset,) = params
    return [list(_fields(row).values()) for row in recordset.obj]


def _fields(row: Any) -> dict[str, Any]:
    return msgspec.structs.asdict(row) if isinstance(row, msgspec.Struct) else row


def jobs_insert(statements: list) -> list[list[Any]]:
    """The rm_jobs INSERT's rows."""
    return rows(statement(statements, "INSERT INTO rm_jobs")[1])


def jobs_update(statements: list) -> list[list[Any]]:
    return rows(statement(statements, "UPDATE rm_jobs")[1])


def log_insert(statements: list) -> list[list[Any]]:
    return rows(statement(statements, "INSERT INTO rm_job_log")[1])


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
    (JobFailed(**job_fields(5), workflow="w", attempt=3, reason="exit code 7", failure="other",
               exit_code=7),
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


@pytest.mark.parametrize(
    ("client", "workflow", "parameters", "priority"),
    [
        ("alice", "flaky", {"n": 3}, 4),
        ('a "quoted", \\ one', "wf\nline\ttab", {}, 0),
        ("émile ☃ 𝄞", "ünï", {"ü": ["☃", None, True, 1.5, -0.0, 10**30], "": {}}, -7),
        ("c", "w", {"nested": {"deep": [[{"x": "</script>"}]]}, "nan": float("nan")}, 10),
    ],
)
def test_a_submission_line_is_byte_for_byte_what_json_dumps_writes(
    client, workflow, parameters, priority
):
    event = msgspec.structs.replace(
        submitted(parameters), client=client, workflow=workflow, priority=priority
    )
    request = {
        "path": "POST /job",
        "parameters": {
            "client": client,
            "job": {"workflow": workflow},
            "parameters": parameters,
            "priority": priority,
        },
        "payload": "job_created",
    }
    assert submission_message(event) == json.dumps(request, default=str)


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
        ClientRevoked(id=OTHER, version=2, at=T0, name="a", by="cli"),
        FinishedJobsCleared(id=OTHER, version=1, at=T0, finished_before=T0, retention_seconds=1),
    ],
    ids=["ClientRegistered", "SettingChanged", "ClientRevoked", "FinishedJobsCleared"],
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

    assert not any(s[0].startswith("UPDATE rm_jobs") for s in statements)
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
        {"failures": 1},  # the parameters (a jsonb column), for search and listing
        False,  # persist
        events[-1].at,  # finished_at: the success
        "taskengine",  # the dialect it came through
        {},  # the dialect's attributes
        False,  # executing: no remote worker reported
    ]
    # the row matches the job folded from the same events
    assert row[4:7] == [job.priority, str(job.state), job.attempt]
    assert (row[8], row[9], row[10]) == (job.updated_at, job.run_at, job.version)
    assert row[13] == job.finished_at


def test_the_jobs_insert_is_idempotent_on_job_uuid():
    query, _ = statement(project(positioned([submitted()])), "INSERT INTO rm_jobs")
    assert "ON CONFLICT (job_uuid) DO NOTHING" in query


def test_events_of_a_job_submitted_in_an_earlier_batch_make_one_update_with_the_last_state():
    events = stream()
    statements = project(positioned(events[1:], start=101))

    assert not any(s[0].startswith("INSERT INTO rm_jobs") for s in statements)
    query, _ = statement(statements, "UPDATE rm_jobs")
    assert "j.version < u.version" in query  # an older replayed update never wins
    assert jobs_update(statements) == [
        [JOB, "succeeded", 8, events[-1].at, 2, 2, RETRY_AT, None, events[-1].at, False]
    ]


def test_an_update_carries_attempt_priority_and_run_at_from_earlier_events_in_the_batch():
    events = stream()
    # retry_scheduled (run_at), queued (priority), then cancellation (neither, no attempt)
    retry, queued = events[3], events[4]
    cancelled = advance(JobRef.of(queued), JobCancelled, at=T0 + timedelta(1), reason="x", by="b")
    [row] = jobs_update(project(positioned([retry, queued, cancelled])))
    assert row == [
        JOB,
        "cancelled",
        6,
        T0 + timedelta(1),
        1,
        2,
        RETRY_AT,
        None,
        T0 + timedelta(1),
        None,
    ]


def test_an_update_leaves_unknown_columns_null_for_coalesce():
    cancelled = JobCancelled(**job_fields(2), reason="x", by="b")
    [row] = jobs_update(project(positioned([cancelled])))
    assert row == [JOB, "cancelled", 2, cancelled.at, None, None, None, None, cancelled.at, None]


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
    statements = project(
        positioned([submitted()]), jobs="x_jobs", log="x_log", clients="x_c", runs="x_runs"
    )
    named = {
        s[0].removeprefix("INSERT INTO ").removeprefix("UPDATE ").split()[0] for s in statements
    }
    assert named == {"x_jobs", "x_log", "x_runs"}


def test_the_log_insert_skips_rows_of_jobs_not_in_the_list():
    query, _ = statement(project(positioned([submitted()])), "INSERT INTO rm_job_log")
    assert "WHERE EXISTS (SELECT 1 FROM rm_jobs j WHERE j.job_id = u.job_id)" in query


# --- finished_at -------------------------------------------------------------------------


def test_a_job_updated_after_it_finished_keeps_its_finished_at():
    events = stream()
    updated = advance(
        JobRef.of(events[-1]), JobUpdated, at=T0 + timedelta(hours=1), workflow="flaky",
        priority=1, run_at=RETRY_AT, persist=True, changed=["persist"],
    )  # fmt: skip
    [row] = jobs_insert(project(positioned([*events, updated])))
    assert (row[8], row[12], row[13]) == (updated.at, True, events[-1].at)
    [moved] = jobs_update(project(positioned([updated], start=200)))
    assert moved[8] is None  # coalesce keeps the row's finished_at


def test_a_rerun_breaking_a_finished_job_keeps_the_first_end_as_finished_at():
    events = stream()
    broken = advance(
        JobRef.of(events[-1]), JobBroken, at=T0 + timedelta(hours=1), by="alice",
        reason="rerun", rerun_as=43,
    )  # fmt: skip
    [row] = jobs_insert(project(positioned([*events, broken])))
    assert (row[5], row[13]) == ("broken", events[-1].at)
    assert row[13] == Job.fold([*events, broken]).finished_at  # type: ignore[union-attr]
    query, _ = statement(project(positioned([broken], start=200)), "UPDATE rm_jobs")
    assert "finished_at = coalesce(j.finished_at, u.finished_at)" in query


def test_an_unfinished_job_has_no_finished_at():
    events = stream()[:4]  # waiting for its retry
    [row] = jobs_insert(project(positioned(events)))
    assert (row[5], row[13]) == ("retry_wait", None)


# --- retention ---------------------------------------------------------------------------

CUTOFF = T0 + timedelta(minutes=5)


def clearing(version: int = 1, finished_before: datetime = CUTOFF) -> FinishedJobsCleared:
    return FinishedJobsCleared(
        id=OTHER, version=version, at=T0 + timedelta(hours=1), finished_before=finished_before,
        retention_seconds=3600,
    )  # fmt: skip


def test_a_batch_without_clearing_is_one_segment():
    batch = positioned(stream())
    assert segments(batch) == [(batch, None)]
    assert segments([]) == [([], None)]


def test_a_batch_is_cut_after_each_clearing():
    events = stream()
    first, second = clearing(1), clearing(2)
    batch = positioned([*events[:3], first, *events[3:5], second, *events[5:]])
    assert segments(batch) == [
        (batch[:3], first),
        (batch[4:6], second),
        (batch[7:], None),
    ]


def test_a_clearing_at_either_end_of_a_batch():
    events = stream()
    first, last = clearing(1), clearing(2)
    batch = positioned([first, *events[:2], last])
    assert segments(batch) == [([], first), (batch[1:3], last)]


def test_the_clearing_deletes_finished_non_persist_jobs_before_the_cutoff_and_their_log():
    query, params = clear_finished_jobs(clearing())
    assert query == (
        "WITH cleared AS (DELETE FROM rm_jobs WHERE finished_at < %s AND NOT persist"
        " AND state = ANY(%s) RETURNING job_id)"
        " DELETE FROM rm_job_log WHERE job_id IN (SELECT job_id FROM cleared)"
    )
    finished_before, states = params
    assert finished_before == CUTOFF
    assert set(states) == {"succeeded", "failed", "timed_out", "cancelled", "broken"}
    assert set(states) == {str(s) for s in JobState} - {
        "scheduled", "queued", "admitted", "running", "retry_wait", "paused"
    }  # fmt: skip


def test_a_clearing_is_applied_between_what_precedes_it_and_what_follows():
    """A job submitted before the clearing and ended after it is not folded across the cut:
    it is inserted (and may be cleared) first, and its later events update it afterwards."""
    events = stream()
    batch = positioned([*events[:4], clearing(), *events[4:]])
    statements = project(batch)
    assert [" ".join(s[0].split()[:3]) for s in statements] == [
        "INSERT INTO rm_jobs",
        "UPDATE rm_task_runs AS",  # the job's run, if it is one
        "INSERT INTO rm_job_log",
        "WITH cleared AS",
        "UPDATE rm_jobs AS",
        "UPDATE rm_task_runs AS",
        "INSERT INTO rm_job_log",
    ]
    [inserted] = rows(statements[0][1])
    assert (inserted[5], inserted[10], inserted[13]) == ("retry_wait", 4, None)
    [updated] = rows(statements[4][1])
    assert (updated[1], updated[2], updated[8]) == ("succeeded", 8, events[-1].at)
    before, after = ([r[0] for r in rows(statements[n][1])] for n in (2, 6))
    assert before == [p * LINES_PER_EVENT for p in range(100, 104)]
    assert after == [p * LINES_PER_EVENT for p in range(105, 109)]


def test_the_same_events_split_anywhere_give_the_same_statements_around_a_clearing():
    events = stream()
    batch = positioned([*events[:4], clearing(), *events[4:]])
    whole = comparable(project(batch))
    # The live projector's batches may end anywhere; a cut at the clearing is always made.
    assert comparable(project(batch[:5]) + project(batch[5:])) == whole
    assert comparable(project(batch[:4]) + project(batch[4:])) == whole


def comparable(statements: list) -> list[tuple[str, Any]]:
    """The statements with each `records()` parameter as its rows."""
    return [(q, [p.obj if isinstance(p, Json) else p for p in params]) for q, params in statements]


def test_a_revocation_marks_the_client_and_a_registration_clears_the_mark():
    registered = ClientRegistered(
        id=OTHER, version=1, at=T0, name="alice", key_hash="h", key_lookup="l", key_hint="x"
    )
    revoked = ClientRevoked(id=OTHER, version=2, at=T0 + timedelta(1), name="alice", by="cli")
    again = ClientRegistered(
        id=OTHER, version=3, at=T0 + timedelta(2), name="alice", key_hash="h2",
        key_lookup="l2", key_hint="y",
    )  # fmt: skip
    statements = project(positioned([registered, revoked, again]))
    assert [s[0].split()[0] for s in statements] == ["INSERT", "UPDATE", "INSERT"]
    assert statements[1] == (
        "UPDATE rm_clients SET revoked_at = %s WHERE name = %s",
        (revoked.at, "alice"),
    )
    assert "revoked_at = NULL" in statements[2][0]


def test_table_names_of_a_clearing_and_a_revocation_can_be_redirected():
    revoked = ClientRevoked(id=OTHER, version=2, at=T0, name="alice", by="cli")
    statements = project(
        positioned([revoked, clearing()]), jobs="x_jobs", log="x_log", clients="x_c"
    )
    assert "UPDATE x_c " in statements[0][0]
    assert "DELETE FROM x_jobs " in statements[1][0]
    assert "DELETE FROM x_log " in statements[1][0]
