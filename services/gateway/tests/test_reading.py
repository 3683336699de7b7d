"""The shared wait for the read models: one poll serves every read waiting, a read waits for
the head as of its own start, a read that waits too long is answered stale and marked."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from litestar import Litestar, get
from litestar.testing import AsyncTestClient
from litestar.types import Receive, Scope, Send
from taskengine_gateway import reading
from taskengine_gateway.reading import STALE_HEADER, CaughtUp, stale_header
from taskengine_runtime import metrics


class Positions:
    """A fake store: its head and the consumer's position, counting the polls."""

    def __init__(self, head: int, tracked: int, delay: float = 0.0):
        self.head, self.tracked, self.delay = head, tracked, delay
        self.polls = 0

    async def __call__(self) -> tuple[int, int]:
        self.polls += 1
        head = self.head  # read as the statement starts
        await asyncio.sleep(self.delay)
        return head, self.tracked


async def test_many_reads_waiting_together_cost_one_poll():
    positions = Positions(head=7, tracked=7)
    caught_up = CaughtUp(positions, timeout=5)
    assert await asyncio.gather(*(caught_up.wait() for _ in range(50))) == [True] * 50
    assert positions.polls == 1


async def test_reads_wait_until_the_consumer_reaches_the_head_then_all_wake():
    positions = Positions(head=10, tracked=3)
    caught_up = CaughtUp(positions, timeout=5, interval=0.001)
    waits = [asyncio.create_task(caught_up.wait()) for _ in range(20)]
    await asyncio.sleep(0.05)
    assert not any(w.done() for w in waits)
    polls = positions.polls
    assert polls >= 2  # it kept polling, once per interval for all twenty
    positions.tracked = 10
    assert await asyncio.gather(*waits) == [True] * 20
    assert caught_up.stale == 0


async def test_a_read_waits_for_the_head_as_of_its_start_not_an_earlier_poll():
    positions = Positions(head=5, tracked=5, delay=0.02)
    caught_up = CaughtUp(positions, timeout=5, interval=0.001)
    first = asyncio.create_task(caught_up.wait())
    await asyncio.sleep(0.005)  # the first poll is under way, its head already read
    positions.head = 9  # a write acknowledged now, then a read
    second = asyncio.create_task(caught_up.wait())
    assert await first is True
    await asyncio.sleep(0.05)
    assert not second.done()  # the first poll's head (5) does not satisfy it
    positions.tracked = 9
    assert await second is True


async def test_a_read_kept_waiting_too_long_answers_stale_and_is_counted():
    positions = Positions(head=10, tracked=3)
    caught_up = CaughtUp(positions, timeout=0.05, interval=0.001)
    counted = metrics.STALE_READS._value.get()
    assert await caught_up.wait() is False
    assert caught_up.stale == 1 and metrics.STALE_READS._value.get() == counted + 1
    await asyncio.sleep(0.01)
    assert not caught_up._waiting and not caught_up._arrived  # nothing left behind


async def test_a_timeout_of_zero_turns_the_wait_off():
    positions = Positions(head=10, tracked=3)
    assert await CaughtUp(positions, timeout=0).wait() is True
    assert positions.polls == 0


async def test_a_failing_poll_fails_the_reads_waiting_and_the_next_read_polls_again():
    class Failing(Positions):
        async def __call__(self) -> tuple[int, int]:
            self.polls += 1
            raise ConnectionError("store away")

    caught_up = CaughtUp(Failing(1, 1), timeout=5)
    with pytest.raises(ConnectionError):
        await caught_up.wait()
    caught_up._positions = Positions(head=1, tracked=1)
    assert await caught_up.wait() is True


async def test_the_response_of_a_stale_read_carries_the_header():
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        answer = reading._answer.get()
        assert answer is not None
        answer.stale = scope["path"] == "/stale"
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"[]"})

    transport = httpx.ASGITransport(app=stale_header(app))  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
        assert (await http.get("/stale")).headers.get(STALE_HEADER) == "true"
        assert STALE_HEADER not in (await http.get("/fresh")).headers


async def test_a_list_that_could_not_wait_is_answered_and_marked_stale():
    """Through litestar: the handler's read marks its own response, and only that one."""

    class Store:
        def head_and_tracked(self, name: str, waiting: bool = False) -> tuple[int, int]:
            return (10, 3) if name == "projector" else (0, 0)

    class Config:
        read_wait = 0.05

    class Runtime:
        store, config = Store(), Config()

        async def call(self, fn, *args):  # type: ignore[no-untyped-def]
            return fn(*args)

    reads = reading.Reads(Runtime())  # type: ignore[arg-type]

    @get("/list")
    async def listing() -> list[str]:
        return await reads.query(lambda store: ["row"])

    @get("/other")
    async def other() -> list[str]:
        return []

    app = Litestar([listing, other], middleware=[stale_header])
    async with AsyncTestClient(app) as http:
        response = await http.get("/list")
        assert response.json() == ["row"] and response.headers.get(STALE_HEADER) == "true"
        assert STALE_HEADER not in (await http.get("/other")).headers
    assert reads.caught_up.stale == 1
