"""The notifier: POSTs a job's lifecycle to the URLs in its `rest_endpoints`.

A receiver hears of the job's start, each step's start, completion or failure, and the job's
end (with `custom_data` from the job's parameters). Deliveries due are rows of
`notifier_deliveries`, written with the consumer's tracking record; each attempt's result is an
event (`CallbackDelivered`, `CallbackAttemptFailed`), so the job log shows every delivery.
Failed attempts are retried with exponential backoff. Every delivery is signed (Standard
Webhooks) with the job's client's secret, and goes only to addresses the guard allows.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from uuid import UUID

import httpx
import msgspec
from eventsourcing.persistence import Tracking
from taskengine_bus import BatchConsumer, Delivered, Runtime
from taskengine_contracts import subjects
from taskengine_contracts.events import (
    CallbackAttemptFailed,
    CallbackDelivered,
    Event,
    JobFailed,
    JobStarted,
    JobSucceeded,
    JobTimedOut,
    StepChanged,
)
from taskengine_core.ids import callback_stream
from taskengine_core.jobs import state_after
from taskengine_core.outbound import (
    OutboundGuard,
    outbound_client,
    parse_allowlist,
    sign,
    webhook_secret,
)
from taskengine_store.store import Statement

log = logging.getLogger(__name__)

NAME = "notifier"
MAX_ATTEMPTS = 10
MAX_BACKOFF = 60.0
CONCURRENCY = 64
NOTIFIED = {JobStarted: "start", JobSucceeded: "complete", JobFailed: "fail", JobTimedOut: "fail"}
"""Job events a receiver hears of (and `StepChanged`: each step's start, complete or fail)."""

_INSERT = (
    "INSERT INTO notifier_deliveries (id, job_id, url, event, body, attempts, next_at)"
    " VALUES (%s, %s, %s, %s, %s, 0, %s) ON CONFLICT (id) DO NOTHING"
)
_RESCHEDULE = "UPDATE notifier_deliveries SET attempts = %s, next_at = %s WHERE id = %s"
_DELETE = "DELETE FROM notifier_deliveries WHERE id = %s"


class CallbackBody(msgspec.Struct, frozen=True):
    """What a receiver gets: the job, what happened, and the job's state after it.

    `step` and `step_name` are set for a step's callbacks and null for the job's own;
    `custom_data` (the job's `parameters.custom_data`) comes with the job's end.
    """

    id: int
    job_id: int
    client: str
    event: str
    status: str
    attempt: int
    at: datetime
    failed: bool
    workflow: str | None = None
    step: int | None = None
    step_name: str | None = None
    reason: str | None = None
    exit_code: int | None = None
    custom_data: object = None


_arrival = itertools.count()


@dataclass(order=True)
class Delivery:
    next_at: float
    seq: int  # ties go to the earlier event, so a receiver hears of a job in order
    id: UUID = field(compare=False)
    job_id: int = field(compare=False)
    url: str = field(compare=False)
    event: str = field(compare=False)
    body: bytes = field(compare=False)
    attempts: int = field(compare=False, default=0)


def callback_body(event: Event) -> tuple[str, CallbackBody] | None:
    """(delivery key, body) for an event a receiver hears of; None for any other event."""
    if isinstance(event, StepChanged):
        key = f"step:{event.attempt}:{event.step}:{event.event}"
        return key, CallbackBody(
            id=event.job_id,
            job_id=event.job_id,
            client=event.client,
            event=event.event,
            status="running",
            attempt=event.attempt,
            at=event.at,
            failed=event.event == "fail",
            step=event.step,
            step_name=event.name,
            reason=event.reason,
            exit_code=event.exit_code,
        )
    kind = NOTIFIED.get(type(event))
    if kind is None:
        return None
    return f"{kind}:{event.version}", CallbackBody(
        id=event.job_id,  # type: ignore[attr-defined]
        job_id=event.job_id,  # type: ignore[attr-defined]
        client=event.client,  # type: ignore[attr-defined]
        event=kind,
        status=str(state_after(event)),  # type: ignore[arg-type]
        attempt=event.attempt,  # type: ignore[attr-defined]
        at=event.at,
        failed=kind == "fail",
        workflow=event.workflow,  # type: ignore[attr-defined]
        reason=getattr(event, "reason", None),
        exit_code=getattr(event, "exit_code", None),
        custom_data=getattr(event, "custom_data", None),
    )


def deliveries_for(event: Event) -> list[tuple]:
    """Rows for the callbacks an event asks for (none unless the job has rest_endpoints)."""
    callbacks = getattr(event, "callbacks", [])
    described = callback_body(event) if callbacks else None
    if described is None:
        return []
    key, body = described
    encoded = msgspec.json.encode(body)
    return [
        (callback_stream(body.job_id, key, url), body.job_id, url, body.event, encoded, event.at)
        for url in dict.fromkeys(callbacks)  # one delivery per distinct URL
    ]


class Notifier:
    def __init__(self, runtime: Runtime, client: httpx.AsyncClient, guard: OutboundGuard):
        self.runtime = runtime
        self.client = client
        self.guard = guard
        self.due: list[Delivery] = []
        self.wake = asyncio.Event()
        self.secrets: dict[str, str] = {}

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
        heapq.heappush(
            self.due,
            Delivery(_mono(at), next(_arrival), delivery_id, job_id, url, kind, body, attempts),
        )
        self.wake.set()

    async def on_job_events(self, batch: list[Delivered]) -> bool:
        rows = []
        for item in batch:
            self.runtime.apply(item.event)
            rows.extend(deliveries_for(item.event))
        if not rows:
            return False
        statements = [(_INSERT, row) for row in rows]
        await self.runtime.call(
            self.runtime.store.commit, (), Tracking(NAME, batch[-1].position), statements
        )
        for row in rows:
            self.schedule(row)
        return True

    async def deliver_forever(self) -> None:
        """Sends due deliveries forever; a failure to record them is retried, never fatal."""
        while True:
            try:
                await self.deliver_due()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("notifier: recording deliveries failed; retrying")
                await asyncio.sleep(1.0)

    async def deliver_due(self) -> None:
        while True:
            now = time.monotonic()
            batch: list[Delivery] = []
            later: list[Delivery] = []
            receivers: set[tuple[int, str]] = set()
            while self.due and self.due[0].next_at <= now and len(batch) < CONCURRENCY:
                delivery = heapq.heappop(self.due)
                # One delivery per job and URL at a time, so a receiver gets a job's
                # callbacks in order (start before complete).
                receiver = (delivery.job_id, delivery.url)
                (later if receiver in receivers else batch).append(delivery)
                receivers.add(receiver)
            for delivery in later:
                heapq.heappush(self.due, delivery)
            if not batch:
                self.wake.clear()
                wait = self.due[0].next_at - now if self.due else None
                try:
                    await asyncio.wait_for(self.wake.wait(), timeout=wait)
                except TimeoutError:
                    pass
                continue
            results = await asyncio.gather(*(self.attempt(d) for d in batch))
            events: list[Event] = []
            statements: list[Statement] = []
            for delivery, (status, error) in zip(batch, results, strict=True):
                delivery.attempts += 1
                event, statement = self.record(delivery, status, error)
                events.append(event)
                statements.append(statement)
            try:
                await self.runtime.call(self.runtime.store.commit, events, None, statements)
            except Exception:
                # Not recorded: attempt them all again in a second (at least once).
                sent = {id(d) for d in batch}
                for delivery in batch:
                    delivery.attempts -= 1
                    delivery.next_at = time.monotonic() + 1.0
                self.due = [d for d in self.due if id(d) not in sent] + batch
                heapq.heapify(self.due)
                raise

    async def attempt(self, delivery: Delivery) -> tuple[int | None, str | None]:
        try:
            return await self._post(delivery)
        except Exception as error:  # whatever the URL or the receiver does, it is a failed attempt
            return None, f"{type(error).__name__}: {error}"[:300]

    async def _post(self, delivery: Delivery) -> tuple[int | None, str | None]:
        refusal = await self.guard.refusal(delivery.url)
        if refusal:
            return None, f"refused: {refusal}"
        try:
            response = await self.client.post(
                delivery.url, content=delivery.body, headers=self.headers(delivery)
            )
        except httpx.HTTPError as error:
            return None, f"{type(error).__name__}: {error}"[:300]
        if response.status_code < 300:
            return response.status_code, None
        return response.status_code, f"HTTP {response.status_code}"

    def record(self, d: Delivery, status: int | None, error: str | None) -> tuple[Event, Statement]:
        common = {
            "id": d.id,
            "version": d.attempts,
            "at": datetime.now(UTC),
            "job_id": d.job_id,
            "url": d.url,
            "event": d.event,
        }
        if error is None:
            return (
                CallbackDelivered(status_code=status or 0, attempts=d.attempts, **common),
                (_DELETE, (d.id,)),
            )
        final = d.attempts >= MAX_ATTEMPTS or error.startswith("refused")
        if final:
            event = CallbackAttemptFailed(attempt=d.attempts, error=error, next_at=None, **common)
            return event, (_DELETE, (d.id,))
        delay = min(2.0 ** (d.attempts - 1), MAX_BACKOFF)
        next_at = datetime.now(UTC) + timedelta(seconds=delay)
        d.next_at = time.monotonic() + delay
        heapq.heappush(self.due, d)
        event = CallbackAttemptFailed(attempt=d.attempts, error=error, next_at=next_at, **common)
        return event, (_RESCHEDULE, (d.attempts, next_at, d.id))


class _Owner(msgspec.Struct):
    client: str


def _mono(at: datetime) -> float:
    return time.monotonic() + (at - datetime.now(UTC)).total_seconds()


async def notifier(runtime: Runtime) -> None:
    if not runtime.config.webhook_key:
        raise SystemExit("notifier: TASKENGINE_WEBHOOK_KEY is not set; callbacks must be signed")
    guard = OutboundGuard(parse_allowlist(runtime.config.callback_allowlist))
    async with outbound_client(guard) as client:
        service = Notifier(runtime, client, guard)
        runtime.working = lambda: len(service.due)
        for row in await runtime.call(runtime.store.query, "SELECT * FROM notifier_deliveries"):
            service.schedule(
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
        consumer = BatchConsumer(
            runtime.js,
            durable=NAME,
            filter_subjects=[
                *(subjects.subject_for(e) for e in (*NOTIFIED, StepChanged)),
                subjects.SETTINGS,
            ],
            handler=service.on_job_events,
            handled=await runtime.call(runtime.store.tracked, NAME),
            track=runtime.tracker(NAME),
            reject=runtime.rejecter(NAME),
            latest=runtime.latest,
            attempts=runtime.config.poison_attempts,
        )
        sender = asyncio.create_task(service.deliver_forever())
        try:
            await consumer.run()
        finally:
            sender.cancel()
