"""Group commit for submissions: concurrent requests share one store transaction.

Each request waits for the commit that holds its job, so an acknowledged job is durable; a
burst of N submits costs one id allocation and one insert instead of N of each.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from taskengine_bus import Runtime
from taskengine_contracts.events import Event

log = logging.getLogger(__name__)

Build = Callable[[int], list[Event]]
"""Builds a job's first events once its number is known."""

MAX_BATCH = 500
ID_BLOCK = 1000


class Submitter:
    def __init__(self, runtime: Runtime):
        self.runtime = runtime
        self.pending: asyncio.Queue[tuple[Build, asyncio.Future[int]]] = asyncio.Queue()
        self.task: asyncio.Task | None = None
        self.numbers: list[int] = []  # reserved job numbers, handed out in order

    def start(self) -> None:
        self.task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()

    async def submit(self, build: Build) -> int:
        """Stores the job; returns its number once committed."""
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        await self.pending.put((build, future))
        return await future

    async def _run(self) -> None:
        while True:
            batch = [await self.pending.get()]
            await asyncio.sleep(0)  # let concurrent requests join this batch
            while not self.pending.empty() and len(batch) < MAX_BATCH:
                batch.append(self.pending.get_nowait())
            try:
                numbers = await self.runtime.call(self._commit, [build for build, _ in batch])
            except Exception as error:
                log.exception("submit batch of %d failed", len(batch))
                for _, future in batch:
                    if not future.done():
                        future.set_exception(error)
                continue
            for (_, future), number in zip(batch, numbers, strict=True):
                if not future.done():
                    future.set_result(number)

    def _commit(self, builds: list[Build]) -> list[int]:
        store = self.runtime.store
        numbers = store.next_job_ids(len(builds))
        store.commit(
            [event for build, n in zip(builds, numbers, strict=True) for event in build(n)]
        )
        return numbers
