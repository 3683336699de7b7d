"""Where a service's blocking store work runs, off its event loop.

`asyncio.to_thread` goes through the loop's default executor: a context copied, a
`concurrent.futures.Future` made and chained to an asyncio one, the executor's locks and idle
semaphore. Measured under uvloop on these machines: 66 µs of CPU a call, most of it held
under the GIL; a consumer at 200 jobs/s made several calls a job. Here a call is a tuple on a
`SimpleQueue` and one `call_soon_threadsafe` back: 21 µs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

LIMIT = min(32, (os.cpu_count() or 1) + 4)
"""Threads at most, as many as the default executor's: calls beyond wait for one."""

_Work = tuple[
    asyncio.AbstractEventLoop,
    "asyncio.Future[Any]",
    Callable[..., Any],
    tuple[Any, ...],
    dict[str, Any],
]


class Threads:
    """A pool of threads for blocking calls, started as calls need them (a call waiting
    while all are busy starts another, up to `limit`). Closing lets the calls in hand end."""

    def __init__(self, name: str = "store", limit: int = LIMIT):
        self.name, self.limit = name, limit
        self._queue: queue.SimpleQueue[_Work | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._outstanding = 0
        """Calls handed over and not finished (counted on the event loop only)."""

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`fn(*args, **kwargs)` in a thread of the pool. Cancelling the caller does not
        stop the call: it ends in its thread and its result is dropped."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        if self._outstanding >= len(self._threads) and len(self._threads) < self.limit:
            self._start()
        self._outstanding += 1
        self._queue.put((loop, future, fn, args, kwargs))
        return await future

    def close(self, timeout: float = 30.0) -> None:
        """Lets the threads finish the calls in hand, then stops them."""
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join(timeout)
        self._threads.clear()

    def _start(self) -> None:
        name = f"{self.name}-{len(self._threads)}"
        thread = threading.Thread(target=self._work, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _work(self) -> None:
        while (work := self._queue.get()) is not None:
            loop, future, fn, args, kwargs = work
            try:
                result, error = fn(*args, **kwargs), None
            except BaseException as failure:  # handed to the caller, as to_thread does
                result, error = None, failure
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(self._settle, future, result, error)
            del work, future, result, error

    def _settle(
        self, future: asyncio.Future[Any], result: Any, error: BaseException | None
    ) -> None:
        self._outstanding -= 1
        if future.cancelled():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
