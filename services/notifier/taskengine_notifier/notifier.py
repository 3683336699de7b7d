"""The notifier: POSTs a job's lifecycle to the URLs in its `rest_endpoints`.

A receiver hears of the job's start, each step's start, completion or failure, and the job's
end (with `custom_data` from the job's parameters). Deliveries due are rows of
`notifier_deliveries`, written with the consumer's tracking record; each attempt's result is an
event (`CallbackDelivered`, `CallbackAttemptFailed`), so the job log shows every delivery.
Failed attempts are retried with exponential backoff. Every delivery is signed (Standard
Webhooks) with the job's client's secret, and goes only to addresses the guard allows.

Each attempt is bounded as a whole (`outbound_deadline`, `outbound_max_response_bytes`) and runs
in its receiver's lane (`taskengine_core.lanes`): `outbound_per_host` at once per receiver, of
`outbound_concurrency` in all, and a breaker that holds back a receiver failing again and again,
so a slow or dead receiver delays only its own deliveries. A job's deliveries to one URL go one
at a time and in order: the next waits until the one before is delivered or given up.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from uuid import UUID

import aiohttp
import msgspec
from taskengine_contracts import subjects
from taskengine_contracts.events import (
    CallbackAttemptFailed,
    CallbackDelivered,
    Event,
    StepChanged,
)
from taskengine_core.deliveries import NOTIFIED
from taskengine_core.lanes import HostLanes, lanes_from, origin
from taskengine_core.outbound import OutboundGuard, parse_allowlist, sign, webhook_secret
from taskengine_core.outbound_http import exchange, outbound_client
from taskengine_core.partitions import PARTITIONS, consumer_name, partition_of
from taskengine_runtime import BatchConsumer, Delivered, Runtime, metrics
from taskengine_runtime.bus import retire_consumer
from taskengine_runtime.logs import context
from taskengine_runtime.partitioned import Partitions
from taskengine_store.store import Conflict, Statement

from taskengine_notifier.callbacks import deliveries_for

log = logging.getLogger(__name__)

NAME = "notifier"
MAX_ATTEMPTS = 10
MAX_BACKOFF = 60.0
INACTIVE = 3600.0
WINDOW = 0.5
"""The shortest time a send may be given (seconds); less, and it waits for the leases."""
"""Seconds after which JetStream drops the consumer of an instance gone for good."""

_INSERT = (
    "INSERT INTO notifier_deliveries (id, job_id, url, event, body, attempts, next_at)"
    " VALUES (%s, %s, %s, %s, %s, 0, %s) ON CONFLICT (id) DO NOTHING"
)
_RESCHEDULE = "UPDATE notifier_deliveries SET attempts = %s, next_at = %s WHERE id = %s"
_DELETE = "DELETE FROM notifier_deliveries WHERE id = %s"


_arrival = itertools.count()


@dataclass(order=True)
class Delivery:
    next_at: float
    seq: int  # ties go to the earlier event
    id: UUID = field(compare=False)
    job_id: int = field(compare=False)
    url: str = field(compare=False)
    event: str = field(compare=False)
    body: bytes = field(compare=False)
    attempts: int = field(compare=False, default=0)


Line = tuple[int, str]
"""A job and one of its URLs: its deliveries go one at a time, in order."""


class Notifier:
    """Sends each delivery on its own, in its receiver's lane (`HostLanes`), with one deadline
    for the whole exchange; finished attempts are recorded in batches (events + rows)."""

    def __init__(
        self,
        runtime: Runtime,
        client: aiohttp.ClientSession,
        guard: OutboundGuard,
        lanes: HostLanes | None = None,
    ):
        self.runtime = runtime
        self.client = client
        self.guard = guard
        config = runtime.config
        self.lanes = lanes or lanes_from(config)
        self.deadline = config.outbound_deadline
        self.max_bytes = config.outbound_max_response_bytes
        self.room = asyncio.Semaphore(config.outbound_concurrency)
        self.lines: dict[Line, deque[Delivery]] = {}
        """Deliveries not yet delivered or given up, per job and URL, in the order due."""
        self.due: list[Delivery] = []
        """The first delivery of each line that is not being sent, by when it is due."""
        self.sending: set[Line] = set()
        self.done: list[tuple[Delivery, int | None, str | None, float]] = []
        """Attempts made and not yet recorded (with how long each took)."""
        self.tasks: set[asyncio.Task] = set()
        self.wake = asyncio.Event()
        self.secrets: dict[str, str] = {}
        self.partitions = Partitions(
            runtime, NAME, self.idle, taken=self.take_over, dropped=self.drop
        )

    def pending(self) -> int:
        return sum(len(line) for line in self.lines.values())

    def headers(self, delivery: Delivery) -> dict[str, str]:
        """Standard Webhooks headers: the id stays the same across retries, the time does not."""
        client = msgspec.json.decode(delivery.body, type=_Owner).client
        if client not in self.secrets:
            self.secrets[client] = webhook_secret(self.runtime.config.webhook_key, client)
        timestamp = int(time.time())
        message_id = str(delivery.id)
        return {
            "content-type": "application/json",
            "webhook-id": message_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(self.secrets[client], message_id, timestamp, delivery.body),
        }

    def schedule(self, row: tuple, attempts: int = 0) -> None:
        delivery_id, job_id, url, kind, body, at = row
        delivery = Delivery(
            _mono(at), next(_arrival), delivery_id, job_id, url, kind, body, attempts
        )
        line = self.lines.setdefault((job_id, url), deque())
        line.append(delivery)
        if len(line) == 1 and (job_id, url) not in self.sending:
            heapq.heappush(self.due, delivery)
        self.wake.set()

    async def on_job_events(self, batch: list[Delivered]) -> bool:
        async with self.partitions.lock:
            end = batch[-1].position
            rows = []
            for item in self.partitions.mine(batch):
                self.runtime.apply(item.event)
                rows.extend(deliveries_for(item.event))
            if not rows:
                self.partitions.advance(end)
                return False
            statements: list[Statement] = [(_INSERT, row) for row in rows]
            if tracking := self.partitions.tracking(end):
                statements.append(tracking)
            await self.runtime.call(self.runtime.store.commit, (), None, statements)
            self.partitions.advance(end)
            for row in rows:
                self.schedule(row)
        return True

    async def take_over(self, taken: set[int]) -> None:
        """Partitions now held here: their deliveries not yet done are sent from here on, each
        job's in the order its events happened."""
        rows = await self.runtime.call(
            self.runtime.store.query,
            f"SELECT * FROM notifier_deliveries WHERE job_id %% {PARTITIONS} = ANY(%s)",
            (list(taken),),
        )
        here = {delivery.id for line in self.lines.values() for delivery in line}
        for row in sorted(rows, key=lambda r: (_happened(bytes(r["body"])), r["next_at"])):
            if row["id"] in here:
                continue
            self.schedule(
                (
                    row["id"],
                    row["job_id"],
                    row["url"],
                    row["event"],
                    bytes(row["body"]),
                    row["next_at"],
                ),
                row["attempts"],
            )

    def drop(self, partitions: set[int]) -> None:
        """Partitions no longer held here: their deliveries are forgotten (the next holder
        loads them), but for one being sent, which is recorded as it ends."""
        for line in list(self.lines):
            if partition_of(line[0]) in partitions and line not in self.sending:
                del self.lines[line]

    def idle(self, partition: int) -> bool:
        """No delivery of the partition is in hand here: it may be handed to another."""
        return all(partition_of(job_id) != partition for job_id, _ in self.lines)

    async def deliver_forever(self) -> None:
        """Sends due deliveries forever; a failure to record them is retried, never fatal."""
        try:
            while True:
                try:
                    await self.deliver_due()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("notifier: sending deliveries failed; retrying")
                    await asyncio.sleep(1.0)
        finally:
            for task in self.tasks:
                task.cancel()

    async def deliver_due(self) -> None:
        while True:
            self.wake.clear()
            await self.record_done()
            now = time.monotonic()
            while self.due and self.due[0].next_at <= now and self._window(now) > 0:
                delivery = heapq.heappop(self.due)
                line = self.lines.get((delivery.job_id, delivery.url))
                if not line or line[0] is not delivery:  # its partition was given up
                    continue
                self.sending.add((delivery.job_id, delivery.url))
                task = asyncio.create_task(self.send(delivery))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
            wait = self.due[0].next_at - now if self.due else None
            if wait is not None and not self._window(now):
                wait = max(wait, WINDOW)  # until the leases are renewed
            try:
                await asyncio.wait_for(self.wake.wait(), timeout=wait)
            except TimeoutError:
                pass

    def _window(self, now: float) -> float:
        """Seconds a send started now may take: within the deadline, and over before this
        instance's leases could lapse, so that no other instance sends the same line meanwhile
        (0: none may start until the leases are renewed)."""
        window = min(self.deadline, self.partitions.lease_end - now)
        return window if window >= WINDOW else 0.0

    async def send(self, delivery: Delivery) -> None:
        """One attempt in its receiver's lane; while the receiver is held back, it waits."""
        host = origin(delivery.url)
        held = await self.lanes.acquire(host)
        if held is not None:
            delivery.next_at = time.monotonic() + held
            self.release(delivery)
            self.wake.set()
            return
        answered = False
        try:
            async with self.room:
                started = time.monotonic()
                if not (window := self._window(started)):  # the leases may lapse meanwhile
                    delivery.next_at = started + WINDOW
                    self.release(delivery)
                    self.wake.set()
                    return
                try:
                    status, error = await self.attempt(delivery, window)
                except Exception as failure:  # whatever happens, it is a failed attempt
                    status, error = None, f"{type(failure).__name__}: {failure}"[:300]
            answered = error is None or error.startswith("refused") or _answered(status, error)
        finally:
            if change := self.lanes.finish(host, answered):
                log.warning("notifier: %s", change)
        self.done.append((delivery, status, error, time.monotonic() - started))
        self.wake.set()

    def release(self, delivery: Delivery) -> None:
        """Its line's next delivery (this one again, or the one after) may be sent."""
        line = (delivery.job_id, delivery.url)
        self.sending.discard(line)
        if not self.partitions.owns(delivery.job_id):  # given up meanwhile
            self.lines.pop(line, None)
        elif self.lines.get(line):
            heapq.heappush(self.due, self.lines[line][0])
        else:
            self.lines.pop(line, None)

    async def record_done(self) -> None:
        """Records finished attempts in one commit; unrecorded ones are sent again (at least
        once) in a second."""
        if not self.done:
            return
        batch, self.done = self.done, []
        events: list[Event] = []
        statements: list[Statement] = []
        retries: list[float | None] = []
        outcomes: dict[str, list[float]] = {}
        for delivery, status, error, took in batch:
            event, statement, retry = self.record(delivery, status, error)
            events.append(event)
            statements.append(statement)
            retries.append(retry)
            outcome = "delivered" if error is None else "failed" if retry else "given_up"
            outcomes.setdefault(outcome, []).append(took)
            if error is not None:
                log.log(
                    logging.INFO if retry else logging.WARNING,
                    "notifier: job %s: callback %s attempt %s failed: %s%s",
                    delivery.job_id,
                    delivery.event,
                    delivery.attempts,
                    error,
                    "" if retry else "; given up",
                    extra=context(job_id=delivery.job_id, client=_owner(delivery)),
                )
        pending = list(range(len(batch)))
        while pending:
            try:
                await self.runtime.call(
                    self.runtime.store.commit,
                    [events[i] for i in pending],
                    None,
                    [statements[i] for i in pending],
                )
                break
            except Conflict as conflict:
                # Recorded already: by this commit, whose answer was lost, or by the instance
                # that holds the partition now. Either way it is done here.
                for i in pending:
                    if events[i].id in conflict.stale:
                        retries[i] = None
                pending = [i for i in pending if events[i].id not in conflict.stale]
            except Exception:
                log.exception("notifier: recording %s attempts failed; sending again", len(batch))
                for i in pending:
                    retries[i] = 1.0
                    batch[i][0].attempts -= 1
                break
        for outcome, durations in outcomes.items():
            metrics.CALLBACKS.labels(outcome).inc(len(durations))
            histogram = metrics.CALLBACK_LATENCY.labels(outcome)
            for took in durations:
                histogram.observe(took)
        for (delivery, _, _, _), retry in zip(batch, retries, strict=True):
            if retry is None:
                self.lines[(delivery.job_id, delivery.url)].popleft()
            else:
                delivery.next_at = time.monotonic() + retry
            self.release(delivery)

    async def attempt(self, delivery: Delivery, deadline: float) -> tuple[int | None, str | None]:
        """Posts once, the whole exchange within `deadline`: (status, why it failed)."""
        status, error = await exchange(
            self.client,
            "POST",
            delivery.url,
            deadline=deadline,
            max_bytes=self.max_bytes,
            guard=self.guard,
            data=delivery.body,
            headers=self.headers(delivery),
        )
        if error is None and status is not None and status >= 300:
            error = f"HTTP {status}"
        return status, error

    def record(
        self, d: Delivery, status: int | None, error: str | None
    ) -> tuple[Event, Statement, float | None]:
        """The attempt's event and row change, and the seconds until the next (None: done)."""
        d.attempts += 1
        at = datetime.now(UTC)
        if error is None:
            delivered = CallbackDelivered(
                id=d.id,
                version=d.attempts,
                at=at,
                job_id=d.job_id,
                url=d.url,
                event=d.event,
                status_code=status or 0,
                attempts=d.attempts,
            )
            return delivered, (_DELETE, (d.id,)), None
        final = d.attempts >= MAX_ATTEMPTS or error.startswith("refused")
        delay = None if final else min(2.0 ** (d.attempts - 1), MAX_BACKOFF)
        next_at = None if delay is None else datetime.now(UTC) + timedelta(seconds=delay)
        failed = CallbackAttemptFailed(
            id=d.id,
            version=d.attempts,
            at=at,
            job_id=d.job_id,
            url=d.url,
            event=d.event,
            attempt=d.attempts,
            error=error,
            next_at=next_at,
        )
        if delay is None:
            return failed, (_DELETE, (d.id,)), None
        return failed, (_RESCHEDULE, (d.attempts, next_at, d.id)), delay


def _answered(status: int | None, error: str) -> bool:
    """Whether the receiver is up (for its breaker): it answered in time, and not with 5xx."""
    return status is not None and status < 500 and not error.startswith("timeout")


class _Owner(msgspec.Struct):
    client: str


def _owner(delivery: Delivery) -> str:
    return msgspec.json.decode(delivery.body, type=_Owner).client


class _Happened(msgspec.Struct):
    at: datetime


def _happened(body: bytes) -> datetime:
    return msgspec.json.decode(body, type=_Happened).at


def _mono(at: datetime) -> float:
    return time.monotonic() + (at - datetime.now(UTC)).total_seconds()


async def notifier(runtime: Runtime) -> None:
    if not runtime.config.webhook_key:
        raise SystemExit("notifier: TASKENGINE_WEBHOOK_KEY is not set; callbacks must be signed")
    guard = OutboundGuard(parse_allowlist(runtime.config.callback_allowlist))
    config = runtime.config
    async with outbound_client(
        guard, config.outbound_deadline, config.outbound_concurrency
    ) as client:
        service = Notifier(runtime, client, guard)
        runtime.working = service.pending
        await retire_consumer(runtime.js, NAME)  # one consumer for all, before partitions
        partitions = service.partitions
        durable = consumer_name(NAME, runtime.instance)
        consumer = BatchConsumer(
            runtime.nc,
            durable=durable,
            filter_subjects=[
                *(subjects.subject_for(e) for e in (*NOTIFIED, StepChanged)),
                subjects.SETTINGS,
            ],
            handler=service.on_job_events,
            handled=await partitions.start(),
            track=partitions.track,
            reject=runtime.rejecter(NAME, track=False),
            # Paced: no `heard` (see `BatchConsumer.heard`).
            latest=runtime.latest,
            attempts=runtime.config.poison_attempts,
            trace=runtime.hop_trace(NAME),
            interval=runtime.config.reaction_interval,
            inactive=INACTIVE,
            name=NAME,
        )
        partitions.consumer = consumer
        refresher = asyncio.create_task(partitions.refresh_forever())
        sender = asyncio.create_task(service.deliver_forever())
        try:
            await consumer.run()
        finally:
            sender.cancel()
            refresher.cancel()
            await partitions.leave()
