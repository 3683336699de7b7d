"""Read models projected from the event log: the job list (`rm_jobs`), the job log, the
clients, and the scheduled tasks with their runs (`rm_tasks`, `rm_task_runs`).

`project()` turns a batch of positioned events into a few set-based statements, so the live
projector and `taskengine replay` build identical tables from the same code, whatever the
batch boundaries.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import datetime
from operator import itemgetter
from typing import Any, Literal, overload

import msgspec
from msgspec.structs import astuple
from psycopg import Cursor
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
)
from taskengine_core.clients import mask_secrets
from taskengine_core.jobs import FINAL_STATES, TRANSITIONS, state_after

from taskengine_store.recordsets import Columns, Rows, names, records, recordset
from taskengine_store.store import Position, Statement
from taskengine_store.task_projections import (
    RunProgress,
    run_inserts,
    run_updates,
    task_statements,
)

SEVERITY = {"DEBUG": 0, "INFO": 1, "WARN": 2, "ERROR": 3}
LINES_PER_EVENT = 1000
"""Log row ids are position * 1000 + line: stable across replays."""

PROJECTOR = "projector"

_FINISHING = tuple(t for t, (_, state) in TRANSITIONS.items() if state in FINAL_STATES)
"""Events that end a job (a `broken` after a completion keeps the first end as finished_at)."""

_OF_A_JOB = (JobEvent, ExecutionLogged, CallbackDelivered, CallbackAttemptFailed)
"""The events that name a job: only they can have rows in its log."""


_json = json.JSONEncoder(default=str).encode
_json_string = json.encoder.encode_basestring_ascii  # what `_json` writes a str as


def submission_message(event: JobSubmitted) -> str:
    """The log's line for a submission: `json.dumps` of the request it came from,
    `{"path": "POST /job", "parameters": {"client": ..., "job": {"workflow": ...},
    "parameters": ..., "priority": ...}, "payload": "job_created"}`, byte for byte (a replay
    compares it with the rows written before). Assembled around its three encoded values: 2.8–3.3
    µs a submission, where encoding the whole dict took 4.6–5.0."""
    return (
        f'{{"path": "POST /job", "parameters": {{"client": {_json_string(event.client)},'
        f' "job": {{"workflow": {_json_string(event.workflow)}}},'
        f' "parameters": {_json(event.parameters)}, "priority": {event.priority:d}}},'
        ' "payload": "job_created"}'
    )


def log_rows(event: Event) -> list[tuple[str, str, str, int]]:
    """(severity, progname, message, task_id) rows an event contributes to its job's log.
    (Every job's four commonest events first: each case is one class test.)"""
    match event:
        case JobSubmitted():
            return [("INFO", "api", mask_secrets(submission_message(event)), 0)]
        case JobAdmitted():
            text = f"job admitted, attempt {event.attempt} ({event.running}/{event.max_jobs} slots)"
            return [("INFO", "controller", text, 0)]
        case JobStarted():
            where = f", Kubernetes Job {event.job_name}" if event.job_name else ""
            text = f"attempt {event.attempt} started ({event.executor}{where})"
            return [("INFO", "worker", text, 0)]
        case JobSucceeded():
            return [("INFO", "controller", "job has completed successfully", 0)]
        case JobQueued(reason=reason):
            why = {"due": "run_at reached", "retry": "retry delay over", "resumed": "resumed"}
            return [("INFO", "scheduler", f"job queued ({why[reason]})", 0)]
        case JobExecuting():
            return [("INFO", "worker", f"attempt {event.attempt} executing ({event.by})", 0)]
        case ExecutionLogged():
            return [
                (line.severity, "worker", mask_secrets(line.text), line.step)
                for line in event.lines[:LINES_PER_EVENT]
            ]
        case JobFailed():
            return [("ERROR", "controller", f"job failed: {event.reason}", 0)]
        case JobTimedOut():
            return [("ERROR", "controller", f"job timed out after {event.timeout:g}s", 0)]
        case JobRetryScheduled():
            text = (
                f"attempt {event.attempt} failed ({event.reason});"
                f" retrying at {event.retry_at.isoformat()}"
            )
            return [("WARN", "controller", text, 0)]
        case JobCancelled():
            return [("WARN", "api", f"job cancelled by {event.by}: {event.reason}", 0)]
        case JobUpdated():
            text = f"job updated by client: {', '.join(event.changed)}"
            return [("INFO", "api", text, 0)]
        case JobScheduled():
            return [("INFO", "api", f"job scheduled for {event.run_at.isoformat()}", 0)]
        case JobPaused():
            return [("INFO", "api", f"job paused by {event.by}", 0)]
        case JobBroken():
            rerun = f"; rerun as job {event.rerun_as}" if event.rerun_as else ""
            return [("WARN", "api", f"job broken by {event.by}: {event.reason}{rerun}", 0)]
        case CallbackDelivered():
            text = f"{event.event} callback delivered to {event.url} (HTTP {event.status_code})"
            return [("INFO", "callback", mask_secrets(text), 0)]
        case CallbackAttemptFailed():
            then = f"retry at {event.next_at.isoformat()}" if event.next_at else "abandoned"
            text = f"{event.event} callback to {event.url} failed: {event.error}; {then}"
            return [("WARN" if event.next_at else "ERROR", "callback", mask_secrets(text), 0)]
    return []


@overload
def project(
    batch: Sequence[Position],
    jobs: str = ...,
    log: str = ...,
    clients: str = ...,
    tasks: str = ...,
    runs: str = ...,
    *,
    fresh: Literal[False] = False,
) -> list[Statement]: ...
@overload
def project(
    batch: Sequence[Position],
    jobs: str = ...,
    log: str = ...,
    clients: str = ...,
    tasks: str = ...,
    runs: str = ...,
    *,
    fresh: Literal[True],
) -> list[Statement | Rows]: ...
def project(
    batch: Sequence[Position],
    jobs: str = "rm_jobs",
    log: str = "rm_job_log",
    clients: str = "rm_clients",
    tasks: str = "rm_tasks",
    runs: str = "rm_task_runs",
    *,
    fresh: bool = False,
) -> list[Statement] | list[Statement | Rows]:
    """The statements that apply `batch` (in store order) to the read models.

    The batch is cut at each `FinishedJobsCleared`: what precedes it, then the clearing, then
    the rest, so a clearing removes exactly the jobs finished at its place in the log, however
    the live projector or a replay happened to batch the events.

    `fresh`: the tables are being built from position 0 and hold nothing of what `batch`
    brings, so its new jobs and its log rows come as `Rows`, to be copied in where they
    stand in the list, rather than inserted against what is there. The log rows then come
    unfiltered: whoever builds so must finish with `orphan_log_rows`.
    """
    statements: list[Statement | Rows] = []
    for segment, clearing in segments(batch):
        statements += task_statements(segment, tasks)
        # A run's row before its job's, so the job's events in the segment reach it.
        statements += run_inserts(segment, runs, jobs)
        statements += _project_segment(segment, jobs, log, clients, runs, fresh)
        if clearing is not None:
            statements.append(clear_finished_jobs(clearing, jobs, log))
    return statements


def orphan_log_rows(jobs: str, log: str) -> Statement:
    """Deletes the log rows of jobs not in the list: what `project()` leaves out of a live
    table, after a `fresh` build. A job's rows never precede its submission and a cleared job
    never comes back, so a row whose job is listed at the end is one whose job was listed when
    the row came, and not cleared since."""
    listed = f"SELECT FROM {jobs} j WHERE j.job_id = l.job_id"
    return (f"DELETE FROM {log} l WHERE NOT EXISTS ({listed})", ())


KEYED_PLANS: Statement = ("SET LOCAL random_page_cost = 1.1", ())
"""Sent before `project()`'s statements. Each joins a batch's rows (a recordset PostgreSQL
guesses at 100 rows) to a read model by key; at the default cost of a random read (4, a
spinning disk's) a table of a few thousand to ~30,000 jobs is scanned whole for every batch
instead (EXPLAIN ANALYZE, 200 rows into 5,500 jobs: seq scan and hash join 5.5 ms, index
lookups 3.0 ms). The read models are hot in memory: a random read costs what a sequential
one does."""


def segments(
    batch: Sequence[Position],
) -> list[tuple[list[Position], FinishedJobsCleared | None]]:
    """The batch cut after each `FinishedJobsCleared`: (events before it, the clearing); the
    last segment has no clearing."""
    cut: list[tuple[list[Position], FinishedJobsCleared | None]] = []
    segment: list[Position] = []
    for item in batch:
        if isinstance(item.event, FinishedJobsCleared):
            cut.append((segment, item.event))
            segment = []
        else:
            segment.append(item)
    if segment or not cut:
        cut.append((segment, None))
    return cut


def clear_finished_jobs(
    event: FinishedJobsCleared, jobs: str = "rm_jobs", log: str = "rm_job_log"
) -> Statement:
    """Retention: deletes the finished, non-persist jobs that ended before the cutoff, and
    their log rows. Runs of scheduled tasks stay."""
    return (
        f"WITH cleared AS (DELETE FROM {jobs} WHERE finished_at < %s AND NOT persist"
        " AND state = ANY(%s) RETURNING job_id)"
        f" DELETE FROM {log} WHERE job_id IN (SELECT job_id FROM cleared)",
        (event.finished_before, sorted(str(state) for state in FINAL_STATES)),
    )


JOB_COLUMNS: Columns = (
    ("job_uuid", "uuid"),
    ("job_id", "bigint"),
    ("client", "text"),
    ("workflow", "text"),
    ("priority", "int"),
    ("state", "text"),
    ("attempt", "int"),
    ("created_at", "timestamptz"),
    ("updated_at", "timestamptz"),
    ("run_at", "timestamptz"),
    ("version", "bigint"),
    ("parameters", "jsonb"),
    ("persist", "bool"),
    ("finished_at", "timestamptz"),
    ("dialect", "text"),
    ("attributes", "jsonb"),
    ("executing", "bool"),
)
"""A new job's row in the job list."""
_job_values = itemgetter(*(name for name, _ in JOB_COLUMNS))
"""A new job's row (a dict) as a tuple, in `JOB_COLUMNS` order."""

MOVE_COLUMNS: Columns = (
    ("job_uuid", "uuid"),
    ("state", "text"),
    ("version", "bigint"),
    ("updated_at", "timestamptz"),
    ("attempt", "int"),
    ("priority", "int"),
    ("run_at", "timestamptz"),
    ("persist", "bool"),
    ("finished_at", "timestamptz"),
    ("executing", "bool"),
)
"""What a segment changes of a job listed before it (null: left as it is)."""

LOG_COLUMNS: Columns = (
    ("id", "bigint"),
    ("job_id", "bigint"),
    ("severity", "int"),
    ("progname", "text"),
    ("message", "text"),
    ("created_at", "timestamptz"),
    ("task_id", "int"),
)


class LogRow(msgspec.Struct, gc=False):
    """A row of the job log, as `LOG_COLUMNS` names it (a Struct: a replay builds one for
    each event, in a third of the time of a dict, and msgspec encodes it faster)."""

    id: int
    job_id: int
    severity: int
    progname: str
    message: str
    created_at: datetime
    task_id: int


def _project_segment(
    batch: Sequence[Position], jobs: str, log: str, clients: str, runs: str, fresh: bool
) -> list[Statement | Rows]:
    new: dict[int, dict[str, Any]] = {}  # by job number: an int hashes in C, a UUID in Python
    moved: dict[int, dict[str, Any]] = {}
    progress: dict[int, RunProgress] = {}
    log_records: list[LogRow] = []
    statements: list[Statement | Rows] = []  # the clients' first, in log order
    for item in batch:  # one pass: a replay's hot loop
        event = item.event
        if isinstance(event, JobEvent):
            state = _fold_job_row(event, new, moved)
            run = progress.get(event.job_id)
            if run is None:
                run = progress[event.job_id] = RunProgress(event.job_id)
            run.apply(event, state)
        elif not isinstance(event, _OF_A_JOB):
            if isinstance(event, (ClientRegistered, ClientRevoked)):
                statements.append(_client_statement(event, clients))
            continue
        first = item.position * LINES_PER_EVENT
        for n, (severity, progname, message, task_id) in enumerate(log_rows(event)):
            log_records.append(
                LogRow(
                    first + n,
                    event.job_id,
                    SEVERITY[severity],
                    progname,
                    message,
                    event.at,
                    task_id,
                )
            )
    if new and fresh:
        statements.append(Rows(jobs, JOB_COLUMNS, [_job_values(row) for row in new.values()]))
    elif new:
        statements.append(
            (
                f"INSERT INTO {jobs} ({names(JOB_COLUMNS)})"
                f" SELECT * FROM {recordset(JOB_COLUMNS)} ON CONFLICT (job_uuid) DO NOTHING",
                (records(new.values()),),
            )
        )
    if moved:
        # No row, no update: events of a job cleared by retention leave no trace.
        statements.append(
            (
                f"UPDATE {jobs} AS j SET state = u.state, version = u.version,"
                " updated_at = u.updated_at, attempt = coalesce(u.attempt, j.attempt),"
                " priority = coalesce(u.priority, j.priority),"
                " run_at = coalesce(u.run_at, j.run_at), persist = coalesce(u.persist, j.persist),"
                " finished_at = coalesce(j.finished_at, u.finished_at),"
                " executing = coalesce(u.executing, j.executing)"
                f" FROM {recordset(MOVE_COLUMNS)}"
                " WHERE j.job_uuid = u.job_uuid AND j.version < u.version",
                (records(moved.values()),),
            )
        )
    statements += run_updates(progress.values(), runs)
    if log_records and fresh:
        statements.append(Rows(log, LOG_COLUMNS, [astuple(row) for row in log_records]))
    elif log_records:
        # Only rows of jobs in the list: a late event of a job cleared by retention (a
        # callback, output) adds none. A job's rows never precede its submission, and jobs
        # leave only between segments, so this is the same under any batching.
        statements.append(
            (
                f"INSERT INTO {log} ({names(LOG_COLUMNS)}) SELECT u.* FROM {recordset(LOG_COLUMNS)}"
                f" WHERE EXISTS (SELECT 1 FROM {jobs} j WHERE j.job_id = u.job_id)"
                " ON CONFLICT (id) DO NOTHING",
                (records(log_records),),
            )
        )
    return statements


def _client_statement(event: ClientRegistered | ClientRevoked, clients: str) -> Statement:
    if isinstance(event, ClientRevoked):
        return (f"UPDATE {clients} SET revoked_at = %s WHERE name = %s", (event.at, event.name))
    return (
        f"INSERT INTO {clients} (name, key_hash, key_lookup, key_hint, admin,"
        " registered_at, revoked_at) VALUES (%s, %s, %s, %s, %s, %s, NULL)"
        " ON CONFLICT (name) DO UPDATE SET key_hash = excluded.key_hash,"
        " key_lookup = excluded.key_lookup, key_hint = excluded.key_hint,"
        " admin = excluded.admin, registered_at = excluded.registered_at,"
        " revoked_at = NULL",
        (event.name, event.key_hash, event.key_lookup, event.key_hint, event.admin, event.at),
    )


_STATE_AFTER = {kind: str(state) for kind, (_, state) in TRANSITIONS.items() if state}
"""The state each kind of job event leads to (JobSubmitted and JobUpdated name theirs)."""

_MOVE_NAMES = tuple(name for name, _ in MOVE_COLUMNS)
_WITH_ATTEMPT = frozenset(kind for kind in TRANSITIONS if "attempt" in kind.__struct_fields__)
_FINISHING_KINDS = frozenset(_FINISHING)


def _fold_job_row(
    event: JobEvent, new: dict[int, dict[str, Any]], moved: dict[int, dict[str, Any]]
) -> str:
    """Folds a job event into its job's new row (`new`) or its change (`moved`), both by job
    number, and returns the state it leads to. A hot loop of a replay: the event's kind is
    looked up, not tested class by class."""
    kind = type(event)
    if kind is JobSubmitted:
        assert isinstance(event, JobSubmitted)
        new[event.job_id] = {
            "job_uuid": event.id,
            "job_id": event.job_id,
            "client": event.client,
            "workflow": event.workflow,
            "priority": event.priority,
            "state": event.state,  # a `JobState` value (checked when decoded)
            "attempt": 0,
            "created_at": event.at,
            "updated_at": event.at,
            "run_at": event.run_at,
            "version": event.version,
            "parameters": event.parameters,
            "persist": False,
            "finished_at": None,
            "dialect": event.dialect,
            "attributes": event.attributes,
            "executing": False,
        }
        return event.state
    row = new.get(event.job_id) or moved.get(event.job_id)
    if row is None:
        row = moved[event.job_id] = dict.fromkeys(_MOVE_NAMES)
        row["job_uuid"] = event.id
    row["state"] = state = _STATE_AFTER.get(kind) or str(state_after(event))
    row["version"], row["updated_at"] = event.version, event.at
    if kind in _WITH_ATTEMPT and (attempt := getattr(event, "attempt")) is not None:  # noqa: B009
        row["attempt"] = attempt
    if kind in _FINISHING_KINDS and row["finished_at"] is None:
        row["finished_at"] = event.at
    if kind is JobStarted:
        row["executing"] = False
    elif kind is JobExecuting:
        row["executing"] = True
    elif kind is JobRetryScheduled:
        assert isinstance(event, JobRetryScheduled)
        row["run_at"] = event.retry_at
    elif kind is JobQueued or kind is JobScheduled or kind is JobUpdated:
        assert isinstance(event, (JobQueued, JobScheduled, JobUpdated))
        if event.priority is not None:
            row["priority"] = event.priority
        if not isinstance(event, JobQueued) and event.run_at is not None:
            row["run_at"] = event.run_at
        if isinstance(event, JobUpdated) and event.persist is not None:
            row["persist"] = event.persist
    return state


KEYS = (
    ("rm_jobs", "job_uuid"),
    ("rm_job_log", "id"),
    ("rm_clients", "name"),
    ("rm_tasks", "task_uuid"),
    ("rm_task_runs", "run_id"),
)
"""Each read model and its key, in `state_hash` order."""


def state_hash(curs: Cursor[Any], prefix: str = "") -> str:
    """SHA-256 over every read-model row in key order, as PostgreSQL writes the rows out
    (`COPY ... TO STDOUT`): equal hashes mean identical state. Streamed, so a large history
    is never held whole."""
    digest = hashlib.sha256()
    for table, key in KEYS:
        digest.update(f"{table}\n".encode())
        with curs.copy(f"COPY (SELECT * FROM {prefix}{table} ORDER BY {key}) TO STDOUT") as copy:
            for block in copy:
                digest.update(block)
    return digest.hexdigest()
