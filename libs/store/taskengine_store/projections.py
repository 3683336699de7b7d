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
from typing import Any

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

from taskengine_store.store import Position, Statement
from taskengine_store.task_projections import run_inserts, run_updates, task_statements

SEVERITY = {"DEBUG": 0, "INFO": 1, "WARN": 2, "ERROR": 3}
LINES_PER_EVENT = 1000
"""Log row ids are position * 1000 + line: stable across replays."""

PROJECTOR = "projector"

_FINISHING = tuple(t for t, (_, state) in TRANSITIONS.items() if state in FINAL_STATES)
"""Events that end a job (a `broken` after a completion keeps the first end as finished_at)."""

_OF_A_JOB = (JobEvent, ExecutionLogged, CallbackDelivered, CallbackAttemptFailed)
"""The events that name a job: only they can have rows in its log."""


def log_rows(event: Event) -> list[tuple[str, str, str, int]]:
    """(severity, progname, message, task_id) rows an event contributes to its job's log."""
    match event:
        case JobSubmitted():
            message = {
                "path": "POST /job",
                "parameters": {
                    "client": event.client,
                    "job": {"workflow": event.workflow},
                    "parameters": event.parameters,
                    "priority": event.priority,
                },
                "payload": "job_created",
            }
            return [("INFO", "api", mask_secrets(json.dumps(message, default=str)), 0)]
        case JobQueued(reason=reason):
            why = {"due": "run_at reached", "retry": "retry delay over", "resumed": "resumed"}
            return [("INFO", "scheduler", f"job queued ({why[reason]})", 0)]
        case JobAdmitted():
            text = f"job admitted, attempt {event.attempt} ({event.running}/{event.max_jobs} slots)"
            return [("INFO", "controller", text, 0)]
        case JobStarted():
            where = f", Kubernetes Job {event.job_name}" if event.job_name else ""
            text = f"attempt {event.attempt} started ({event.executor}{where})"
            return [("INFO", "worker", text, 0)]
        case JobExecuting():
            return [("INFO", "worker", f"attempt {event.attempt} executing ({event.by})", 0)]
        case ExecutionLogged():
            return [
                (line.severity, "worker", mask_secrets(line.text), line.step)
                for line in event.lines[:LINES_PER_EVENT]
            ]
        case JobSucceeded():
            return [("INFO", "controller", "job has completed successfully", 0)]
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


def project(
    batch: Sequence[Position],
    jobs: str = "rm_jobs",
    log: str = "rm_job_log",
    clients: str = "rm_clients",
    tasks: str = "rm_tasks",
    runs: str = "rm_task_runs",
) -> list[Statement]:
    """The statements that apply `batch` (in store order) to the read models.

    The batch is cut at each `FinishedJobsCleared`: what precedes it, then the clearing, then
    the rest, so a clearing removes exactly the jobs finished at its place in the log, however
    the live projector or a replay happened to batch the events.
    """
    statements: list[Statement] = []
    for segment, clearing in segments(batch):
        statements += task_statements(segment, tasks)
        # A run's row before its job's, so the job's events in the segment reach it.
        statements += run_inserts(segment, runs, jobs)
        statements += _project_segment(segment, jobs, log, clients, runs)
        if clearing is not None:
            statements.append(clear_finished_jobs(clearing, jobs, log))
    return statements


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


def _project_segment(
    batch: Sequence[Position], jobs: str, log: str, clients: str, runs: str
) -> list[Statement]:
    new: dict[Any, list[Any]] = {}
    moved: dict[Any, list[Any]] = {}
    log_values: list[list[Any]] = [[], [], [], [], [], [], []]
    for item in batch:
        event = item.event
        if isinstance(event, _OF_A_JOB):
            for n, (severity, progname, message, task_id) in enumerate(log_rows(event)):
                row = (
                    item.position * LINES_PER_EVENT + n,
                    event.job_id,
                    SEVERITY[severity],
                    progname,
                    message,
                    event.at,
                    task_id,
                )
                for column, value in zip(log_values, row, strict=True):
                    column.append(value)
        if isinstance(event, JobEvent):
            _fold_job_row(event, new, moved)
    statements: list[Statement] = []
    for item in batch:
        if isinstance(item.event, ClientRegistered):
            e = item.event
            statements.append(
                (
                    f"INSERT INTO {clients} (name, key_hash, key_lookup, key_hint, admin,"
                    " registered_at, revoked_at) VALUES (%s, %s, %s, %s, %s, %s, NULL)"
                    " ON CONFLICT (name) DO UPDATE SET key_hash = excluded.key_hash,"
                    " key_lookup = excluded.key_lookup, key_hint = excluded.key_hint,"
                    " admin = excluded.admin, registered_at = excluded.registered_at,"
                    " revoked_at = NULL",
                    (e.name, e.key_hash, e.key_lookup, e.key_hint, e.admin, e.at),
                )
            )
        elif isinstance(item.event, ClientRevoked):
            statements.append(
                (
                    f"UPDATE {clients} SET revoked_at = %s WHERE name = %s",
                    (item.event.at, item.event.name),
                )
            )
    if new:
        columns = list(zip(*new.values(), strict=True))
        statements.append(
            (
                f"INSERT INTO {jobs} (job_uuid, job_id, client, workflow, priority, state, attempt,"
                " created_at, updated_at, run_at, version, parameters, persist, finished_at,"
                " dialect, attributes, executing)"
                " SELECT * FROM unnest(%b::uuid[], %b::bigint[], %b::text[], %b::text[],"
                " %b::int[], %b::text[], %b::int[], %b::timestamptz[], %b::timestamptz[],"
                " %b::timestamptz[], %b::bigint[], %b::jsonb[], %b::bool[], %b::timestamptz[],"
                " %b::text[], %b::jsonb[], %b::bool[])"
                " ON CONFLICT (job_uuid) DO NOTHING",
                [list(c) for c in columns],
            )
        )
    if moved:
        columns = list(zip(*moved.values(), strict=True))
        # No row, no update: events of a job cleared by retention leave no trace.
        statements.append(
            (
                f"UPDATE {jobs} AS j SET state = u.state, version = u.version,"
                " updated_at = u.updated_at, attempt = coalesce(u.attempt, j.attempt),"
                " priority = coalesce(u.priority, j.priority),"
                " run_at = coalesce(u.run_at, j.run_at), persist = coalesce(u.persist, j.persist),"
                " finished_at = coalesce(j.finished_at, u.finished_at),"
                " executing = coalesce(u.executing, j.executing)"
                " FROM unnest(%b::uuid[], %b::text[], %b::bigint[], %b::timestamptz[], %b::int[],"
                " %b::int[], %b::timestamptz[], %b::bool[], %b::timestamptz[], %b::bool[])"
                " AS u(job_uuid, state, version, updated_at, attempt, priority, run_at, persist,"
                " finished_at, executing)"
                " WHERE j.job_uuid = u.job_uuid AND j.version < u.version",
                [list(c) for c in columns],
            )
        )
    statements += run_updates(batch, runs)
    if log_values[0]:
        # Only rows of jobs in the list: a late event of a job cleared by retention (a
        # callback, output) adds none. A job's rows never precede its submission, and jobs
        # leave only between segments, so this is the same under any batching.
        statements.append(
            (
                f"INSERT INTO {log} (id, job_id, severity, progname, message, created_at, task_id)"
                " SELECT u.* FROM unnest(%b::bigint[], %b::bigint[], %b::int[], %b::text[],"
                " %b::text[], %b::timestamptz[], %b::int[]) AS u(id, job_id, severity, progname,"
                " message, created_at, task_id)"
                f" WHERE EXISTS (SELECT 1 FROM {jobs} j WHERE j.job_id = u.job_id)"
                " ON CONFLICT (id) DO NOTHING",
                log_values,
            )
        )
    return statements


def _fold_job_row(event: JobEvent, new: dict[Any, list[Any]], moved: dict[Any, list[Any]]) -> None:
    state = str(state_after(event))
    attempt = getattr(event, "attempt", None)
    moves_fields = isinstance(event, (JobQueued, JobUpdated, JobScheduled))
    priority = getattr(event, "priority", None) if moves_fields else None
    run_at: datetime | None = event.retry_at if isinstance(event, JobRetryScheduled) else None
    if isinstance(event, (JobUpdated, JobScheduled)):
        run_at = event.run_at
    persist = event.persist if isinstance(event, JobUpdated) else None
    finished_at = event.at if isinstance(event, _FINISHING) else None
    executing = True if isinstance(event, JobExecuting) else None
    executing = False if isinstance(event, JobStarted) else executing
    if isinstance(event, JobSubmitted):
        new[event.id] = [
            event.id,
            event.job_id,
            event.client,
            event.workflow,
            event.priority,
            state,
            0,
            event.at,
            event.at,
            event.run_at,
            event.version,
            json.dumps(event.parameters, sort_keys=True),
            False,
            None,
            event.dialect,
            json.dumps(event.attributes, sort_keys=True),
            False,
        ]
    elif event.id in new:
        row = new[event.id]
        row[5], row[10], row[8] = state, event.version, event.at
        row[6] = attempt if attempt is not None else row[6]
        row[4] = priority if priority is not None else row[4]
        row[9] = run_at or row[9]
        row[12] = persist if persist is not None else row[12]
        row[13] = row[13] or finished_at
        row[16] = executing if executing is not None else row[16]
    else:
        previous = moved.get(event.id)
        moved[event.id] = [
            event.id,
            state,
            event.version,
            event.at,
            attempt if attempt is not None else (previous[4] if previous else None),
            priority if priority is not None else (previous[5] if previous else None),
            run_at or (previous[6] if previous else None),
            persist if persist is not None else (previous[7] if previous else None),
            (previous[8] if previous else None) or finished_at,
            executing if executing is not None else (previous[9] if previous else None),
        ]


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
