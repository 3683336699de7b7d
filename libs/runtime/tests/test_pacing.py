"""Pacing: the first batch after a quiet spell goes at once, the next waits out the interval."""

from __future__ import annotations

import asyncio

import pytest
from taskengine_runtime import pacing
from taskengine_runtime.pacing import Pacing


@pytest.fixture
def clock(monkeypatch):  # type: ignore[no-untyped-def]
    """A clock that moves only when told, and records the pauses asked for."""
    state = {"now": 100.0, "pauses": []}

    async def sleep(seconds: float, until: object) -> None:
        state["pauses"].append(round(seconds, 6))
        state["now"] += seconds

    monkeypatch.setattr(pacing, "monotonic", lambda: state["now"])
    monkeypatch.setattr(pacing, "sleep", sleep)
    return state


async def test_the_first_batch_goes_at_once(clock):  # type: ignore[no-untyped-def]
    await Pacing(0.5).wait()
    assert clock["pauses"] == []


async def test_the_next_batch_waits_out_what_is_left_of_the_interval(clock):  # type: ignore[no-untyped-def]
    paced = Pacing(0.5)
    paced.began()
    clock["now"] += 0.2  # the batch took 0.2 s
    await paced.wait()
    assert clock["pauses"] == [0.3]
    paced.began()
    clock["now"] += 0.7  # longer than the interval: no pause
    await paced.wait()
    assert clock["pauses"] == [0.3]


async def test_no_interval_never_pauses(clock):  # type: ignore[no-untyped-def]
    paced = Pacing(0.0)
    paced.began()
    await paced.wait()
    assert clock["pauses"] == []


async def test_a_hurry_ends_the_pause_at_once_and_only_once():
    paced = Pacing(30.0)
    paced.began()
    waiting = asyncio.create_task(paced.wait())
    await asyncio.sleep(0.05)
    assert not waiting.done()  # in its pause
    paced.hurry()
    await asyncio.wait_for(waiting, 5)  # not 30 s
    paced.hurry()  # while busy: the next pause is skipped...
    await asyncio.wait_for(paced.wait(), 5)
    paced.began()
    later = asyncio.create_task(paced.wait())  # ...and only that one
    await asyncio.sleep(0.05)
    assert not later.done()
    later.cancel()
