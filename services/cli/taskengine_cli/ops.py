"""Operator commands over the event store: follow the log, list set-aside messages, replay the
read models."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
from taskengine_contracts.events import Event
from taskengine_store import rejected
from taskengine_store.projections import PROJECTOR, project, state_hash
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


def replay(
    store: EventStore, batch: int = 5000, progress: Callable[[int, int], None] | None = None
) -> tuple[str, str, int]:
    """Rebuilds every read model from position 0 into scratch tables.

    Returns (replayed hash, live hash, position): the live hash is taken in one snapshot with
    the live projector's position, and the replay stops at exactly that position. `progress`
    is told (position reached, position to reach) after each batch.
    """
    live_hash, position = _live_snapshot(store)
    statements = [(f"DROP TABLE IF EXISTS {REPLAY_PREFIX}{t}", ()) for t in READ_MODELS]
    statements += [
        (f"CREATE TABLE {REPLAY_PREFIX}{t} (LIKE {t} INCLUDING ALL)", ()) for t in READ_MODELS
    ]
    store.execute(statements)
    done = 0
    skip = rejected.set_aside_positions(store, PROJECTOR)
    try:
        while done < position:
            notes = [n for n in store.notifications(done, batch) if n.id <= position]
            if not notes:
                break
            done = notes[-1].id
            if progress:
                progress(done, position)
            # What the live projector set aside (or could not decode) is left out here too.
            items, _ = rejected.decoded(notes, skip)
            if not items:
                continue
            tables = {name.removeprefix("rm_"): REPLAY_PREFIX + name for name in READ_MODELS}
            jobs, log, clients = tables["jobs"], tables["job_log"], tables["clients"]
            tasks, runs = tables["tasks"], tables["task_runs"]
            store.execute(
                project(items, jobs=jobs, log=log, clients=clients, tasks=tasks, runs=runs)
            )
        replayed = state_hash(store.query, prefix=REPLAY_PREFIX)
    finally:
        store.execute([(f"DROP TABLE IF EXISTS {REPLAY_PREFIX}{t}", ()) for t in READ_MODELS])
    return replayed, live_hash, position


def _live_snapshot(store: EventStore) -> tuple[str, int]:
    with store.datastore.transaction() as curs:
        curs.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        curs.execute(
            "SELECT notification_id FROM notification_tracking WHERE application_name = %s",
            (PROJECTOR,),
        )
        row = curs.fetchone()
        position = row["notification_id"] if row else 0

        def query(sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
            curs.execute(sql, params)
            return curs.fetchall()

        return state_hash(query), position


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
