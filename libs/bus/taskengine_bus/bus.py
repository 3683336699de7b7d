"""JetStream plumbing shared by the services: connect, the stream, batched durable consumers."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import msgspec
import nats
from nats.aio.client import Client
from nats.js import JetStreamContext, api
from nats.js.errors import NotFoundError
from taskengine_contracts import subjects
from taskengine_contracts.events import AnyEvent, decode

log = logging.getLogger(__name__)

STREAM_MAX_AGE = 7 * 24 * 3600.0
DUPLICATE_WINDOW = 300.0
RESUME_MARGIN = 1000


class Reconnects:
    """Counts a connection's reconnects, so a loop can notice one or wait for the next."""

    def __init__(self) -> None:
        self.count = 0
        self._next = asyncio.Event()

    async def happened(self) -> None:
        self.count += 1
        self._next.set()
        self._next = asyncio.Event()

    async def wait(self) -> None:
        await self._next.wait()


async def connect(
    url: str, name: str, reconnects: Reconnects | None = None
) -> tuple[Client, JetStreamContext]:
    """A connection that keeps reconnecting for as long as the process lives."""

    async def on_error(error: Exception) -> None:
        log.warning("nats: %s", error)

    async def on_reconnected() -> None:
        log.warning("nats: reconnected to %s", nc.connected_url.netloc if nc.connected_url else "?")
        if reconnects is not None:
            await reconnects.happened()

    nc = await nats.connect(
        [server.strip() for server in url.split(",") if server.strip()],
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        error_cb=on_error,
        reconnected_cb=on_reconnected,
    )
    return nc, nc.jetstream(publish_async_max_pending=8000)


async def ensure_stream(js: JetStreamContext) -> None:
    """The one stream for every event (file storage; duplicates dropped by Nats-Msg-Id)."""
    config = api.StreamConfig(
        name=subjects.STREAM,
        subjects=[subjects.ALL],
        storage=api.StorageType.FILE,
        retention=api.RetentionPolicy.LIMITS,
        max_age=STREAM_MAX_AGE,
        duplicate_window=DUPLICATE_WINDOW,
    )
    try:
        await js.stream_info(subjects.STREAM)
    except NotFoundError:
        await js.add_stream(config)


@dataclass(frozen=True, slots=True)
class Delivered:
    """An event from the bus with its position in the store's global order."""

    position: int
    event: AnyEvent


Handler = Callable[[list[Delivered]], Awaitable[bool]]
"""Handles a batch; True if it committed the batch's tracking record with its effects.

False means the batch had no durable effect: redelivering it would be harmless, so its
position is recorded lazily (`track`, at most once per `TRACK_EVERY` seconds)."""
TRACK_EVERY = 1.0


class BatchConsumer:
    """A durable pull consumer handled a batch at a time, in order.

    The handler commits its effects with a tracking record of the batch's last position, so
    anything at or below `handled` is a redelivery and is skipped. At most one batch is
    unacknowledged (`max_ack_pending` = batch size), and a failing batch is retried as a whole,
    so no later event is handled before an earlier one.
    """

    def __init__(
        self,
        js: JetStreamContext,
        durable: str,
        filter_subjects: Sequence[str],
        handler: Handler,
        handled: int,
        track: Callable[[int], Awaitable[None]],
        batch: int = 500,
        wait: float = 0.05,
        idle: Callable[[], Awaitable[None]] | None = None,
    ):
        self.js, self.durable, self.filter_subjects = js, durable, list(filter_subjects)
        self.handler, self.handled, self.batch, self.wait = handler, handled, batch, wait
        self.track, self.idle = track, idle
        self.tracked = handled
        self.tracked_at = 0.0

    async def _subscribe(self) -> JetStreamContext.PullSubscription:
        """(Re)creates the consumer to deliver from just after the tracked position.

        The store's tracking record, not JetStream's ack floor, says what was handled: a
        predecessor killed mid-batch may have left fetched-but-unhandled messages that a plain
        resume (with ack-all) would acknowledge unseen.
        """
        start = await self._stream_sequence_after(self.handled)
        try:
            await self.js.delete_consumer(subjects.STREAM, self.durable)
        except NotFoundError:
            pass
        config = api.ConsumerConfig(
            durable_name=self.durable,
            ack_policy=api.AckPolicy.ALL,
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=start,
            max_ack_pending=self.batch,
            ack_wait=120.0,
            filter_subjects=self.filter_subjects,
        )
        await self.js.add_consumer(subjects.STREAM, config)
        return await self.js.pull_subscribe_bind(durable=self.durable, stream=subjects.STREAM)

    async def _stream_sequence_after(self, position: int) -> int:
        """The first stream sequence holding an event past `position` (binary search)."""
        state = (await self.js.stream_info(subjects.STREAM)).state
        low, high = state.first_seq, state.last_seq + 1
        if position == 0 or state.messages == 0:
            return max(low, 1)
        while low < high:
            middle = (low + high) // 2
            try:
                message = await self.js.get_msg(subjects.STREAM, middle)
                found = int((message.headers or {}).get(subjects.POSITION_HEADER, 0))
            except NotFoundError:  # removed by a limit: treat as already handled
                found = 0
            if found <= position:
                low = middle + 1
            else:
                high = middle
        # Positions are monotonic in the stream; a margin covers a late re-publish.
        return max(state.first_seq, low - RESUME_MARGIN, 1)

    async def run(self) -> None:
        subscription = await self._subscribe()
        while True:
            try:
                messages = await subscription.fetch(self.batch, timeout=self.wait)
            except (TimeoutError, nats.errors.TimeoutError):
                messages = []
            if not messages:  # nats-py answers [] when the server's timeout reply comes first
                await self._track_lazily()
                if self.idle:
                    await self.idle()
                continue
            batch = []
            for message in messages:
                position = int((message.headers or {}).get(subjects.POSITION_HEADER, 0))
                if position and position <= self.handled:
                    continue
                try:
                    batch.append(Delivered(position, decode(message.data)))
                except msgspec.ValidationError as error:
                    log.error(
                        "%s: undecodable event at %s skipped: %s", self.durable, position, error
                    )
            if batch:
                if await self._handle(batch):
                    self.tracked = batch[-1].position
                self.handled = max(self.handled, batch[-1].position)
            await messages[-1].ack()
            await self._track_lazily()
            if self.idle:
                await self.idle()

    async def _track_lazily(self) -> None:
        now = time.monotonic()
        if self.handled > self.tracked and now - self.tracked_at >= TRACK_EVERY:
            await self.track(self.handled)
            self.tracked, self.tracked_at = self.handled, now

    async def _handle(self, batch: list[Delivered]) -> bool:
        delay = 0.2
        while True:
            try:
                return await self.handler(batch)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception(
                    "%s: batch of %d failed; retrying in %.1fs", self.durable, len(batch), delay
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
