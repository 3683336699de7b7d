"""The store's head as its commits announced it: trusted without a read, never beyond it."""

from __future__ import annotations

import asyncio
import time

from taskengine_runtime.bus import BatchConsumer, Delivered
from taskengine_runtime.runtime import ENDS_KEPT, Runtime


class Message:
    """A delivery whose position header claims `position`."""

    subject = "taskengine.job.submitted"
    data = b"{}"

    def __init__(self, position: int) -> None:
        self.headers = {"Taskengine-Position": str(position)}


def consumer(head: int, heard: int | None) -> tuple[BatchConsumer, list[int]]:
    reads: list[int] = []

    async def nothing(*_: object) -> None:
        return None

    async def latest() -> int:
        reads.append(head)
        return head

    taking = BatchConsumer(
        None,  # type: ignore[arg-type]
        "test-heard",
        [],
        nothing,  # type: ignore[arg-type]
        0,
        nothing,
        nothing,
        latest,
        heard=None if heard is None else lambda: heard,
    )
    return taking, reads


def batch(*positions: int) -> list[Delivered]:
    return [Delivered(p, None, Message(p)) for p in positions]  # type: ignore[arg-type]


async def test_positions_up_to_what_was_heard_need_no_read_of_the_store():
    taking, reads = consumer(head=10, heard=10)
    assert [d.position for d in await taking._stored_only(batch(8, 9, 10), 10, [])] == [8, 9, 10]
    assert reads == []


async def test_a_position_past_what_was_heard_is_checked_against_the_store():
    taking, reads = consumer(head=12, heard=10)
    rejected: list = []
    kept = await taking._stored_only(batch(10, 11, 12, 13), 13, rejected)
    assert [d.position for d in kept] == [10, 11, 12] and reads == [12]
    assert [r.position for r in rejected] == [13]  # forged: past the store's head


async def test_without_hearing_every_batch_past_the_last_read_reads_the_store():
    taking, reads = consumer(head=5, heard=None)
    rejected: list = []
    assert [d.position for d in await taking._stored_only(batch(5, 6), 6, rejected)] == [5]
    assert reads == [5] and [r.position for r in rejected] == [6]


def test_commit_ends_heard_are_kept_for_the_last_commits_only():
    runtime = Runtime("test", None, None, None, None)  # type: ignore[arg-type]
    for position in range(1, 3 * ENDS_KEPT + 1):
        runtime._heard(str(position * 2))
    runtime._heard("")  # a NOTIFY without a position: not a commit of events
    runtime._heard("not a number")
    assert len(runtime._ends_heard) == ENDS_KEPT
    assert runtime.ends_a_commit(6 * ENDS_KEPT) and not runtime.ends_a_commit(6 * ENDS_KEPT - 1)
    assert not runtime.ends_a_commit(2)  # forgotten: the store is asked again
    assert runtime._last_heard() == 6 * ENDS_KEPT


def listening() -> Runtime:
    """A runtime as if its listener were running (no database behind it)."""
    runtime = Runtime("test", None, None, None, None)  # type: ignore[arg-type]
    runtime._hearing = asyncio.get_running_loop().create_future()  # type: ignore[assignment]
    return runtime


async def test_news_of_a_commit_already_heard_past_the_position_comes_at_once():
    runtime = listening()
    runtime._heard("12")
    async with asyncio.timeout(1):
        await runtime.news(10, timeout=60)


async def test_news_waits_for_a_commit_past_the_position():
    runtime = listening()
    waiting = asyncio.create_task(runtime.news(10, timeout=60))
    await asyncio.sleep(0.01)
    runtime._heard("9")  # a commit the follower already holds: not news
    runtime._heard("10")
    await asyncio.sleep(0.01)
    assert not waiting.done()
    runtime._heard("11")
    async with asyncio.timeout(1):
        await waiting


async def test_without_news_the_wait_ends_at_its_timeout():
    runtime = listening()
    runtime._heard("10")
    started = time.monotonic()
    await runtime.news(10, timeout=0.05)  # a lost NOTIFY: the follower reads the log anyway
    assert time.monotonic() - started >= 0.05
