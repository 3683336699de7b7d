"""This instance's share of a partitioned service's work (the dispatcher's, the notifier's).

`Partitions` keeps the leases (`taskengine_store.partitions`) renewed, knows which partitions
this instance holds and how far in the event log it handled each, and tells its service when it
takes some over (to end or take over what their last holder left) or drops some (nothing more
of theirs may be done here). The service's consumer reads every event; its handler keeps the
events of its own partitions past their positions (`mine`), commits `tracking()` with their
effects, and then `advance`s.

A lease counts as held here for half its time after a refresh began: an instance that cannot
renew (the store away, a stall) stops before another may take its partitions over.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from functools import cached_property
from typing import TYPE_CHECKING

from taskengine_core.partitions import partition_of
from taskengine_store.partitions import PartitionLeases
from taskengine_store.store import Statement

from taskengine_runtime.bus import Delivered
from taskengine_runtime.failures import describe

if TYPE_CHECKING:
    from taskengine_runtime.bus import BatchConsumer
    from taskengine_runtime.runtime import Runtime

log = logging.getLogger(__name__)

Taken = Callable[[dict[int, str | None]], Awaitable[None]]


class Partitions:
    def __init__(
        self,
        runtime: Runtime,
        service: str,
        idle: Callable[[int], bool],
        taken: Taken,
        dropped: Callable[[set[int]], None] = lambda partitions: None,
    ):
        self.runtime, self.service = runtime, service
        self.idle, self.taken, self.dropped = idle, taken, dropped
        self.handled: dict[int, int] = {}
        """The partitions held here, each with the position up to which it was handled."""
        self.behind: dict[int, int] = {}
        """Partitions taken over behind the consumer, until it went back to them."""
        self.valid_until = 0.0
        self.lock = asyncio.Lock()
        """Held while a batch is handled and while the leases are refreshed."""
        self.consumer: BatchConsumer | None = None

    @cached_property
    def ttl(self) -> float:
        return self.runtime.config.partition_ttl

    @cached_property
    def leases(self) -> PartitionLeases:
        return PartitionLeases(self.runtime.store, self.service, self.runtime.instance, self.ttl)

    def batch_start(self) -> int:
        """Where the consumer stood before the batch in hand."""
        return self.consumer.handled if self.consumer is not None else 0

    def owns(self, job_id: int) -> bool:
        partition = partition_of(job_id)
        return partition in self.handled or partition in self.behind

    def mine(self, batch: list[Delivered]) -> list[Delivered]:
        """The events of `batch` in a partition held here and past its position; events of no
        job (settings) are everyone's."""
        if self.behind and self.batch_start() <= min(self.behind.values()):
            self.handled.update(self.behind)  # the consumer went back to them
            self.behind.clear()
        kept = []
        for item in batch:
            job_id = getattr(item.event, "job_id", None)
            if job_id is None:
                kept.append(item)
                continue
            handled = self.handled.get(partition_of(job_id))
            if handled is not None and item.position > handled:
                kept.append(item)
        return kept

    def tracking(self, end: int) -> Statement | None:
        """Moves the tracking records of the partitions the batch in hand covers to `end`."""
        moved = {p: end for p, at in self.handled.items() if at < end}
        return self.leases.track(moved) if moved else None

    def advance(self, end: int) -> None:
        """The batch in hand, up to `end`, is handled: its partitions stand there."""
        for p, at in self.handled.items():
            self.handled[p] = max(at, end)

    async def track(self, position: int) -> None:
        """The consumer's lazy tracking: each partition's record moves to where it stands."""
        del position
        async with self.lock:
            if self.handled:
                statement = self.leases.track(dict(self.handled))
                await self.runtime.call(self.runtime.store.commit, (), None, [statement])

    async def start(self) -> int:
        """Takes this instance's first share (waiting out the store) and says where its
        consumer starts: the lowest position of its partitions (none: the store's head)."""
        delay = 0.2
        while True:
            try:
                await self.refresh()
                break
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.warning("%s: taking leases failed (%s); again", self.service, describe(error))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        if self.handled:
            return min(self.handled.values())
        return await self.runtime.latest()

    async def refresh(self) -> None:
        async with self.lock:
            started = time.monotonic()
            idle = [p for p in (*self.handled, *self.behind) if self.idle(p)]
            try:
                held = await self.runtime.call(self.leases.refresh, idle)
            except Exception as error:
                if time.monotonic() > self.valid_until:
                    self._expired(describe(error))
                raise
            self.valid_until = started + self.ttl / 2
            ours = set(self.handled) | set(self.behind)
            if gone := ours - held.partitions:
                self._drop(gone)
            new = held.partitions - ours
            if not new:
                return
            positions = await self.runtime.call(self.leases.tracked, new)
            me = self.runtime.instance
            taken = {p: held.taken.get(p) for p in new}
            await self.taken({p: None if who == me else who for p, who in taken.items()})
            log.info("%s: took partitions %s", self.service, sorted(new))
            lowest = min(positions.values())
            if self.consumer is not None and lowest < self.consumer.handled:
                self.behind.update(positions)
                self.consumer.rewind(lowest)
            else:
                self.handled.update(positions)

    def _expired(self, why: str) -> None:
        if held := set(self.handled) | set(self.behind):
            log.warning(
                "%s: leases expired here (%s); giving up %s", self.service, why, sorted(held)
            )
            self._drop(held)

    def _drop(self, partitions: set[int]) -> None:
        for p in partitions:
            self.handled.pop(p, None)
            self.behind.pop(p, None)
        self.dropped(partitions)
        log.info("%s: gave up partitions %s", self.service, sorted(partitions))

    async def refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self.ttl / 5)
            if time.monotonic() > self.valid_until:
                async with self.lock:
                    self._expired("not renewed in time")
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.warning("%s: renewing leases failed: %s", self.service, describe(error))

    async def leave(self) -> None:
        try:
            await self.runtime.call(self.leases.leave)
        except Exception as error:
            log.warning("%s: giving up leases failed: %s", self.service, describe(error))
