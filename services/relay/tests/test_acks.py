"""The relay's batch acks: a stream without a leader for a moment (a cluster's failover) means
publish the batch again, never a crash, and frees the client's pending-ack slots."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from nats.js.errors import NoStreamResponseError
from taskengine_relay import relay
from taskengine_runtime.bus import Reconnects


async def test_a_batch_the_stream_did_not_answer_is_published_again(monkeypatch):
    monkeypatch.setattr(relay, "FAILOVER_PAUSE", 0)
    loop = asyncio.get_running_loop()
    acks = [loop.create_future() for _ in range(3)]
    acks[0].set_result("ack")
    acks[1].set_exception(NoStreamResponseError())  # the leader died: no one answered
    runtime = SimpleNamespace(reconnects=Reconnects())
    assert await relay._acked(acks, runtime) is False  # type: ignore[arg-type]
    assert acks[2].cancelled()  # its slot freed: the ack would never come


async def test_a_batch_fully_acked_is_done():
    loop = asyncio.get_running_loop()
    acks = [loop.create_future() for _ in range(2)]
    for ack in acks:
        ack.set_result("ack")
    runtime = SimpleNamespace(reconnects=Reconnects())
    assert await relay._acked(acks, runtime) is True  # type: ignore[arg-type]
