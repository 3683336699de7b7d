"""Lanes per receiver: a slot budget per origin and a circuit breaker, on a clock we move."""

from __future__ import annotations

import asyncio
import math

import pytest
from taskengine_core.config import EngineSettings
from taskengine_core.lanes import HostLanes, lanes_from, origin

A, B = "http://a.example:80", "http://b.example:80"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def lanes(clock: Clock, per_host: int = 2, failures: int = 3) -> HostLanes:
    return HostLanes(per_host=per_host, failures=failures, cooldown=5, max_cooldown=20, clock=clock)


def test_a_receiver_is_its_scheme_host_and_port():
    assert origin("http://a.example/hook?x=1") == "http://a.example:80"
    assert origin("https://a.example/hook") == "https://a.example:443"
    assert origin("http://127.0.0.1:9001/x") != origin("http://127.0.0.1:9002/x")
    assert origin("http://x:abc/") == "http://x:abc/"  # unparsable: its own receiver


def test_a_full_receiver_waits_for_a_slot_while_others_go():
    clock = Clock()
    lane = lanes(clock)
    for _ in range(2):
        assert lane.wait(A) is None
        lane.start(A)
    assert lane.wait(A) == math.inf  # A's two slots are taken (e.g. hung calls)
    assert lane.wait(B) is None  # B is not affected
    lane.finish(A, ok=True)
    assert lane.wait(A) is None


def test_the_breaker_opens_after_failures_in_a_row_and_half_opens_to_one_probe():
    clock = Clock()
    lane = lanes(clock, per_host=5)
    for _ in range(2):
        lane.start(A)
        assert lane.finish(A, ok=False) is None
    lane.start(A)
    assert "failed 3 times in a row" in (lane.finish(A, ok=False) or "")
    assert lane.wait(A) == 5  # held back for the cooldown
    assert lane.held_back(A) and not lane.held_back(B)
    assert lane.wait(B) is None
    clock.now += 5
    assert lane.wait(A) is None  # half-open: one call probes
    lane.start(A)
    assert lane.wait(A) == math.inf  # the others wait for the probe's outcome
    assert "calls to it resume" in (lane.finish(A, ok=True) or "")
    assert lane.wait(A) is None and not lane.held_back(A)


def test_a_failed_probe_holds_the_receiver_back_longer_each_time_up_to_the_maximum():
    clock = Clock()
    lane = lanes(clock, failures=1)
    lane.start(A)
    lane.finish(A, ok=False)
    cooldowns = []
    for _ in range(4):
        cooldowns.append(lane.wait(A))
        clock.now += cooldowns[-1]  # type: ignore[operator]
        lane.start(A)
        lane.finish(A, ok=False)
    assert cooldowns == [5, 10, 20, 20]
    clock.now += 20
    lane.start(A)
    lane.finish(A, ok=True)
    lane.start(A)
    lane.finish(A, ok=False)
    assert lane.wait(A) == 5  # a success resets the cooldown


def test_a_success_between_failures_restarts_the_count():
    clock = Clock()
    lane = lanes(clock, per_host=5)
    for ok in (False, False, True, False, False):
        lane.start(A)
        lane.finish(A, ok=ok)
    assert lane.wait(A) is None and not lane.held_back(A)


async def test_acquire_waits_for_a_free_slot_and_reports_an_open_breaker():
    clock = Clock()
    lane = lanes(clock, per_host=1, failures=1)
    assert await lane.acquire(A) is None
    waiting = asyncio.create_task(lane.acquire(A))
    await asyncio.sleep(0.01)
    assert not waiting.done()  # A's only slot is taken
    assert await asyncio.wait_for(lane.acquire(B), 1) is None
    lane.finish(A, ok=False)  # the slot frees, and A's breaker opens
    assert await asyncio.wait_for(waiting, 1) == 5  # it does not take a slot: it is told to wait


def test_the_settings_shape_the_lanes():
    settings = EngineSettings(outbound_per_host=3, outbound_breaker_failures=2)
    lane = lanes_from(settings)
    assert (lane.per_host, lane.failures, lane.cooldown) == (3, 2, 5.0)
    with pytest.raises(ValueError):
        EngineSettings(outbound_deadline=0)
    # A few slow receivers must not take every call in flight: a lane is at most a quarter.
    with pytest.raises(ValueError, match="at most a quarter"):
        EngineSettings(outbound_per_host=65, outbound_concurrency=256)
    assert EngineSettings(outbound_per_host=64, outbound_concurrency=256).outbound_per_host == 64


async def test_waiting_calls_take_freed_slots_in_the_order_they_came():
    lane = lanes(Clock(), per_host=2)
    for _ in range(2):
        assert await lane.acquire(A) is None
    order: list[int] = []

    async def call(n: int) -> None:
        assert await lane.acquire(A) is None
        order.append(n)

    waiting = [asyncio.create_task(call(n)) for n in range(5)]
    await asyncio.sleep(0.01)
    assert order == []
    lane.finish(A, ok=True)
    await asyncio.sleep(0.01)
    assert order == [0]  # one slot freed: one call goes, the others keep waiting
    assert lane.receivers[A].in_flight == 2
    for _ in range(4):
        lane.finish(A, ok=True)
        await asyncio.sleep(0.01)
    assert order == [0, 1, 2, 3, 4]
    await asyncio.gather(*waiting)


async def test_an_open_breaker_reaches_every_waiting_call_and_a_closed_one_fills_the_lane():
    clock = Clock()
    lane = lanes(clock, per_host=3, failures=1)
    for _ in range(3):
        assert await lane.acquire(A) is None
    waiting = [asyncio.create_task(lane.acquire(A)) for _ in range(4)]
    await asyncio.sleep(0.01)
    lane.finish(A, ok=False)  # the breaker opens: none of them may go
    assert await asyncio.wait_for(asyncio.gather(*waiting), 1) == [5, 5, 5, 5]
    for _ in range(2):
        lane.finish(A, ok=False)
    clock.now += 5
    assert await lane.acquire(A) is None  # the probe
    waiting = [asyncio.create_task(lane.acquire(A)) for _ in range(4)]
    await asyncio.sleep(0.01)
    assert not any(w.done() for w in waiting)  # the others wait for the probe's outcome
    lane.finish(A, ok=True)  # it answered: the lane's three slots fill at once
    await asyncio.sleep(0.01)
    assert sum(w.done() for w in waiting) == 3 and lane.receivers[A].in_flight == 3


async def test_a_cancelled_waiting_call_gives_its_turn_to_the_next():
    lane = lanes(Clock(), per_host=1)
    assert await lane.acquire(A) is None
    first, second = (asyncio.create_task(lane.acquire(A)) for _ in range(2))
    await asyncio.sleep(0.01)
    lane.finish(A, ok=True)  # wakes the first, which is cancelled before it runs
    first.cancel()
    assert await asyncio.wait_for(second, 1) is None
    assert lane.receivers[A].in_flight == 1
