"""JetStream plumbing shared by the services: connect, the stream, batched durable consumers."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import msgspec
import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from nats.js.errors import APIError, NoStreamResponseError, NotFoundError, ServiceUnavailableError
from taskengine_contracts import subjects
from taskengine_contracts.events import AnyEvent, decode, encode, topic_of
from taskengine_store.rejected import Rejected

from taskengine_runtime import metrics
from taskengine_runtime.failures import POISON_ATTEMPTS, describe, is_transient, isolating
from taskengine_runtime.hops import HopTrace
from taskengine_runtime.logs import context
from taskengine_runtime.pacing import Pacing
from taskengine_runtime.pull import StandingPull, consumer_sequence

log = logging.getLogger(__name__)

STREAM_MAX_AGE = 7 * 24 * 3600.0
DUPLICATE_WINDOW = 300.0
RESUME_MARGIN = 1000
FAILOVER: tuple[type[Exception], ...] = (
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    NoStreamResponseError,
    ServiceUnavailableError,
)
"""What JetStream answers while a cluster elects a new leader for the stream or a consumer
(a node died): no one answers, or 503. Seconds later the new leader does: wait and retry."""
FAILOVER_PAUSE = 0.5


def servers(url: str) -> list[str]:
    """TASKENGINE_NATS_URL's servers (comma-separated)."""
    return [server.strip() for server in url.split(",") if server.strip()]


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
    url: str, name: str, reconnects: Reconnects | None = None, **options: Any
) -> tuple[Client, JetStreamContext]:
    """A connection that keeps reconnecting for as long as the process lives; `options`
    (EngineSettings.nats_options: user, password, TLS) go to nats.connect."""

    async def on_error(error: Exception) -> None:
        log.warning("nats: %s", error)

    async def on_reconnected() -> None:
        log.warning("nats: reconnected to %s", nc.connected_url.netloc if nc.connected_url else "?")
        if reconnects is not None:
            await reconnects.happened()

    nc = await nats.connect(
        servers(url),
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        error_cb=on_error,
        reconnected_cb=on_reconnected,
        **options,
    )
    return nc, nc.jetstream(publish_async_max_pending=8000)


class StreamError(RuntimeError):
    """The stream cannot be made as the settings ask (e.g. more replicas than servers)."""


async def ensure_stream(js: JetStreamContext, replicas: int = 1) -> None:
    """The one stream for every event (file storage; duplicates dropped by Nats-Msg-Id), with
    at least `replicas` replicas (TASKENGINE_NATS_REPLICAS).

    A stream with fewer replicas is raised to `replicas` (its other settings kept); one with
    more is left so: processes started with a lower setting never shrink it (lower it by hand,
    `nats stream edit`). Durable consumers take the stream's replica count."""
    try:
        info = await js.stream_info(subjects.STREAM)
    except NotFoundError:
        config = api.StreamConfig(
            name=subjects.STREAM,
            subjects=[subjects.ALL],
            storage=api.StorageType.FILE,
            retention=api.RetentionPolicy.LIMITS,
            max_age=STREAM_MAX_AGE,
            duplicate_window=DUPLICATE_WINDOW,
            num_replicas=replicas,
        )
        await _stream_call(js.add_stream(config), f"creating it with {replicas} replicas")
        return
    have = info.config.num_replicas or 1
    if have > replicas:
        log.warning(
            "stream %s has %d replicas, more than TASKENGINE_NATS_REPLICAS (%d): left so",
            subjects.STREAM,
            have,
            replicas,
        )
    elif have < replicas:
        log.warning(
            "stream %s: raising its replicas from %d to %d", subjects.STREAM, have, replicas
        )
        raised = replace(info.config, num_replicas=replicas)
        await _stream_call(js.update_stream(raised), f"raising its replicas to {replicas}")


async def _stream_call(call: Awaitable[Any], what: str) -> None:
    try:
        await call
    except APIError as error:
        if error.code == 400 or error.code == 500:  # the server refused the configuration
            raise StreamError(
                f"stream {subjects.STREAM}: {what} was refused by NATS ({error.description}):"
                " TASKENGINE_NATS_REPLICAS may be at most the number of JetStream servers in the"
                " cluster (1 on a server that is not clustered)"
            ) from error
        raise


@dataclass(frozen=True, slots=True)
class Delivered:
    """An event from the bus with its position in the store's global order."""

    position: int
    event: AnyEvent
    message: Msg | None = None
    """What it came in, to describe it if it has to be set aside."""


Handler = Callable[[list[Delivered]], Awaitable[bool]]
"""Handles a batch; True if it committed the batch's tracking record with its effects.

False means the batch had no durable effect: redelivering it would be harmless, so its
position is recorded lazily (`track`, at most once per `TRACK_EVERY` seconds)."""
Reject = Callable[[list[Rejected], int | None], Awaitable[None]]
"""Records messages set aside; with a position, commits the tracking record with them."""
TRACK_EVERY = 1.0
IDLE_WAIT = 1.0
"""Seconds one pull waits for a first message before the consumer's idle work runs."""
PROBE = 16
"""Messages looked at past one without a position before the resume search assumes the worst."""


class BatchConsumer:
    """A durable pull consumer handled a batch at a time, in order.

    The handler commits its effects with a tracking record of the batch's last position, so
    anything at or below `handled` is a redelivery and is skipped. Messages come through a
    standing pull (`StandingPull`: at most a batch waiting beyond the one in hand), nothing is
    acknowledged, and a failing batch is retried, so no later event is handled before an
    earlier one.

    Poison is set aside (`reject`), never retried forever: a message that is not an event from
    the store (no position header, undecodable, an event type other than its subject says, or
    a position the store has not reached) at once, without touching the position; an event
    whose handling fails the same way `attempts` times once isolated from its batch, with its
    position tracked. A transient failure (`failures.is_transient`: the store or the bus away)
    is retried without end.
    """

    def __init__(
        self,
        nc: Client,
        durable: str,
        filter_subjects: Sequence[str],
        handler: Handler,
        handled: int,
        track: Callable[[int], Awaitable[None]],
        reject: Reject,
        latest: Callable[[], Awaitable[int]],
        heard: Callable[[], int] | None = None,
        batch: int = 500,
        wait: float = IDLE_WAIT,
        idle: Callable[[], Awaitable[None]] | None = None,
        attempts: int = POISON_ATTEMPTS,
        trace: HopTrace | None = None,
        inactive: float | None = None,
        name: str | None = None,
        interval: float = 0.0,
    ):
        self.nc, self.durable, self.filter_subjects = nc, durable, list(filter_subjects)
        self.name = name or durable
        """Who it is in logs, metrics and set-aside records (a partitioned service's instances
        read through consumers of their own, under the service's name)."""
        self.handler, self.handled, self.batch, self.wait = handler, handled, batch, wait
        self.track, self.reject, self.idle = track, reject, idle
        self.attempts = max(1, attempts)
        self.latest = latest
        self.heard = heard
        """A lower bound of the store's head known without reading it (`Runtime.heard`). None:
        the head is read (`latest`) once for a batch past the last head read, what a paced
        consumer (`interval`) should do: hearing every commit's NOTIFY wakes the process and
        its PostgreSQL backend for each (the notifier and the scheduler, at 200 jobs/s: 0.7-1.2
        ms of CPU a job)."""
        self.trace = trace
        self.pacing = Pacing(interval)
        """Off a job's way to its start, batches at least `interval` seconds apart."""
        self.inactive = inactive
        """Seconds after which JetStream removes the consumer once nobody reads it (one named
        after an instance that is gone for good); None: never."""
        """Hop tracing (debug): each handled event's instants, appended after its batch."""
        self.stored = 0
        """The store's last position when last read: no event from it can be past that."""
        self.tracked = handled
        self.tracked_at = 0.0
        self.idle_now = False
        """The last fetch found nothing: this consumer has all the bus holds for it."""
        self.delivered = 0
        """The consumer sequence of the last message received from the current consumer."""
        self.rewound: int | None = None
        self.rewinds = 0
        """How many rewinds took effect: each delivers again from where it went back to."""
        metrics.LAG.consumers[self.name] = self.lag_position

    def rewind(self, position: int) -> None:
        """Delivers again what follows `position`, from the next fetch on, once the batch in
        hand is done (a partition taken over stands behind this consumer)."""
        self.rewound = min(position, self.rewound if self.rewound is not None else position)

    def lag_position(self) -> int | None:
        """Where this consumer got to, for its lag (None: it has all the bus holds for it, so
        its lag is none of its own; events it does not take count while it is busy)."""
        return None if self.idle_now else self.handled

    @property
    def js(self) -> JetStreamContext:
        return self.nc.jetstream()

    async def _subscribe(self) -> StandingPull:
        """(Re)creates the consumer to deliver from just after the tracked position, and
        pulls from it.

        The store's tracking record says what was handled (the consumer acknowledges nothing):
        a predecessor killed mid-batch may have left fetched-but-unhandled messages.
        """
        start = await self._stream_sequence_after(self.handled)
        try:
            await self.js.delete_consumer(subjects.STREAM, self.durable)
        except NotFoundError:
            pass
        config = api.ConsumerConfig(
            durable_name=self.durable,
            ack_policy=api.AckPolicy.NONE,
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=start,
            filter_subjects=self.filter_subjects,
            inactive_threshold=self.inactive,
        )
        await self.js.add_consumer(subjects.STREAM, config)
        pull = StandingPull(self.nc, subjects.STREAM, self.durable, self.batch)
        await pull.start()
        return pull

    async def _resubscribe(self, previous: StandingPull | None = None) -> StandingPull:
        """`_subscribe`, waiting out a cluster's failover (no leader for the stream or the
        consumer yet)."""
        if previous is not None:
            await previous.stop()
        self.delivered = 0
        while True:
            try:
                return await self._subscribe()
            except FAILOVER as error:
                log.warning("%s: (re)creating the consumer: %s; again", self.name, describe(error))
                await asyncio.sleep(FAILOVER_PAUSE)

    def _missed(self, messages: list[Msg]) -> bool:
        """True if deliveries before or within `messages` never arrived (the consumer's
        sequence skips): a consumer leader died with them on their way, or they were dropped
        on the way to this process. The server counts them as delivered and never delivers
        them again; the consumer is to be re-created from the tracked position instead (what
        it already handled is skipped)."""
        for message in messages:
            sequence = consumer_sequence(message.reply)
            if sequence is None:  # not a JetStream delivery (a test's own message)
                return False
            if sequence != self.delivered + 1:
                log.warning(
                    "%s: deliveries %d to %d never arrived; re-creating the consumer after %d",
                    self.name,
                    self.delivered + 1,
                    sequence - 1,
                    self.handled,
                )
                return True
            self.delivered = sequence
        return False

    async def _stream_sequence_after(self, position: int) -> int:
        """The first stream sequence holding an event past `position` (binary search).

        Messages without a position (published by someone other than the relay) say nothing
        about the order: the search looks past them, and where it finds only such messages
        it errs early (a redelivery is skipped; a skipped event would be lost)."""
        state = (await self.js.stream_info(subjects.STREAM)).state
        low, high = state.first_seq, state.last_seq + 1
        if position == 0 or state.messages == 0:
            return max(low, 1)
        while low < high:
            middle = (low + high) // 2
            found = await self._position_from(middle, min(high, middle + PROBE))
            if found is not None and found <= position:
                low = middle + 1
            else:
                high = middle
        # Positions are monotonic in the stream; a margin covers a late re-publish.
        return max(state.first_seq, low - RESUME_MARGIN, 1)

    async def _position_from(self, sequence: int, stop: int) -> int | None:
        """The position of the first event at or after `sequence` (before `stop`), if any.

        Everything between `sequence` and that event has no position, so if the event was
        handled, so was (or never needs to be) the rest."""
        for seq in range(sequence, max(stop, sequence + 1)):
            try:
                message = await self.js.get_msg(subjects.STREAM, seq)
            except NotFoundError:  # removed by a limit: treat as already handled
                return 0
            found = position_of(message.headers)
            if found:
                return found
        return None

    async def run(self) -> None:
        pull = await self._resubscribe()
        try:
            while True:
                pull = await self._follow(pull)
        finally:
            await pull.stop()

    async def _follow(self, pull: StandingPull) -> StandingPull:
        """Handles batches until the consumer is to be made again; returns its new pull."""
        while True:
            if self.rewound is not None:
                self.handled, self.rewound = self.rewound, None
                pull = await self._resubscribe(pull)
                self.rewinds += 1
                return pull
            await self.pacing.wait()
            messages = await self._fetch(pull)
            if messages:
                self.pacing.began()
            if self._missed(messages):
                return await self._resubscribe(pull)
            received = time.time()
            self.idle_now = not messages
            if not messages:
                await self._track_lazily()
                if self.idle:
                    await self.idle()
                continue
            batch: list[Delivered] = []
            rejected: list[Rejected] = []
            for message in messages:
                position = position_of(message.headers)
                if position and position <= self.handled:  # a redelivery
                    continue
                try:
                    event = decode(message.data)
                except msgspec.DecodeError as error:
                    rejected.append(self._rejected(message, f"undecodable: {error}"))
                    continue
                if not position:
                    why = f"no {subjects.POSITION_HEADER} header: not an event from the store"
                    rejected.append(self._rejected(message, why))
                elif message.subject != subjects.subject_for(event):
                    why = f"a {topic_of(event)} event on {message.subject}"
                    rejected.append(self._rejected(message, why))
                else:
                    batch.append(Delivered(position, event, message))
            if batch and (last := max(d.position for d in batch)) > self.stored:
                batch = await self._stored_only(batch, last, rejected)
            batch = in_order(batch)
            if rejected:  # not events from the store: they say nothing about its positions
                await self._set_aside(rejected, None)
            if batch:
                await self._handle(batch)
                self.handled = max(self.handled, batch[-1].position)
                if self.trace:
                    self.trace.record(self.name, batch, received, time.time())
            await self._track_lazily()
            if self.idle:
                await self.idle()

    async def _fetch(self, pull: StandingPull) -> list[Msg]:
        """The next batch (`StandingPull.take`: waits up to `wait` for a first message); none
        while the consumer has no leader."""
        try:
            return await pull.take(self.wait)
        except FAILOVER as error:
            log.warning("%s: no consumer leader yet (%s)", self.name, describe(error))
            await asyncio.sleep(FAILOVER_PAUSE)
            return []

    async def _stored_only(
        self, batch: list[Delivered], last: int, rejected: list[Rejected]
    ) -> list[Delivered]:
        """`batch` without events claiming a position the store has not reached: a forged
        header must not move the consumer past events it has not seen yet. The store's
        commits announce their positions as they happen, before the relay publishes them, so
        the store is read only when the batch goes past what was heard (`last`: its highest
        position)."""
        if self.heard is not None and (heard := self.heard()) >= last:
            self.stored = heard
            return batch
        while True:
            try:
                self.stored = await self.latest()
                break
            except asyncio.CancelledError:
                raise
            except Exception as error:
                if not is_transient(error):
                    raise
                log.warning("%s: reading the store's position failed: %s", self.name, error)
                await asyncio.sleep(0.5)
        for item in batch:
            if item.position > self.stored and item.message is not None:
                why = f"position {item.position} is past the store's last ({self.stored})"
                rejected.append(self._rejected(item.message, why))
        return [item for item in batch if item.position <= self.stored]

    def _rejected(self, message: Msg, error: str, attempts: int = 1) -> Rejected:
        try:
            sequence: int | None = message.metadata.sequence.stream
        except Exception:  # not a JetStream delivery (a test's own message)
            sequence = None
        return Rejected(
            consumer=self.name,
            subject=message.subject,
            payload=bytes(message.data),
            error=error,
            stream_seq=sequence,
            position=position_of(message.headers) or None,
            headers=dict(message.headers or {}),
            attempts=attempts,
        )

    async def _set_aside(self, rejected: list[Rejected], position: int | None) -> None:
        for item in rejected:
            log.error(
                "%s: message set aside: stream sequence %s, subject %s, position %s: %s",
                self.name,
                item.stream_seq,
                item.subject,
                item.position,
                item.error,
                extra=context(position=item.position),
            )
        metrics.REJECTED.labels(self.name).inc(len(rejected))
        await self._retrying(lambda: self.reject(rejected, position), "recording set-aside")

    async def _retrying(self, call: Callable[[], Awaitable[None]], what: str) -> None:
        """Retries `call` while the store is away; any other failure is logged, not retried
        (the set-aside row is lost, never the flow)."""
        delay = 0.2
        while True:
            try:
                return await call()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                if not is_transient(error):
                    log.exception("%s: %s failed", self.name, what)
                    return
                text = describe(error)
                log.warning("%s: %s failed (%s); retry in %.1fs", self.name, what, text, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _track_lazily(self) -> None:
        now = time.monotonic()
        if self.handled > self.tracked and now - self.tracked_at >= TRACK_EVERY:
            try:
                await self.track(self.handled)
            except Exception as error:
                if not is_transient(error):
                    raise
                log.warning("%s: tracking failed (%s); later", self.name, describe(error))
                self.tracked_at = now
                return
            self.tracked, self.tracked_at = self.handled, now

    async def _handle(self, batch: list[Delivered]) -> None:
        """Handles `batch` in order; an event failing the same way is set aside (`isolating`)."""

        async def handle(part: Sequence[Delivered]) -> None:
            if await self.handler(list(part)):
                self.tracked = part[-1].position

        async def set_aside(item: Delivered, error: BaseException, failures: int) -> None:
            text = f"handling failed {failures} times: {describe(error)}"
            if item.message is not None:
                rejected = self._rejected(item.message, text, failures)
            else:
                subject, payload = subjects.subject_for(item.event), encode(item.event)
                rejected = Rejected(self.name, subject, payload, text, None, item.position)
            await self._set_aside([rejected], item.position)
            self.tracked = item.position

        await isolating(batch, handle, set_aside, self.attempts, self.name)


async def retire_consumer(js: JetStreamContext, name: str) -> None:
    """Removes the consumer `name` if there is one (a service's consumer of an older layout,
    which nobody reads any more and which would hold the relay's resume point back)."""
    try:
        await js.delete_consumer(subjects.STREAM, name)
    except NotFoundError:
        pass


def in_order(batch: list[Delivered]) -> list[Delivered]:
    """`batch` by position, each position once (the relay's own are already so; a message with
    a forged position must not make the real ones around it look like redeliveries)."""
    if all(a.position < b.position for a, b in zip(batch, batch[1:], strict=False)):
        return batch
    seen: set[int] = set()
    ordered = []
    for item in sorted(batch, key=lambda d: d.position):
        if item.position not in seen:
            seen.add(item.position)
            ordered.append(item)
    return ordered


def position_of(headers: dict[str, str] | None) -> int:
    """The store position a message carries (0: none, or not a number)."""
    raw = (headers or {}).get(subjects.POSITION_HEADER)
    if not raw:
        return 0
    try:
        return max(int(raw), 0)
    except ValueError:
        return 0
