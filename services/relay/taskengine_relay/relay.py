"""The outbox relay: publishes every stored event to JetStream in store order.

Each event goes out with `Nats-Msg-Id` = `<stream id>:<version>`, so a re-publish after a crash
(between the store commit and our tracking update) is dropped by JetStream's duplicate window
and, beyond it, by the consumers' tracking. The relay's own position is a tracking record.

A small commit's NOTIFY to the relay (on its own channel, `commits.relay_channel`) carries its
events (`store.carried`): when they follow the last position published without a gap, they
are published as they came, without reading the log.
Anything else (a commit too large to carry, a NOTIFY lost while the listener reconnected, a
position a rolled-back insert used up, a re-publish after a reconnect) is read from the log.

The stream is not the record: a NATS that died may come back without its unsynced tail. So on
start and after every reconnect the relay publishes again from the lowest position any of
the stream's consumers recorded (never from further back than it must).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import logging
import time
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.errors import APIError, NoStreamResponseError
from taskengine_contracts import subjects
from taskengine_core.partitions import tracking_names
from taskengine_runtime import Runtime, metrics
from taskengine_runtime.bus import FAILOVER, FAILOVER_PAUSE, TRACK_EVERY
from taskengine_runtime.failures import describe
from taskengine_store.store import Outgoing, carried

log = logging.getLogger(__name__)

NAME = "relay"
BATCH = 2000
IDLE_POLL = 0.5
"""Seconds idle between reads of the log when no commit was heard (a lost NOTIFY)."""
ACK_TIMEOUT = 10.0
"""Seconds a batch waits for its acks before it is published again (JetStream answers in
milliseconds; an answer lost with a stream leader that died never comes)."""


async def relay(runtime: Runtime) -> None:
    store = runtime.store
    outbox = store.outbox()
    told: collections.deque[Outgoing] = collections.deque()

    def hear(payload: str) -> None:
        try:
            events = carried(payload)
        except ValueError:  # not as a commit writes it: what it names is read from the log
            log.warning("relay: an unreadable NOTIFY on its channel, ignored")
            return
        if len(told) + len(events) > BATCH:  # far behind: the log is read instead
            told.clear()
        told.extend(events)

    runtime.when_committed(hear)
    publisher = Publisher(runtime.nc)
    await publisher.start()
    tracked = await runtime.call(store.tracked, NAME)
    position = await _resume_from(runtime, tracked)
    log.info("relay resuming after position %d (tracked %d)", position, tracked)
    metrics.LAG.relay = lambda: position
    reconnects = runtime.reconnects.count
    stamp = runtime.config.hop_trace
    tracked_at = time.monotonic()

    async def track() -> None:
        nonlocal tracked, tracked_at
        await runtime.call(store.track, NAME, position)
        tracked, tracked_at = position, time.monotonic()

    try:
        while True:
            if runtime.reconnects.count != reconnects:
                reconnects = runtime.reconnects.count
                position = await _resume_from(runtime, position)
                log.warning("relay: NATS reconnected; publishing again after %d", position)
            heard = runtime.heard()
            notes = following(told, position) or await outbox.after(position, BATCH)
            if not notes:
                if position > tracked:  # below it we are re-publishing after a reconnect
                    await track()
                await runtime.news(max(heard, position), IDLE_POLL)
                continue
            publisher.begin(len(notes))
            for note in notes:
                headers = {
                    subjects.MSG_ID_HEADER: subjects.message_id(note.stream, note.version),
                    subjects.POSITION_HEADER: str(note.position),
                }
                if stamp:
                    headers[subjects.PUBLISHED_HEADER] = f"{time.time():.6f}"
                await publisher.publish(subjects.subject_for_topic(note.topic), note.state, headers)
            if not await _acked(publisher, runtime):
                continue  # NATS came back meanwhile: the batch may be lost, publish it again
            position = notes[-1].position
            # While publishing, the position is recorded as lazily as a consumer's; idle, at once.
            # A relay restarted publishes again what followed the record (JetStream drops it
            # within its duplicate window, consumers beyond it).
            if position > tracked and time.monotonic() - tracked_at >= TRACK_EVERY:
                await track()
            # Past all that was heard, it waits for news rather than read the log for nothing.
            await runtime.news(position, IDLE_POLL)
    finally:
        await outbox.close()


def following(told: collections.deque[Outgoing], position: int) -> list[Outgoing]:
    """The events heard of that follow `position` without a gap, up to a batch (none: the log
    is to be read); those at or before it are dropped."""
    while told and told[0].position <= position:
        told.popleft()
    events: list[Outgoing] = []
    while told and told[0].position == position + len(events) + 1 and len(events) < BATCH:
        events.append(told.popleft())
    return events


class Publisher:
    """Publishes a batch to the stream and counts its acks: every message of a batch asks for
    its ack on the batch's own reply subject, and one subscription counts them (an ack of an
    earlier batch, come late, is not counted). nats-py's `publish_async` makes a random reply
    subject, a future and its callbacks for each message, and a PubAck of each answer: a
    quarter of the relay's CPU."""

    def __init__(self, nc: NATS):
        self.nc = nc
        self.inbox = nc.new_inbox()
        self.batches = itertools.count(1)
        self.reply = ""
        self.expected = self.acked = 0
        self.error: Exception | None = None
        """The first refusal among the batch's answers."""
        self.done = asyncio.Event()

    async def start(self) -> None:
        await self.nc.subscribe(f"{self.inbox}.*", cb=self._answered)

    def begin(self, count: int) -> None:
        self.reply = f"{self.inbox}.{next(self.batches)}"
        self.expected, self.acked, self.error = count, 0, None
        self.done.clear()

    async def publish(self, subject: str, payload: bytes, headers: dict[str, str]) -> None:
        await self.nc.publish(subject, payload, reply=self.reply, headers=headers)

    async def _answered(self, msg: Msg) -> None:
        if msg.subject != self.reply:
            return
        if self.error is None:
            self.error = refusal(msg)
        self.acked += 1
        # A refusal ends the batch at once: in a failover some answers never come.
        if self.error is not None or self.acked >= self.expected:
            self.done.set()


def refusal(msg: Msg) -> Exception | None:
    """The error a publish's answer carries (None: stored, or a duplicate dropped)."""
    if msg.headers and msg.headers.get("Status") == "503":  # no stream leader to answer
        return NoStreamResponseError()
    if b'"error"' not in msg.data:
        return None
    try:
        answer = json.loads(msg.data)
        if "error" in answer:
            APIError.from_error(answer["error"])  # raises the error's own class
    except APIError as error:
        return error
    except (ValueError, TypeError, KeyError):
        return APIError(description=f"unreadable answer: {msg.data[:200]!r}")
    return None


async def _acked(publisher: Publisher, runtime: Runtime) -> bool:
    """Waits for a batch's acks; False if NATS reconnected first (they may never come), the
    stream had no leader for a moment (a cluster's failover) or an ack never came (it went
    with a leader that died): the batch is to be published again, and JetStream drops what of
    it arrived."""
    done: asyncio.Future[Any] = asyncio.ensure_future(publisher.done.wait())
    reconnected: asyncio.Future[Any] = asyncio.ensure_future(runtime.reconnects.wait())
    try:
        finished, _ = await asyncio.wait(
            {done, reconnected}, timeout=ACK_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        done.cancel()
        reconnected.cancel()
    if done in finished:
        if publisher.error is None:
            return True
        if isinstance(publisher.error, FAILOVER):  # the stream's leader died: half stored?
            log.warning("relay: %s; publishing the batch again", describe(publisher.error))
            await asyncio.sleep(FAILOVER_PAUSE)
            return False
        raise publisher.error
    if reconnected in finished:
        return False
    log.warning(
        "relay: no ack for %d messages within %gs; publishing the batch again",
        publisher.expected - publisher.acked,
        ACK_TIMEOUT,
    )
    return False


async def _resume_from(runtime: Runtime, position: int) -> int:
    """`position`, or the lowest position a consumer of the stream recorded if lower.

    Whatever a consumer has not handled is then on the stream again, even if NATS lost it;
    JetStream drops what it still holds within its duplicate window, consumers skip the rest.
    """
    while True:
        try:
            names = [info.name for info in await runtime.js.consumers_info(subjects.STREAM)]
            break
        except FAILOVER as error:  # a reconnect during a cluster's failover
            log.warning("relay: listing the stream's consumers: %s; again", describe(error))
            await asyncio.sleep(FAILOVER_PAUSE)
    rows = await runtime.call(
        runtime.store.query,
        "SELECT min(notification_id) AS low FROM notification_tracking"
        " WHERE application_name LIKE ANY(%s)",
        (tracking_names(names),),
    )
    low = rows[0]["low"] if rows else None
    return position if low is None else min(position, low)
