"""Operator commands over the event store: follow the log, list set-aside messages, replay the
read models."""

from __future__ import annotations

import gc
import multiprocessing
import os
import signal
import time
from bisect import bisect_right
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, NamedTuple

import msgspec
from psycopg import Cursor
from psycopg.types.json import Json
from taskengine_contracts.events import Event
from taskengine_core.steps import die_with_parent
from taskengine_store import rejected
from taskengine_store.projections import (
    KEYED_PLANS,
    PROJECTOR,
    orphan_log_rows,
    project,
    state_hash,
)
from taskengine_store.recordsets import Rows, copy_data
from taskengine_store.schema import READ_MODELS
from taskengine_store.store import EventStore, LogPages, Statement

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


WORKERS = min(4, os.cpu_count() or 1)
"""A replay's folding processes: one a core, up to four (this process only hands their pages
over, and one PostgreSQL backend applies them all)."""


PAGE_BYTES = 16 * 2**20
"""A replay's page holds at most this much of stored events (or one event larger): with one
page more than there are workers in flight, a log of the largest events a client may submit
costs a replay tens of MB, not GBs."""


def replay(
    store: EventStore,
    batch: int = 5000,
    progress: Callable[[int, int], None] | None = None,
    workers: int = WORKERS,
    page_bytes: int = PAGE_BYTES,
) -> Replayed:
    """Rebuilds every read model from position 0 into scratch tables and compares them.

    The live hash is taken in one snapshot with the live projector's position, and the replay
    stops at exactly that position. `progress` is told (position reached, position to reach)
    after each page.

    The log is cut into pages of `batch` events (and at most `page_bytes` of them), which
    `workers` processes read (each on its own connection), decode and fold through the live
    projector's `project()`, as a `fresh` build: a page comes back as statements and COPY
    data, ready to send. Folding is
    most of a replay's work, and one process did it on one core. This process applies the
    pages in log order, in one transaction rolled back at the end: its tables are temporary
    (never written ahead to the log, invisible to other sessions) and carry only the unique
    indexes `project()`'s upserts and lookups need. At most one page more than there are
    workers is in flight: memory stays bounded however long the log.
    """
    pages = store.log_pages()
    # Forked: a worker needs only the code already imported here and a connection of its own
    # (spawned, each imported it again inside the rebuild's time). What else it inherits, the
    # store's pool and its threads, it never touches, and psycopg does not close a
    # connection it inherited.
    forking = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(
        workers,
        forking,
        initializer=_start_folding,
        initargs=(os.getpid(), pages.database_url, pages.table),
    ) as folders:
        live_hash, position = _live_snapshot(store)
        skip = sorted(rejected.set_aside_positions(store, PROJECTOR))
        with store.datastore.transaction(commit=False) as curs:
            started = time.perf_counter()
            curs.execute(*KEYED_PLANS)
            for table in READ_MODELS:
                _scratch_copy(curs, table)
            folding: deque[tuple[int, Future[list[Ready]]]] = deque()
            after = 0
            for upto in pages.ends(position, batch, page_bytes):
                # What the live projector set aside (or could not decode) is left out too.
                left_out = skip[bisect_right(skip, after) : bisect_right(skip, upto)]
                folding.append((upto, folders.submit(_fold, after, upto, frozenset(left_out))))
                after = upto
                while len(folding) > workers + 1:
                    _apply_next(curs, folding, position, progress)
            while folding:
                _apply_next(curs, folding, position, progress)
            curs.execute(*orphan_log_rows(_REPLAY_TABLES["jobs"], _REPLAY_TABLES["log"]))
            rebuilt = time.perf_counter() - started
            replayed = state_hash(curs, prefix=REPLAY_PREFIX)
    return Replayed(replayed, live_hash, position, rebuilt)


class Copied(NamedTuple):
    """A COPY statement and its data."""

    statement: str
    data: bytes


Ready = Statement | Copied
"""A page's statement as a folding process hands it over: parameters encoded, rows in COPY
format."""

_pages: LogPages | None = None
"""A folding process's reader of the log."""


def _apply_next(
    curs: Cursor[Any],
    folding: deque[tuple[int, Future[list[Ready]]]],
    position: int,
    progress: Callable[[int, int], None] | None,
) -> None:
    reached, page = folding.popleft()
    _apply(curs, page.result())
    if progress:
        progress(reached, position)


def _start_folding(command: int, database_url: str, table: str) -> None:
    global _pages
    # A worker ends with the command, however it ends: forked, it holds the pool's pipes
    # itself, so it would never hear that the command is gone.
    die_with_parent()
    if os.getppid() != command:
        os._exit(1)  # the command was gone before that took hold
    # Ctrl-C reaches the whole process group: the command stops the pool, once.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _pages = LogPages(database_url, table)
    # A page leaves no cycles, and the collector's passes over its objects cost a third of
    # the folding.
    gc.disable()


def _fold(after: int, upto: int, left_out: frozenset[int]) -> list[Ready]:
    """In a folding process: the page of the log after `after` up to `upto`, ready to send."""
    assert _pages is not None
    items, _ = rejected.decoded(_pages.between(after, upto), left_out)
    ready: list[Ready] = []
    with _pages.connection.cursor() as curs:
        for statement in project(items, **_REPLAY_TABLES, fresh=True):
            if isinstance(statement, Rows):
                ready.append(Copied(*copy_data(curs, statement)))
            else:
                query, params = statement
                ready.append((query, [_encoded(p) for p in params]))
    return ready


def _encoded(param: object) -> object:
    """A parameter as it crosses to the applying process: a `Json` as its encoded text."""
    if isinstance(param, Json):
        return Json(param.dumps(param.obj) if param.dumps else _json.encode(param.obj), _as_is)
    return param


def _as_is(data: bytes) -> bytes:
    return data


def _apply(curs: Cursor[Any], page: list[Ready]) -> None:
    for ready in page:
        if isinstance(ready, Copied):
            with curs.copy(ready.statement) as copy:
                copy.write(ready.data)
        else:
            curs.execute(*ready)


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
