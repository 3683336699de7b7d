"""Read models projected from the event log: the job list (`rm_jobs`) and the job log.

`project()` turns a batch of positioned events into two set-based statements, so the live
projector and `taskengine replay` build identical tables from the same code.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from taskengine_contracts.events import (
    CallbackAttemptFailed,
    CallbackDelivered,
    ClientRegistered,
    Event,
    ExecutionLogged,
    JobAdmitted,
    JobBroken,
    JobCancelled,
    JobEvent,
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
from taskengine_core.jobs import state_after

from taskengine_store.store import Position, Statement

SEVERITY = {"DEBUG": 0, "INFO": 1, "WARN": 2, "ERROR": 3}
LINES_PER_EVENT = 1000
"""Log row ids are position * 1000 + line: stable across replays."""

PROJECTOR = "projector"


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
            return [("INFO", "worker", f"attempt {event.attempt} started ({event.executor})", 0)]
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
) -> list[Statement]:
    """The statements that apply `batch` (in store order) to the read models."""
    new: dict[Any, list[Any]] = {}
    moved: dict[Any, list[Any]] = {}
    log_values: list[list[Any]] = [[], [], [], [], [], [], []]
    for item in batch:
        event = item.event
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
                    " registered_at) VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (name) DO UPDATE"
                    " SET key_hash = excluded.key_hash, key_lookup = excluded.key_lookup,"
                    " key_hint = excluded.key_hint, admin = excluded.admin,"
                    " registered_at = excluded.registered_at",
                    (e.name, e.key_hash, e.key_lookup, e.key_hint, e.admin, e.at),
                )
            )
    if new:
        columns = list(zip(*new.values(), strict=True))
        statements.append(
            (
                f"INSERT INTO {jobs} (job_uuid, job_id, client, workflow, priority, state, attempt,"
                " created_at, updated_at, run_at, version, parameters, persist)"
                " SELECT * FROM unnest(%s::uuid[], %s::bigint[], %s::text[], %s::text[],"
                " %s::int[], %s::text[], %s::int[], %s::timestamptz[], %s::timestamptz[],"
                " %s::timestamptz[], %s::bigint[], %s::jsonb[], %s::bool[])"
                " ON CONFLICT (job_uuid) DO NOTHING",
                [list(c) for c in columns],
            )
        )
    if moved:
        columns = list(zip(*moved.values(), strict=True))
        statements.append(
            (
                f"UPDATE {jobs} AS j SET state = u.state, version = u.version,"
                " updated_at = u.updated_at, attempt = coalesce(u.attempt, j.attempt),"
                " priority = coalesce(u.priority, j.priority),"
                " run_at = coalesce(u.run_at, j.run_at), persist = coalesce(u.persist, j.persist)"
                " FROM unnest(%s::uuid[], %s::text[], %s::bigint[], %s::timestamptz[], %s::int[],"
                " %s::int[], %s::timestamptz[], %s::bool[]) AS u(job_uuid, state, version,"
                " updated_at, attempt, priority, run_at, persist)"
                " WHERE j.job_uuid = u.job_uuid AND j.version < u.version",
                [list(c) for c in columns],
            )
        )
    if log_values[0]:
        statements.append(
            (
                f"INSERT INTO {log} (id, job_id, severity, progname, message, created_at, task_id)"
                " SELECT * FROM unnest(%s::bigint[], %s::bigint[], %s::int[], %s::text[],"
                " %s::text[], %s::timestamptz[], %s::int[]) ON CONFLICT (id) DO NOTHING",
                log_values,
            )
        )
    return statements


def _fold_job_row(event: JobEvent, new: dict, moved: dict) -> None:
    state = str(state_after(event))
    attempt = getattr(event, "attempt", None)
    moves_fields = isinstance(event, (JobQueued, JobUpdated, JobScheduled))
    priority = getattr(event, "priority", None) if moves_fields else None
    run_at: datetime | None = event.retry_at if isinstance(event, JobRetryScheduled) else None
    if isinstance(event, (JobUpdated, JobScheduled)):
        run_at = event.run_at
    persist = event.persist if isinstance(event, JobUpdated) else None
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
        ]
    elif event.id in new:
        row = new[event.id]
        row[5], row[10], row[8] = state, event.version, event.at
        row[6] = attempt if attempt is not None else row[6]
        row[4] = priority if priority is not None else row[4]
        row[9] = run_at or row[9]
        row[12] = persist if persist is not None else row[12]
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
        ]


def state_hash(query: Callable[[str], list[dict]], prefix: str = "") -> str:
    """SHA-256 over every read-model row in key order: equal hashes mean identical state."""
    digest = hashlib.sha256()
    for table, key in (("rm_jobs", "job_uuid"), ("rm_job_log", "id"), ("rm_clients", "name")):
        for row in query(f"SELECT * FROM {prefix}{table} ORDER BY {key}"):
            digest.update(repr(sorted(row.items())).encode())
    return digest.hexdigest()
