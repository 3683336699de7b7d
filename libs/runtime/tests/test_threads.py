"""`Threads`: the pool `Runtime.call` runs blocking store work on."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from taskengine_runtime.threads import Threads


async def test_a_call_returns_its_result_or_raises_its_error() -> None:
    threads = Threads()
    assert await threads.call(lambda a, b=0: a + b, 2, b=3) == 5
    assert await threads.call(threading.current_thread) is not threading.current_thread()

    def refuse() -> None:
        raise KeyError("no such job")

    with pytest.raises(KeyError, match="no such job"):
        await threads.call(refuse)
    threads.close()


async def test_calls_run_at_once_up_to_the_limit() -> None:
    threads = Threads(limit=2)
    pair = threading.Barrier(2, timeout=5)  # broken (and raising) if two never run together
    running = peak = 0
    lock = threading.Lock()

    def work() -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        pair.wait()
        time.sleep(0.02)
        with lock:
            running -= 1

    await asyncio.gather(*(threads.call(work) for _ in range(6)))
    assert peak == 2  # never a third at once
    assert len(threads._threads) == 2
    threads.close()


async def test_a_cancelled_caller_leaves_its_call_to_end_and_the_pool_working() -> None:
    threads = Threads(limit=1)
    ended = threading.Event()

    def slow() -> str:
        time.sleep(0.1)
        ended.set()
        return "done"

    call = asyncio.ensure_future(threads.call(slow))
    await asyncio.sleep(0.02)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert await threads.call(lambda: "next") == "next"  # queued behind the slow one
    assert ended.is_set()
    assert threads._outstanding == 0
    threads.close()


async def test_closing_lets_the_calls_in_hand_end() -> None:
    threads = Threads()

    def slow() -> str:
        time.sleep(0.2)
        return "committed"

    call = asyncio.ensure_future(threads.call(slow))
    await asyncio.sleep(0.05)
    await asyncio.to_thread(threads.close)
    assert await call == "committed"
    assert threads._threads == []
