"""Active/standby admission: only the holder of one PostgreSQL advisory lock admits jobs.

Each admission process takes a session advisory lock on a connection of its own before it
consumes. A standby polls for the lock (so it stays responsive to SIGTERM and keeps sending
heartbeats) and leads once PostgreSQL releases it: a killed leader's session ends, and its
lock with it. A leader whose lock connection is lost must stop at once; it exits, and its
supervisor restarts it as a standby.

Every commit of the leader carries a fence, so a leader that lost its lock cannot slip in a
commit before it notices: the fence fails the transaction unless the lock is still held, and
holds a shared transaction lock that a new leader waits out (`takeover`) before it reads the
state its predecessor left.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from typing import NoReturn

import psycopg
from taskengine_store.store import Statement

log = logging.getLogger(__name__)


def lock_key(name: str) -> int:
    """A fixed signed 64-bit advisory lock key derived from `name`."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


LEADER_KEY = lock_key("taskengine:admission")
COMMIT_KEY = lock_key("taskengine:admission:commit")
POLL = 0.5
"""How often a standby tries to take the lock (seconds)."""
CHECK = 1.0
"""How often the leader checks its lock connection (seconds)."""
CHECK_TIMEOUT = 5.0
_KEEPALIVES = {"keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2}


class LeadershipLost(RuntimeError):
    """The leader lock's connection broke: this process may no longer admit anything."""


class LeaderLock:
    """The admission leader lock, held by a dedicated connection for as long as it lives."""

    def __init__(self, database_url: str, key: int = LEADER_KEY, commit_key: int = COMMIT_KEY):
        self.database_url, self.key, self.commit_key = database_url, key, commit_key
        self.connection: psycopg.AsyncConnection | None = None

    async def acquire(self, poll: float = POLL) -> None:
        """Returns once this process holds the lock; a standby waits here."""
        waiting = False
        while True:
            try:
                if await self._try():
                    await self._takeover()
                    return
            except psycopg.Error as error:
                log.warning("admission: cannot try the leader lock (%s); retrying", error)
                await self.close()
            if not waiting:
                log.info("admission: standby, waiting for the leader lock")
                waiting = True
            await asyncio.sleep(poll)

    async def _try(self) -> bool:
        if self.connection is None or self.connection.closed:
            self.connection = await psycopg.AsyncConnection.connect(
                self.database_url, autocommit=True, **_KEEPALIVES
            )
        cursor = await self.connection.execute("SELECT pg_try_advisory_lock(%s)", (self.key,))
        row = await cursor.fetchone()
        return bool(row and row[0])

    async def _takeover(self) -> None:
        """Waits until no commit fenced by a previous leader is still in flight."""
        assert self.connection is not None
        await self.connection.execute("SELECT pg_advisory_lock(%s)", (self.commit_key,))
        await self.connection.execute("SELECT pg_advisory_unlock(%s)", (self.commit_key,))

    async def watch(self, every: float = CHECK) -> NoReturn:
        """Raises `LeadershipLost` as soon as the lock's connection is found broken."""
        assert self.connection is not None
        while True:
            await asyncio.sleep(every)
            try:
                await asyncio.wait_for(self.connection.execute("SELECT 1"), CHECK_TIMEOUT)
            except (psycopg.Error, TimeoutError) as error:
                log.error("admission: lost the leader lock (%s); exiting as leader", error)
                raise LeadershipLost(str(error) or type(error).__name__) from error

    @property
    def fence(self) -> Statement:
        """A statement that fails the transaction it runs in unless this process leads."""
        assert self.connection is not None
        pid = self.connection.info.backend_pid
        # pg_locks shows a bigint key as two unsigned 32-bit halves (classid, objid).
        high, low = (self.key >> 32) & 0xFFFFFFFF, self.key & 0xFFFFFFFF
        return (
            "DO $$ BEGIN"
            f" PERFORM pg_advisory_xact_lock_shared({self.commit_key});"
            " IF NOT EXISTS (SELECT FROM pg_locks WHERE locktype = 'advisory' AND granted"
            f" AND pid = {pid} AND classid = {high} AND objid = {low} AND objsubid = 1)"
            " THEN RAISE EXCEPTION 'admission: this process no longer holds the leader lock';"
            " END IF; END $$",
            (),
        )

    async def close(self) -> None:
        if self.connection is not None:
            try:
                await self.connection.close()
            except psycopg.Error:
                pass
            self.connection = None
