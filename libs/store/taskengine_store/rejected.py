"""Messages set aside by a consumer (`rejected_messages`): how they are recorded and read.

A consumer sets a message aside when it can never handle it (undecodable, not an event from
the store) or when handling it failed the same way N times; it then goes on with the next one.
The row keeps what is needed to inspect it (subject, headers, a bounded prefix of the payload,
the error); `record` is committed with the consumer's tracking record when the message had a
position, so a set-aside event counts as handled and is not redone after a restart.
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec
from taskengine_contracts.events import decode

from taskengine_store.store import Entry, EventStore, Position, Statement

PAYLOAD_LIMIT = 4096
"""Bytes of a payload kept: enough to see what it was, bounded whatever was sent."""
ERROR_LIMIT = 1000
_HEADER_LIMIT = 256


@dataclass(frozen=True)
class Rejected:
    """One message set aside, as a consumer saw it."""

    consumer: str
    subject: str
    payload: bytes
    error: str
    stream_seq: int | None = None
    """Its sequence in the JetStream stream (None for the projector: it reads the store)."""
    position: int | None = None
    """Its position in the store's order, when it carried one."""
    headers: dict[str, str] = field(default_factory=dict)
    attempts: int = 1

    @property
    def msg_id(self) -> str | None:
        return self.headers.get("Nats-Msg-Id")


_INSERT = (
    "INSERT INTO rejected_messages (consumer, stream_seq, subject, position, msg_id, headers,"
    " payload, payload_size, error, attempts, first_seen, last_seen)"
    " VALUES (%s, %s, %s, %s, %s, %s::jsonb, %s, %s, %s, %s, %s, %s)"
    " ON CONFLICT (consumer, stream_seq) DO UPDATE SET last_seen = excluded.last_seen,"
    " attempts = rejected_messages.attempts + excluded.attempts, error = excluded.error"
)


def _clip(text: str, limit: int) -> str:
    """At most `limit` characters, without NUL (PostgreSQL's text and jsonb refuse it)."""
    text = text.replace("\x00", "\\0")
    return text if len(text) <= limit else text[:limit] + "..."


def record(rejected: Rejected, at: datetime | None = None) -> Statement:
    """The statement recording `rejected` (a redelivery of the same stream message bumps it)."""
    at = at or datetime.now(UTC)
    headers = {
        _clip(str(k), _HEADER_LIMIT): _clip(str(v), _HEADER_LIMIT)
        for k, v in list(rejected.headers.items())[:32]
    }
    msg_id = rejected.msg_id
    return (
        _INSERT,
        (
            rejected.consumer,
            rejected.stream_seq,
            _clip(rejected.subject, _HEADER_LIMIT),
            rejected.position,
            None if msg_id is None else _clip(msg_id, _HEADER_LIMIT),
            msgspec.json.encode(headers).decode(),
            rejected.payload[:PAYLOAD_LIMIT],
            len(rejected.payload),
            _clip(rejected.error, ERROR_LIMIT),
            rejected.attempts,
            at,
            at,
        ),
    )


def counts(store: EventStore) -> dict[str, int]:
    """How many messages each consumer set aside."""
    rows = store.query("SELECT consumer, count(*) AS n FROM rejected_messages GROUP BY consumer")
    return {row["consumer"]: row["n"] for row in rows}


def listing(store: EventStore, limit: int = 1000) -> list[dict[str, Any]]:
    """The last `limit` set-aside messages, oldest first."""
    rows = store.query(
        "SELECT id, consumer, stream_seq, subject, position, msg_id, headers, payload,"
        " payload_size, error, attempts, first_seen, last_seen FROM rejected_messages"
        " ORDER BY id DESC LIMIT %s",
        (limit,),
    )
    return rows[::-1]


def set_aside_positions(store: EventStore, consumer: str) -> set[int]:
    """The store positions `consumer` set aside (the projector and a replay leave them out)."""
    rows = store.query(
        "SELECT position FROM rejected_messages WHERE consumer = %s AND position IS NOT NULL",
        (consumer,),
    )
    return {row["position"] for row in rows}


def decoded(
    notes: list[Entry],
    skip: Container[int] = frozenset(),
) -> tuple[list[Position], list[tuple[Entry, str]]]:
    """The stored events of `notes` not in `skip`, and those that do not decode (with why)."""
    events: list[Position] = []
    undecodable: list[tuple[Entry, str]] = []
    for note in notes:
        if note.id in skip:
            continue
        try:
            events.append(Position(note.id, decode(note.state)))
        except msgspec.DecodeError as error:
            undecodable.append((note, f"undecodable: {error}"))
    return events, undecodable
