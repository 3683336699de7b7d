"""Operator commands over the event store: follow the log, list set-aside messages, replay the
read models."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
from psycopg import Cursor
from taskengine_contracts.events import Event
from taskengine_store import rejected
from taskengine_store.projections import KEYED_PLANS, PROJECTOR, project, state_hash
from taskengine_store.schema import READ_MODELS
from taskengine_store.store import EventStore, Statement

REPLAY_PREFIX = "replay_"
_json = msgspec.json.Encoder()


def print_events(
    store: EventStore,
    after: int = 0,
    follow: bool = False,
    job: int | None = None,
    out: Callable[[str], None] = print,
) -> int:
    """Prints events after a position, one JSON line each; with `follow`, waits for more."""
    position = after
    while True:
        batch = store.events_after(position, 1000)
        for item in batch:
            if job is None or getattr(item.event, "job_id", None) == job:
                out(_line(item.position, item.event))
        if batch:
            position = batch[-1].position
        elif not follow:
            return position
        else:
            time.sleep(0.2)


PREVIEW = 200
"""Characters of a set-aside payload printed (the table keeps more)."""


def print_rejected(store: EventStore, limit: int = 1000, out: Callable[[str], None] = print) -> int:
    """Prints the messages consumers set aside, oldest first, one JSON line each; returns how
    many were printed."""
    rows = rejected.listing(store, limit)
    for row in rows:
        payload = bytes(row["payload"]).decode("utf-8", errors="replace")
        line = {
            "consumer": row["consumer"],
            "stream_seq": row["stream_seq"],
            "subject": row["subject"],
            "position": row["position"],
            "msg_id": row["msg_id"],
            "error": row["error"],
            "attempts": row["attempts"],
            "first_seen": row["first_seen"],
            "last_seen": row["last_seen"],
            "headers": row["headers"],
            "payload_size": row["payload_size"],
            "payload": payload[:PREVIEW],
        }
        out(_json.encode(line).decode())
    return len(rows)


def _line(position: int, event: Event) -> str:
    return _json.encode({"position": position, "event": event}).decode()


@dataclass(frozen=True)
class Replayed:
    replayed: str
    """The hash of the rebuilt read models."""
    live: str
    """The hash of the live read models, at `position`."""
    position: int
    rebuilt: float
    """Seconds the rebuild took (reading, projecting, applying), without either hash."""


def replay(
    store: EventStore, batch: int = 5000, progress: Callable[[int, int], None] | None = None
) -> Replayed:
    """Rebuilds every read model from position 0 into scratch tables and compares them.

    The live hash is taken in one snapshot with the live projector's position, and the replay
    stops at exactly that position. `progress` is told (position reached, position to reach)
    after each batch.

    The rebuild is one transaction, rolled back at the end: its tables are temporary (never
    written ahead to the log, invisible to other sessions) and carry only the unique indexes
    `project()` looks rows up by, the log is read in pages of `batch` through one server-side
    cursor (on its own connection), and each page goes through the live projector's
    `project()`. The cyclic garbage collector is off meanwhile: a page leaves no cycles, and
    its passes over the page's objects cost a third of the folding.
    """
    live_hash, position = _live_snapshot(store)
    skip = rejected.set_aside_positions(store, PROJECTOR)
    collecting = gc.isenabled()
    gc.disable()
    try:
        with store.datastore.transaction(commit=False) as curs:
            started = time.perf_counter()
            curs.execute(*KEYED_PLANS)
            for table in READ_MODELS:
                _scratch_copy(curs, table)
            # The log is read on a second connection, and the statements are pipelined (sent
            # without waiting for each result): PostgreSQL applies a page while the next one is
            # read, decoded and folded.
            with store.datastore.transaction() as reading, curs.connection.pipeline():
                for notes in store.notification_pages(reading, position, batch):
                    # What the live projector set aside (or could not decode) is left out too.
                    items, _ = rejected.decoded(notes, skip)
                    if items:
                        for query, params in project(items, **_REPLAY_TABLES):
                            curs.execute(query, params)
                    if progress:
                        progress(notes[-1].id, position)
            rebuilt = time.perf_counter() - started
            replayed = state_hash(curs, prefix=REPLAY_PREFIX)
    finally:
        if collecting:
            gc.enable()
    return Replayed(replayed, live_hash, position, rebuilt)


def _scratch_copy(curs: Cursor[Any], table: str) -> None:
    """A temporary, empty copy of `table` for a replay: its columns, defaults and checks, and
    only its unique indexes (what `project()`'s upserts and lookups need): the others would
    be kept up to date row by row for nothing."""
    scratch = REPLAY_PREFIX + table
    curs.execute(
        f"CREATE TEMPORARY TABLE {scratch} (LIKE {table} INCLUDING ALL EXCLUDING INDEXES)"
        " ON COMMIT DROP"
    )
    curs.execute(
        "SELECT array_agg(a.attname ORDER BY k.n) AS columns"
        " FROM pg_index i, unnest(i.indkey) WITH ORDINALITY AS k(attnum, n), pg_attribute a"
        " WHERE i.indrelid = %s::regclass AND i.indisunique AND i.indpred IS NULL"
        " AND a.attrelid = i.indrelid AND a.attnum = k.attnum"
        " GROUP BY i.indexrelid",
        (table,),
    )
    for row in curs.fetchall():
        columns = ", ".join(row["columns"])
        curs.execute(f"CREATE UNIQUE INDEX ON {scratch} ({columns})")


_REPLAY_TABLES = {
    "jobs": REPLAY_PREFIX + "rm_jobs",
    "log": REPLAY_PREFIX + "rm_job_log",
    "clients": REPLAY_PREFIX + "rm_clients",
    "tasks": REPLAY_PREFIX + "rm_tasks",
    "runs": REPLAY_PREFIX + "rm_task_runs",
}
"""`project()`'s tables in a replay: the scratch copies of `READ_MODELS`."""


def _live_snapshot(store: EventStore) -> tuple[str, int]:
    with store.datastore.transaction() as curs:
        curs.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        curs.execute(
            "SELECT notification_id FROM notification_tracking WHERE application_name = %s",
            (PROJECTOR,),
        )
        row = curs.fetchone()
        position = row["notification_id"] if row else 0
        return state_hash(curs), position


def reset_read_models(store: EventStore) -> None:
    """Empties the read models and rewinds the projector: it rebuilds them from position 0."""
    statements: list[Statement] = [(f"TRUNCATE {t}", ()) for t in READ_MODELS]
    statements.append(
        ("DELETE FROM notification_tracking WHERE application_name = %s", (PROJECTOR,))
    )
    store.execute(statements)


def rewind_relay(store: EventStore, after: int) -> None:
    """Moves the relay's position back, so it publishes everything after `after` again."""
    store.execute(
        [
            ("DELETE FROM notification_tracking WHERE application_name = 'relay'", ()),
            ("INSERT INTO notification_tracking VALUES ('relay', %s)", (after,)),
        ]
    )


__all__ = ["print_events", "print_rejected", "replay", "reset_read_models", "rewind_relay"]
