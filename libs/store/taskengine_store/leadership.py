"""Active/standby services: only the holder of one PostgreSQL advisory lock does the work.

Admission and the scheduler run this way. Each of their processes takes a session advisory
lock on a connection of its own before it consumes. A standby polls for the lock (so it stays
responsive to SIGTERM and keeps sending heartbeats) and leads once PostgreSQL releases it: a
killed leader's session ends, and its lock with it. A leader whose lock connection is lost
must stop at once; it exits, and its supervisor restarts it as a standby.

Every commit of the leader carries a fence, so a leader that lost its lock cannot slip in a
commit before it notices: the fence fails the transaction once the lock is held by nobody or a
new leader took over (each leader takes the next turn in `leader_epochs` on taking over; a
fence names its leader's turn), and holds a shared transaction lock that a new leader waits
out (`takeover`), after taking its turn, before it reads the state its predecessor left.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import threading
from collections.abc import Callable, Coroutine
from typing import Any, NoReturn

import psycopg

from taskengine_store.store import Statement

log = logging.getLogger(__name__)


def lock_key(name: str) -> int:
    """A fixed signed 64-bit advisory lock key derived from `name`."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


POLL = 0.5
"""How often a standby tries to take the lock (seconds)."""
CHECK = 1.0
"""How often the leader checks its lock connection (seconds)."""
CHECK_TIMEOUT = 5.0
EXIT_GRACE = 5.0
"""How long a leader that lost its lock may take to shut down cleanly before it is ended."""
LOST_STATUS = 70


class LeadershipLost(RuntimeError):
    """The leader lock's connection broke: this process may no longer do the leader's work."""


class LeaderLock:
    """The leader lock of service `name`, held by a dedicated connection for as long as it
    lives."""

    def __init__(self, database_url: str, name: str):
        self.database_url, self.name = database_url, name
        self.key = lock_key(f"taskengine:{name}")
        self.commit_key = lock_key(f"taskengine:{name}:commit")
        self.connection: psycopg.AsyncConnection | None = None
        self.epoch = 0
        """This leader's turn (`leader_epochs`), taken on taking over."""

    async def acquire(self, poll: float = POLL) -> None:
        """Returns once this process holds the lock; a standby waits here."""
        waiting = False
        while True:
            try:
                if await self._try():
                    await self._takeover()
                    return
            except psycopg.Error as error:
                log.warning("%s: cannot try the leader lock (%s); retrying", self.name, error)
                await self.close()
            if not waiting:
                log.info("%s: standby, waiting for the leader lock", self.name)
                waiting = True
            await asyncio.sleep(poll)

    async def _try(self) -> bool:
        if self.connection is None or self.connection.closed:
            self.connection = await psycopg.AsyncConnection.connect(
                self.database_url,
                autocommit=True,
                # TCP keepalives: a dead lock connection is noticed within seconds
                keepalives=1,
                keepalives_idle=5,
                keepalives_interval=2,
            )
        cursor = await self.connection.execute("SELECT pg_try_advisory_lock(%s)", (self.key,))
        row = await cursor.fetchone()
        return bool(row and row[0])

    async def _takeover(self) -> None:
        """Takes the next turn, then waits until no commit fenced by a previous leader is
        still in flight. In that order: a fence that gets past the wait sees the new turn."""
        assert self.connection is not None
        cursor = await self.connection.execute(
            "INSERT INTO leader_epochs VALUES (%s, 1) ON CONFLICT (name)"
            " DO UPDATE SET epoch = leader_epochs.epoch + 1 RETURNING epoch",
            (self.name,),
        )
        row = await cursor.fetchone()
        assert row is not None
        self.epoch = row[0]
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
                log.error("%s: lost the leader lock (%s); exiting as leader", self.name, error)
                raise LeadershipLost(str(error) or type(error).__name__) from error

    @property
    def fence(self) -> Statement:
        """A statement that fails the transaction it runs in unless this process leads
        (`taskengine_fence_epoch`, created with the schema)."""
        assert self.connection is not None and self.epoch
        return (
            "SELECT taskengine_fence_epoch(%s, %s, %s, %s)",
            (self.commit_key, self.key, self.epoch, self.name),
        )

    async def close(self) -> None:
        if self.connection is not None:
            try:
                await self.connection.close()
            except psycopg.Error:
                pass
            self.connection = None


async def run_as_leader(
    database_url: str, name: str, work: Callable[[LeaderLock], Coroutine[Any, Any, None]]
) -> None:
    """Waits as a standby until this process holds `name`'s leader lock, then runs `work`
    (which should put `lock.fence` in each of its commits) until it ends or the lock is lost.
    A lost lock ends the process at once, non-zero: its supervisor restarts it as a standby."""
    lock = LeaderLock(database_url, name)
    try:
        await lock.acquire()
        log.info("%s: leading", name)
        async with asyncio.TaskGroup() as group:
            group.create_task(work(lock))
            group.create_task(_watch_to_the_end(lock))
    except* LeadershipLost as lost:
        raise SystemExit(f"{name}: lost the leader lock ({lost.exceptions[0]})") from None
    finally:
        await lock.close()


async def _watch_to_the_end(lock: LeaderLock) -> NoReturn:
    """`lock.watch()` for a leader process: the moment the lock is lost, the process is bound
    to end within `EXIT_GRACE`, whether or not its work lets its task group finish."""
    try:
        await lock.watch()
    except LeadershipLost:
        _exit_within(EXIT_GRACE)
        raise


def _exit_within(seconds: float) -> None:
    """Ends the process `seconds` from now if its clean shutdown has not by then: a work task
    that does not end when cancelled (a cancellation lost in a library's `wait_for`) or a thread
    still in a store call must not keep a deposed leader alive.
    Ending it hard is safe: its work is durable and its unacknowledged messages are redelivered."""

    def end() -> None:
        log.error("leader shutdown took over %.0fs; ending the process", seconds)
        logging.shutdown()
        os._exit(LOST_STATUS)

    timer = threading.Timer(seconds, end)
    timer.daemon = True
    timer.start()
