"""This instance's share of a partitioned service's work (the dispatcher's, the notifier's).

`Partitions` keeps the leases (`taskengine_store.partitions`) renewed, knows which partitions
this instance holds and how far in the event log it handled each, and tells its service when it
takes some (`taken`: e.g. load their pending deliveries), what it holds after each refresh
(`tend`: e.g. end the attempts of instances no longer alive there) and when it gives some up
(`dropped`). The service's consumer reads every event; its handler keeps the events of its own
partitions past their positions (`mine`), commits `tracking()` with their effects, and then
`advance`s.

A partition taken over behind where the consumer got to waits (`behind`) until the consumer
has gone back to its position (`BatchConsumer.rewind`), so no event of it is passed over.

A lease counts as held here until `lease_end`: the time its last renewal began plus the lease
time. Another instance can take it only once it expired in the store, later than that.
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

from taskengine_runtime.bus import TRACK_EVERY, Delivered
from taskengine_runtime.failures import describe

if TYPE_CHECKING:
    from taskengine_runtime.bus import BatchConsumer
    from taskengine_runtime.runtime import Runtime

log = logging.getLogger(__name__)

OnPartitions = Callable[[set[int]], Awaitable[None]]


async def _nothing(partitions: set[int]) -> None:
    del partitions


class Partitions:
    def __init__(
        self,
        runtime: Runtime,
        service: str,
        idle: Callable[[int], bool],
        taken: OnPartitions = _nothing,
        tend: OnPartitions = _nothing,
        dropped: Callable[[set[int]], None] = lambda partitions: None,
    ):
        self.runtime, self.service = runtime, service
        self.idle, self.taken, self.tend, self.dropped = idle, taken, tend, dropped
        self.handled: dict[int, int] = {}
        """The partitions held here, each with the position up to which it was handled."""
        self.behind: dict[int, int] = {}
        """Partitions taken over behind the consumer, until it went back to them."""
        self.rewinds = 0
        """The consumer's rewinds when partitions were last put behind."""
        self.reached = 0
        """The furthest position a batch handed here went to."""
        self.shared = 0
        """The position of the last event of no job (a setting) kept: a rewind delivers those
        again, and an older setting must not come back."""
        self.touched: set[int] = set()
        """The partitions of the batch in hand (`mine`)."""
        self.swept_at = 0.0
        """When a commit last moved every partition's record (`tracking`)."""
        self.lease_end = 0.0
        self.lock = asyncio.Lock()
        """Held while a batch is handled and while the leases are refreshed."""
        self.consumer: BatchConsumer | None = None

    @cached_property
    def ttl(self) -> float:
        return self.runtime.config.partition_ttl

    @cached_property
    def leases(self) -> PartitionLeases:
        return PartitionLeases(self.runtime.store, self.service, self.runtime.instance, self.ttl)

    def held(self) -> set[int]:
        return set(self.handled) | set(self.behind)

    def owns(self, job_id: int) -> bool:
        partition = partition_of(job_id)
        return partition in self.handled or partition in self.behind

    def mine(self, batch: list[Delivered]) -> list[Delivered]:
        """The events of `batch` in a partition held here and past its position; events of no
        job (settings) are everyone's, once each."""
        if self.behind and self.consumer is not None and self.consumer.rewinds > self.rewinds:
            self.handled.update(self.behind)  # the consumer went back to them
            self.behind.clear()
        kept = []
        self.touched = set()
        for item in batch:
            job_id = getattr(item.event, "job_id", None)
            if job_id is None:
                if item.position > self.shared:
                    self.shared = item.position
                    kept.append(item)
                continue
            partition = partition_of(job_id)
            handled = self.handled.get(partition)
            if handled is not None and item.position > handled:
                kept.append(item)
                self.touched.add(partition)
        return kept

    def tracking(self, end: int) -> Statement | None:
        """Moves to `end` the tracking records of the partitions the batch in hand has events
        of, and once every `TRACK_EVERY` seconds those of all held here. A record left behind
        is of a partition with no event up to `end` since: whoever goes on from it finds
        nothing of it to handle again. (At 200 jobs/s a batch holds about one job, and moving
        all 16 records took 141 us of PostgreSQL's time a commit.)"""
        moving = self.touched
        if (now := time.monotonic()) - self.swept_at >= TRACK_EVERY:
            self.swept_at, moving = now, set(self.handled)
        moved = {p: end for p in moving if self.handled.get(p, end) < end}
        return self.leases.track(moved) if moved else None

    def advance(self, end: int) -> None:
        """The batch in hand, up to `end`, is handled: its partitions stand there."""
        self.reached = max(self.reached, end)
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
        self.reached = min(self.handled.values()) if self.handled else await self.runtime.latest()
        return self.reached

    async def refresh(self) -> None:
        async with self.lock:
            started = time.monotonic()
            idle = [p for p in self.held() if self.idle(p)]
            try:
                held = await self.runtime.call(self.leases.refresh, idle)
            except Exception:
                self._lapse_if_over()
                raise
            self.lease_end = started + self.ttl
            if gone := self.held() - held.partitions:
                self._drop(gone)
            if new := set(held.partitions) - self.held():
                positions = await self.runtime.call(self.leases.tracked, new)
                await self.taken(new)
                log.info("%s: took partitions %s", self.service, sorted(new))
                if self.consumer is not None and min(positions.values()) < self.reached:
                    self.behind.update(positions)
                    self.rewinds = self.consumer.rewinds
                    self.consumer.rewind(min(self.behind.values()))
                else:
                    self.handled.update(positions)
            await self.tend(self.held())

    def _lapse_if_over(self) -> None:
        if time.monotonic() >= self.lease_end and (held := self.held()):
            log.warning("%s: leases not renewed in time; giving up %s", self.service, sorted(held))
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
            if time.monotonic() >= self.lease_end:
                async with self.lock:
                    self._lapse_if_over()
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
