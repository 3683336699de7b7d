"""`GET /health`: live checks of PostgreSQL and NATS, each service's instances and backlog."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.errors import NotFoundError
from taskengine_contracts import subjects
from taskengine_contracts.events import Heartbeat
from taskengine_store import queries, rejected
from taskengine_store.projections import PROJECTOR

ALIVE_FOR = 6.0
"""An instance counts as a worker while its last heartbeat is this recent (3 beats)."""
CHECK_TIMEOUT = 3.0

QUEUES = {
    "scheduler": "scheduler",
    "work": "dispatcher",
    "controller": "admission",
    "callback": "notifier",
    "gateway": "gateway",
    "relay": "relay",
    "projector": "projector",
}
"""Seed 002's queue names and the services behind them."""
CONSUMERS = {"scheduler", "dispatcher", "admission", "notifier"}
FOLLOWERS = {"relay", PROJECTOR}  # they follow the store's log, not a JetStream consumer

_decoder = msgspec.json.Decoder(Heartbeat)


class Heartbeats:
    """The last heartbeat of every service instance, from core NATS."""

    def __init__(self) -> None:
        self.last: dict[tuple[str, str], tuple[float, Heartbeat]] = {}

    async def follow(self, nc: NatsClient) -> None:
        async def on_beat(message: Msg) -> None:
            try:
                beat = _decoder.decode(message.data)
            except msgspec.ValidationError:
                return
            self.last[(beat.service, beat.instance)] = (time.monotonic(), beat)

        await nc.subscribe(subjects.HEARTBEATS, cb=on_beat)

    def alive(self, service: str) -> list[Heartbeat]:
        now = time.monotonic()
        for key, (seen, _) in list(self.last.items()):
            if now - seen > 10 * ALIVE_FOR:  # long gone: forget it
                del self.last[key]
        return [
            b for (s, _), (seen, b) in self.last.items() if s == service and now - seen <= ALIVE_FOR
        ]


class ComponentDown(Exception):
    pass


async def check(name: str, probe) -> Any:  # type: ignore[no-untyped-def]
    try:
        return await asyncio.wait_for(probe, timeout=CHECK_TIMEOUT)
    except Exception as error:  # any failure of a probe is the component being down
        raise ComponentDown(f"{name}: {error or type(error).__name__}") from None


async def _consumer_info(js, durable: str):  # type: ignore[no-untyped-def]
    """The durable consumer's info, or None while it does not exist."""
    try:
        return await js.consumer_info(subjects.STREAM, durable)
    except NotFoundError:
        return None


async def health_report(runtime, heartbeats: Heartbeats, settings, version: str) -> dict[str, Any]:  # type: ignore[no-untyped-def]  # noqa: E501
    """The seed's health document; raises ComponentDown naming what is unreachable."""
    store = runtime.store
    await check("postgres", runtime.call(store.query, "SELECT 1"))
    await check("nats", runtime.js.stream_info(subjects.STREAM))
    max_position = await check("postgres", runtime.call(store.max_position))
    queues: dict[str, dict[str, int]] = {}
    for queue, service in QUEUES.items():
        beats = heartbeats.alive(service)
        pending = 0
        info = None
        if service in CONSUMERS:
            info = await check("nats", _consumer_info(runtime.js, service))
            pending = info.num_pending or 0 if info is not None else 0
        if service in FOLLOWERS or (service in CONSUMERS and info is None):
            # A consumer not created yet (starting, no leader yet): what it has not handled.
            tracked = await check("postgres", runtime.call(store.tracked, service))
            pending = max(max_position - tracked, 0)
        queues[queue] = {
            "workers": len(beats),
            "working": sum(b.working for b in beats),
            "pending": pending,
        }
    counts = await check("postgres", runtime.call(queries.job_counts, store))
    attempts = int(counts["attempts"])
    set_aside = await check("postgres", runtime.call(rejected.counts, store))
    return {
        "version": version,
        "databases": {"postgres": "OK", "nats": "OK"},
        "queues": queues,
        # Tasks are attempts: run so far, those that did not succeed, and those about to start.
        "tasks": {
            "processed": attempts,
            "failed": max(attempts - counts["completed"] - counts["started"], 0),
            "pending": counts["admitted"],
        },
        "jobs": {
            **{name: counts[name] for name in queries.JOB_COUNTS},
            "max_jobs": settings.max_jobs,
            "priority_slots": settings.int("priority_slots"),
        },
        # Messages each consumer set aside (`taskengine events --rejected` lists them).
        "rejected": {
            "total": sum(set_aside.values()),
            "by_consumer": {
                name: set_aside.get(name, 0) for name in sorted(CONSUMERS | {PROJECTOR})
            },
        },
    }
