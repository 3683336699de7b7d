"""Named queries of the read models (`projections.py`, `task_projections.py`): what the
gateway's views read. Each takes the store and plain values and returns rows; callers run
them off the event loop (`Runtime.call`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from taskengine_contracts.events import decode

from taskengine_store.store import EventStore, Position

# --- jobs (`rm_jobs`, `rm_job_log`) -------------------------------------------------------------

JOB_ORDER = {
    "id": "job_id",
    "client": "client",
    "workflow": "workflow",
    "priority": "priority",
    "position": "position",
    "created_at": "created_at",
    "updated_at": "updated_at",
    "queue_state": "state",
    "run_at": "run_at",
}
"""The orders a job list may take: a view's field name and its column."""
_JOBS_WITH_POSITION = (
    "WITH queue AS (SELECT job_uuid, rank() OVER (ORDER BY priority, updated_at, job_id)"
    " AS position FROM rm_jobs WHERE state = 'queued')"
    " SELECT j.*, coalesce(q.position, 0) AS position FROM rm_jobs j"
    " LEFT JOIN queue q USING (job_uuid)"
)


@dataclass(frozen=True)
class JobFilter:
    """Which of a client's jobs a list holds (None: any), in which order, how many."""

    client: str | None
    """None: every client's jobs (an admin's dashboard)."""
    states: Sequence[str] | None = None
    created_from: datetime | None = None
    created_to: datetime | None = None
    job_ids: Sequence[int] | None = None
    persist: bool | None = None
    search: str | None = None
    """Text the job's parameters contain (no wildcards)."""
    order_by: str = "id"
    ascending: bool = False
    limit: int = 10
    nothing: bool = False
    """True: an empty list (e.g. another tenant's jobs were asked for)."""
    dialect: str | None = None
    """Only jobs submitted through this dialect."""


def job_list(store: EventStore, wanted: JobFilter) -> list[dict[str, Any]]:
    """The client's jobs with their queue positions (0: not queued)."""
    where, args = ["true"], list[object]()
    if wanted.client is not None:
        where.append("j.client = %s")
        args.append(wanted.client)
    if wanted.dialect is not None:
        where.append("j.dialect = %s")
        args.append(wanted.dialect)
    if wanted.nothing:
        where.append("false")
    if wanted.states is not None:
        where.append("j.state = ANY(%s)")
        args.append(list(wanted.states))
    if wanted.created_from is not None:
        where.append("j.created_at >= %s")
        args.append(wanted.created_from)
    if wanted.created_to is not None:
        where.append("j.created_at <= %s")
        args.append(wanted.created_to)
    if wanted.job_ids is not None:
        where.append("j.job_id = ANY(%s)")
        args.append(list(wanted.job_ids))
    if wanted.persist is not None:
        where.append("j.persist = %s")
        args.append(wanted.persist)
    if wanted.search:
        where.append("j.parameters::text ILIKE %s")
        args.append("%" + wanted.search.replace("%", r"\%").replace("_", r"\_") + "%")
    direction = "ASC" if wanted.ascending else "DESC"
    sql = (
        f"{_JOBS_WITH_POSITION} WHERE {' AND '.join(where)}"
        f" ORDER BY {JOB_ORDER[wanted.order_by]} {direction}, j.job_id {direction} LIMIT %s"
    )
    return store.query(sql, [*args, wanted.limit])


def job_dashboard(store: EventStore, client: str) -> list[dict[str, Any]]:
    """The client's started, queued and scheduled jobs, in admission order."""
    return store.query(
        f"{_JOBS_WITH_POSITION} WHERE j.client = %s AND j.state = ANY(%s)"
        " ORDER BY j.priority, j.updated_at, j.job_id",
        [client, ["admitted", "running", "queued", "scheduled"]],
    )


UNFINISHED = ("scheduled", "queued", "admitted", "running", "retry_wait", "paused")


def jobs_by_state_and_priority(store: EventStore, client: str | None) -> list[dict[str, Any]]:
    """Jobs not yet ended counted by state and priority: the client's, or everyone's (None)."""
    return store.query(
        "SELECT state, priority, count(*) AS jobs FROM rm_jobs"
        " WHERE state = ANY(%s) AND (%s::text IS NULL OR client = %s)"
        " GROUP BY state, priority ORDER BY priority, state",
        (list(UNFINISHED), client, client),
    )


def jobs_queued_ahead(store: EventStore, priority: int, updated_at: datetime, job_id: int) -> int:
    """How many queued jobs come before a job of this priority, queued then."""
    rows = store.query(
        "SELECT count(*) AS ahead FROM rm_jobs WHERE state = 'queued'"
        " AND (priority, updated_at, job_id) < (%s, %s, %s)",
        (priority, updated_at, job_id),
    )
    return int(rows[0]["ahead"])


def job_log(store: EventStore, job_id: int) -> list[dict[str, Any]]:
    """The job's log lines, oldest first."""
    return store.query("SELECT * FROM rm_job_log WHERE job_id = %s ORDER BY id", (job_id,))


def job_output(store: EventStore, job_id: int, start: int, length: int) -> dict[str, Any]:
    """What the job's steps printed (step starts and exits included), as one text: its
    `size`, and `data`, up to `length` characters from `start` (1-based)."""
    [row] = store.query(
        "WITH f AS (SELECT coalesce(string_agg(message || chr(10), '' ORDER BY id), '') AS text"
        " FROM rm_job_log WHERE job_id = %s AND progname = 'worker' AND task_id > 0)"
        " SELECT length(text) AS size, substr(text, %s, %s) AS data FROM f",
        (job_id, start, length),
    )
    return row


def waiting_jobs(store: EventStore, client: str, dialect: str, states: Sequence[str]) -> int:
    """How many of the client's jobs of `dialect` are in one of `states`."""
    rows = store.query(
        "SELECT count(*) AS n FROM rm_jobs WHERE client = %s AND dialect = %s AND state = ANY(%s)",
        (client, dialect, list(states)),
    )
    return int(rows[0]["n"])


def job_tallies(store: EventStore, client: str, dialect: str) -> list[dict[str, Any]]:
    """The client's jobs of `dialect` counted by state, executing, `type` and `priority`
    attributes, with the oldest creation of each group: one statement, one snapshot."""
    return store.query(
        "SELECT state, executing, attributes->>'type' AS type,"
        " attributes->>'priority' AS priority, count(*) AS n, min(created_at) AS oldest"
        " FROM rm_jobs WHERE client = %s AND dialect = %s"
        " GROUP BY 1, 2, 3, 4",
        (client, dialect),
    )


JOB_COUNTS = {
    "queued": "state = 'queued'",
    "started": "state IN ('admitted', 'running')",
    "completed": "state = 'succeeded'",
    "failed": "state IN ('failed', 'timed_out')",
    "pending": "state = 'retry_wait'",
    "broken": "state IN ('broken', 'cancelled')",
    "scheduled": "state = 'scheduled'",
    "paused": "state = 'paused'",
}
"""What `job_counts` counts, by the Task Engine's names for its states."""


def job_counts(store: EventStore) -> dict[str, int]:
    """All jobs counted by `JOB_COUNTS`, plus `admitted` and the `attempts` run so far."""
    counts = ", ".join(
        f"count(*) FILTER (WHERE {cond}) AS {name}" for name, cond in JOB_COUNTS.items()
    )
    [row] = store.query(
        f"SELECT {counts}, coalesce(sum(attempt), 0) AS attempts,"
        " count(*) FILTER (WHERE state = 'admitted') AS admitted FROM rm_jobs"
    )
    return {name: int(value) for name, value in row.items()}


def job_client(store: EventStore, job_id: int) -> str | None:
    """The client of a projected job (None: not projected, or cleared by retention)."""
    rows = store.query("SELECT client FROM rm_jobs WHERE job_id = %s", (job_id,))
    return rows[0]["client"] if rows else None


def job_dialect(store: EventStore, job: UUID) -> str | None:
    """The dialect of a projected job (None: not projected, or cleared by retention)."""
    rows = store.query("SELECT dialect FROM rm_jobs WHERE job_uuid = %s", (job,))
    return rows[0]["dialect"] if rows else None


def events_of_jobs(
    store: EventStore, client: str, dialect: str, after: int, upto: int, limit: int
) -> list[Position]:
    """The events of the client's jobs of `dialect` in positions (after, upto], at most
    `limit`, in order."""
    rows = store.query(
        "SELECT notification_id, state FROM stored_events"
        " WHERE notification_id > %s AND notification_id <= %s AND originator_id IN"
        " (SELECT job_uuid FROM rm_jobs WHERE client = %s AND dialect = %s)"
        " ORDER BY notification_id LIMIT %s",
        (after, upto, client, dialect, limit),
    )
    return [Position(row["notification_id"], decode(bytes(row["state"]))) for row in rows]


# --- scheduled tasks (`rm_tasks`, `rm_task_runs`) ---------------------------------------------


def task_row(store: EventStore, task: UUID, client: str) -> dict[str, Any] | None:
    rows = store.query(
        "SELECT * FROM rm_tasks WHERE task_uuid = %s AND client = %s", (task, client)
    )
    return rows[0] if rows else None


def task_list(
    store: EventStore,
    client: str | None,
    limit: int,
    offset: int,
    status: str | None = None,
    schedule_kind: str | None = None,
    created_by: UUID | None = None,
) -> list[dict[str, Any]]:
    """The client's tasks (every client's: None), newest first."""
    where, args = ["true"], list[object]()
    for column, value in (
        ("client", client),
        ("status", status),
        ("schedule_kind", schedule_kind),
        ("created_by", created_by and str(created_by)),
    ):
        if value is not None:
            where.append(f"{column} = %s")
            args.append(value)
    sql = (
        f"SELECT * FROM rm_tasks WHERE {' AND '.join(where)}"
        " ORDER BY created_at DESC, task_uuid LIMIT %s OFFSET %s"
    )
    return store.query(sql, [*args, limit, offset])


def task_runs(store: EventStore, task: UUID, limit: int, offset: int) -> list[dict[str, Any]]:
    """The task's runs, latest fire first."""
    return store.query(
        "SELECT * FROM rm_task_runs WHERE task_uuid = %s"
        " ORDER BY fire_at DESC, created_at DESC LIMIT %s OFFSET %s",
        (task, limit, offset),
    )


def open_task_runs(store: EventStore, task: UUID, states: Sequence[str]) -> list[int]:
    """The jobs of the task's runs whose job is in one of `states` (as projected)."""
    rows = store.query(
        "SELECT job_id FROM rm_task_runs WHERE task_uuid = %s AND job_id IS NOT NULL"
        " AND status = ANY(%s)",
        (task, list(states)),
    )
    return [row["job_id"] for row in rows]


# --- Drove task ids (`drove_task_ids`, written with each Drove job's submission) ----------------


def drove_job_ids(
    store: EventStore,
    client: str,
    limit: int,
    source_app: str | None = None,
    task_id: str | None = None,
) -> list[int]:
    """The job numbers of the client's live Drove tasks (of that app, with that taskId),
    newest first."""
    where, args = ["client = %s"], list[object]([client])
    for column, value in (("source_app", source_app), ("task_id", task_id)):
        if value is not None:
            where.append(f"{column} = %s")
            args.append(value)
    sql = f"SELECT job_id FROM drove_task_ids WHERE {' AND '.join(where)} ORDER BY job_id DESC"
    return [row["job_id"] for row in store.query(sql + " LIMIT %s", (*args, limit))]


def drove_rerun(job_id: int, rerun_as: int) -> tuple[str, tuple[int, int]]:
    """The statement that makes a Drove task's taskId name its rerun from now on."""
    return "UPDATE drove_task_ids SET job_id = %s WHERE job_id = %s", (rerun_as, job_id)


def drove_forget(job_id: int) -> tuple[str, tuple[int]]:
    """The statement that takes a Drove task out of the listings (its taskId is free again)."""
    return "DELETE FROM drove_task_ids WHERE job_id = %s", (job_id,)
