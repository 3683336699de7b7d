"""`bus.ready`, the pull that takes what a consumer has ready, against a real JetStream."""

from __future__ import annotations

import asyncio

import nats
from nats.js import api
from taskengine_runtime.bus import BatchConsumer, ready

STREAM, SUBJECT = "READYTEST", "readytest.events"


async def consumer_with(nats_url: str, count: int):  # type: ignore[no-untyped-def]
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await js.add_stream(name=STREAM, subjects=[SUBJECT], storage=api.StorageType.MEMORY)
    for n in range(count):
        await js.publish(SUBJECT, b"%d" % n)
    config = api.ConsumerConfig(durable_name="ready", ack_policy=api.AckPolicy.ALL)
    await js.add_consumer(STREAM, config)
    return nc, js, await js.pull_subscribe_bind(durable="ready", stream=STREAM)


async def test_it_takes_what_is_ready_in_order_and_leaves_the_rest_for_the_next_fetch(nats_url):
    nc, _, subscription = await consumer_with(nats_url, 5)
    try:
        first = await subscription.fetch(1, timeout=5)
        more = await ready(subscription, 3)
        rest = await subscription.fetch(5, timeout=1)
        assert [m.data for m in more] == [b"1", b"2", b"3"]
        # What was taken from the inbox's queue is off its books (its slow-consumer limit).
        assert (subscription._sub.pending_msgs, subscription._sub.pending_bytes) == (0, 0)
        assert [m.data for m in first + more + rest] == [b"0", b"1", b"2", b"3", b"4"]
    finally:
        await nc.close()


async def test_with_nothing_ready_the_server_answers_at_once_rather_than_holding_the_pull(
    nats_url,
):
    nc, js, subscription = await consumer_with(nats_url, 1)
    try:
        await subscription.fetch(1, timeout=5)
        # The timeout is a minute: the answer must be the server's "404 No Messages", which a
        # pull with an expiry (nats-py's fetch) would get only when the expiry ran out.
        assert await asyncio.wait_for(ready(subscription, 10, timeout=60), 10) == []
        await js.publish(SUBJECT, b"later")  # the late 404 of nothing is not taken for a message
        assert [m.data for m in await subscription.fetch(1, timeout=5)] == [b"later"]
    finally:
        await nc.close()


async def test_a_consumer_gone_meanwhile_gives_nothing_rather_than_an_error(nats_url):
    nc, js, subscription = await consumer_with(nats_url, 2)
    try:
        await subscription.fetch(1, timeout=5)
        await js.delete_consumer(STREAM, "ready")  # as when its leader died: no one answers
        assert await asyncio.wait_for(ready(subscription, 10, timeout=60), 10) == []
    finally:
        await nc.close()


async def pulls_seen(nats_url: str):  # type: ignore[no-untyped-def]
    """The pull requests the consumer's server gets, as a list filled as they come."""
    watcher = await nats.connect(nats_url)
    seen: list[bytes] = []

    async def saw(message) -> None:  # type: ignore[no-untyped-def]
        seen.append(message.data)

    await watcher.subscribe(f"$JS.API.CONSUMER.MSG.NEXT.{STREAM}.ready", cb=saw)
    await watcher.flush()
    return watcher, seen


def fetching(js) -> BatchConsumer:  # type: ignore[no-untyped-def]
    async def nothing(*_) -> None:  # type: ignore[no-untyped-def]
        return None

    async def unused(*_) -> bool:  # type: ignore[no-untyped-def]
        raise AssertionError("only _fetch is used")

    return BatchConsumer(js, "ready", [SUBJECT], unused, 0, nothing, nothing, nothing)


async def test_a_first_message_with_nothing_pending_behind_it_is_the_batch_without_a_second_pull(
    nats_url,
):
    nc, js, subscription = await consumer_with(nats_url, 1)
    watcher, seen = await pulls_seen(nats_url)
    try:
        assert [m.data for m in await fetching(js)._fetch(subscription)] == [b"0"]
        await nc.flush()
        await watcher.flush()
        assert len(seen) == 1  # the fetch's own pull: no "take what is ready" after it
    finally:
        await watcher.close()
        await nc.close()


async def test_a_first_message_with_more_pending_is_followed_by_what_is_ready(nats_url):
    nc, js, subscription = await consumer_with(nats_url, 3)
    watcher, seen = await pulls_seen(nats_url)
    try:
        assert [m.data for m in await fetching(js)._fetch(subscription)] == [b"0", b"1", b"2"]
        await nc.flush()
        await watcher.flush()
        assert len(seen) == 2 and b"no_wait" in seen[1]
    finally:
        await watcher.close()
        await nc.close()
