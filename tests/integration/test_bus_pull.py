"""`StandingPull`, the one open pull request a consumer takes its batches through, against a
real JetStream."""

from __future__ import annotations

import asyncio
import contextlib

import nats
from nats.js import api
from nats.js.errors import ServiceUnavailableError
from taskengine_runtime import pull as pulls
from taskengine_runtime.pull import StandingPull

STREAM, SUBJECT, DURABLE = "PULLTEST", "pulltest.events", "standing"


async def stream(nats_url: str):  # type: ignore[no-untyped-def]
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    try:
        await js.delete_stream(STREAM)
    except nats.js.errors.NotFoundError:
        pass
    await js.add_stream(name=STREAM, subjects=[SUBJECT], storage=api.StorageType.MEMORY)
    config = api.ConsumerConfig(durable_name=DURABLE, ack_policy=api.AckPolicy.NONE)
    await js.add_consumer(STREAM, config)
    return nc, js


async def publish(js, *payloads: bytes) -> None:  # type: ignore[no-untyped-def]
    for payload in payloads:
        await js.publish(SUBJECT, payload)


async def watch(nats_url: str, subject: str):  # type: ignore[no-untyped-def]
    """What is sent on `subject`, as a list filled as it comes."""
    watcher = await nats.connect(nats_url)
    seen: list[bytes] = []

    async def saw(message) -> None:  # type: ignore[no-untyped-def]
        seen.append(message.data)

    await watcher.subscribe(subject, cb=saw)
    await watcher.flush()
    return watcher, seen


async def take_all(pull: StandingPull, count: int) -> list[list[bytes]]:
    batches: list[list[bytes]] = []
    while sum(map(len, batches)) < count:
        batch = await pull.take(5)
        assert batch, "nothing came"
        batches.append([m.data for m in batch])
    return batches


async def test_messages_come_in_order_through_one_request_and_nothing_is_acknowledged(nats_url):
    nc, js = await stream(nats_url)
    requests, requested = await watch(nats_url, f"$JS.API.CONSUMER.MSG.NEXT.{STREAM}.{DURABLE}")
    acks, acked = await watch(nats_url, "$JS.ACK.>")
    pull = StandingPull(nc, STREAM, DURABLE, size=10)
    await pull.start()
    try:
        await publish(js, b"0", b"1", b"2")
        first = await take_all(pull, 3)
        for n in range(3, 8):  # one at a time, as a quiet system's events come
            await publish(js, b"%d" % n)
            assert [m.data for m in await pull.take(5)] == [b"%d" % n]
        assert sum(first, []) == [b"0", b"1", b"2"]
        await nc.flush()
        await requests.flush()
        assert len(requested) == 1  # the standing request: eight messages, no other pull
        assert b'"batch":10' in requested[0] and b'"max_bytes"' in requested[0]
        assert acked == []
    finally:
        await pull.stop()
        await requests.close()
        await acks.close()
        await nc.close()


async def test_a_consumer_behind_holds_at_most_its_size_waiting(nats_url):
    nc, js = await stream(nats_url)
    await publish(js, *(b"%d" % n for n in range(10)))
    pull = StandingPull(nc, STREAM, DURABLE, size=3)
    await pull.start()
    try:
        await asyncio.sleep(0.3)  # the server had all the time it needed to send more
        assert len(pull.messages) == 3
        batches = await take_all(pull, 10)
        assert sum(batches, []) == [b"%d" % n for n in range(10)]
        assert max(map(len, batches)) <= 3
    finally:
        await pull.stop()
        await nc.close()


async def test_a_request_that_expired_is_replaced(nats_url):
    nc, js = await stream(nats_url)
    pull = StandingPull(nc, STREAM, DURABLE, size=10, expires=0.2)
    await pull.start()
    try:
        assert await pull.take(0.7) == []  # three requests expired meanwhile
        await publish(js, b"later")
        assert [m.data for m in await pull.take(5)] == [b"later"]
        assert pull.reply.rsplit(".", 1)[1] != "1"
    finally:
        await pull.stop()
        await nc.close()


async def test_a_request_ends_where_its_bytes_run_out_and_the_next_takes_the_rest(nats_url):
    nc, js = await stream(nats_url)
    pull = StandingPull(nc, STREAM, DURABLE, size=10)
    pull.max_bytes = 2500  # about two of these messages, with their subject and reply
    await pull.start()
    try:
        payloads = [bytes([65 + n]) * 900 for n in range(5)]
        await publish(js, *payloads)
        assert sum(await take_all(pull, 5), []) == payloads
    finally:
        await pull.stop()
        await nc.close()


async def test_a_consumer_deleted_and_made_again_is_pulled_from_again(nats_url, monkeypatch):
    monkeypatch.setattr(pulls, "PAUSE", 0.05)
    nc, js = await stream(nats_url)
    pull = StandingPull(nc, STREAM, DURABLE, size=10, expires=30)
    await pull.start()
    try:
        await publish(js, b"0")
        assert [m.data for m in await pull.take(5)] == [b"0"]
        await js.delete_consumer(STREAM, DURABLE)  # its standing request goes with it
        config = api.ConsumerConfig(
            durable_name=DURABLE,
            ack_policy=api.AckPolicy.NONE,
            deliver_policy=api.DeliverPolicy.NEW,
        )
        await js.add_consumer(STREAM, config)
        await publish(js, b"1")
        # Well before the 30 s the request was asked for: its end was heard (409).
        assert [m.data for m in await pull.take(5)] == [b"1"]
    finally:
        await pull.stop()
        await nc.close()


async def test_a_pull_on_a_consumer_not_there_yet_takes_from_it_once_it_is(nats_url):
    nc, js = await stream(nats_url)
    pull = StandingPull(nc, STREAM, "later", size=10, expires=0.3)
    await pull.start()
    try:
        # The server refuses the request (503, no one answers) or, older, says nothing.
        with contextlib.suppress(ServiceUnavailableError):
            assert await pull.take(0.5) == []
        config = api.ConsumerConfig(durable_name="later", ack_policy=api.AckPolicy.NONE)
        await js.add_consumer(STREAM, config)
        await publish(js, b"0")
        taken: list[bytes] = []
        for _ in range(10):
            with contextlib.suppress(ServiceUnavailableError):
                taken += [m.data for m in await pull.take(1)]
            if taken:
                break
        assert taken == [b"0"]
    finally:
        await pull.stop()
        await nc.close()
