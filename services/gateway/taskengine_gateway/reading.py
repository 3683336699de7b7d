"""Reading your own writes from the read models.

A write is answered after its commit, but lists, searches and counts read the projector's
tables (`rm_*`), which follow the store a little later. So every such read goes through
`Reads.query`: it first waits until the projector's tracked position has reached the store's
head as it was when the read began (everything acknowledged before it, through any gateway),
then runs the query. The wait is bounded (`read_wait` seconds); a read that waited that long
is answered anyway, from what the projector has, and says so: the response carries
`X-Taskengine-Stale: true`, a warning is logged and `taskengine_stale_reads_total` counts it.

One poller per gateway process reads the head and the tracked position (one statement) while
reads wait, and wakes all those it finds caught up: many concurrent reads cost one poll per
`POLL_INTERVAL`, not one each. A read arriving while a poll is under way waits for the next
poll, whose head includes its predecessors' writes. Each poll also tells the projector that
a read waits (`EventStore.head_and_tracked(waiting=True)`): it takes its next batch at once
instead of at its pace (`TASKENGINE_FOLLOW_INTERVAL`).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from taskengine_runtime import Runtime, metrics
from taskengine_store.projections import PROJECTOR

log = logging.getLogger(__name__)

T = TypeVar("T")

STALE_HEADER = "X-Taskengine-Stale"
POLL_INTERVAL = 0.005
"""Seconds between polls while reads wait (the projector's lag is ~10 ms)."""


@dataclass(eq=False)
class _Wait:
    done: asyncio.Future[None]
    target: int = -1
    """The head this read waits for; -1 until a poll begun after its arrival read it."""


class CaughtUp:
    """Waits, shared by all the reads of one process, for a consumer to reach the store's head.

    `positions` returns (head, tracked position); it is called by one poller at a time.
    """

    def __init__(
        self,
        positions: Callable[[], Awaitable[tuple[int, int]]],
        timeout: float,
        interval: float = POLL_INTERVAL,
    ):
        self._positions = positions
        self.timeout = timeout
        self.interval = interval
        self._arrived: list[_Wait] = []
        self._waiting: list[_Wait] = []
        self._poller: asyncio.Task[None] | None = None
        self.polls = 0
        self.stale = 0

    async def wait(self) -> bool:
        """True once the consumer has reached the head as of this call; False when it had not
        within `timeout`: the caller reads what there is. `timeout` 0 turns waiting off."""
        if self.timeout <= 0:
            return True
        wait = _Wait(asyncio.get_running_loop().create_future())
        self._arrived.append(wait)
        if self._poller is None or self._poller.done():
            self._poller = asyncio.create_task(self._poll())
        try:
            await asyncio.wait_for(wait.done, self.timeout)  # cancels `done` on timeout
            return True
        except TimeoutError:
            self.stale += 1
            metrics.STALE_READS.inc()
            log.warning(
                "read model still behind the store after %.1fs (head %d): answering stale",
                self.timeout,
                wait.target,
            )
            return False

    async def _poll(self) -> None:
        while self._arrived or self._waiting:
            arrived, self._arrived = self._arrived, []
            try:
                head, tracked = await self._positions()
            except Exception as error:  # the store away: the reads fail as their query would
                for wait in arrived + self._waiting + self._arrived:
                    if not wait.done.done():
                        wait.done.set_exception(error)
                self._arrived, self._waiting = [], []
                return
            self.polls += 1
            for wait in arrived:
                wait.target = head
            still = []
            for wait in self._waiting + arrived:
                if wait.done.done():  # timed out or cancelled
                    continue
                if tracked >= wait.target:
                    wait.done.set_result(None)
                else:
                    still.append(wait)
            self._waiting = still
            if self._waiting and not self._arrived:
                await asyncio.sleep(self.interval)


@dataclass
class _Answer:
    stale: bool = False


_answer: contextvars.ContextVar[_Answer | None] = contextvars.ContextVar("answer", default=None)


@dataclass
class Reads:
    """The gateway's one way to query the read models (`taskengine_store.queries`)."""

    runtime: Runtime
    caught_up: CaughtUp = field(init=False)

    def __post_init__(self) -> None:
        store = self.runtime.store

        async def positions() -> tuple[int, int]:
            return await self.runtime.call(store.head_and_tracked, PROJECTOR, True)

        self.caught_up = CaughtUp(positions, self.runtime.config.read_wait)

    async def query(self, query: Callable[..., T], *args: Any) -> T:
        """`query(store, *args)` once the read models hold every write acknowledged before."""
        if not await self.caught_up.wait():
            answer = _answer.get()
            if answer is not None:
                answer.stale = True
        return await self.runtime.call(query, self.runtime.store, *args)


def stale_header(app: ASGIApp) -> ASGIApp:
    """ASGI middleware: marks a response whose read-model reads answered stale."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        answer = _Answer()
        token = _answer.set(answer)

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start" and answer.stale:
                headers = list(message.get("headers") or [])
                headers.append((STALE_HEADER.lower().encode(), b"true"))
                message["headers"] = headers
            await send(message)

        try:
            await app(scope, receive, sending)
        finally:
            _answer.reset(token)

    return middleware
