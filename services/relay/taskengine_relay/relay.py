"""The outbox relay: publishes every stored event to JetStream in store order.

Each event goes out with `Nats-Msg-Id` = `<stream id>:<version>`, so a re-publish after a crash
(between the store commit and our tracking update) is dropped by JetStream's duplicate window
and, beyond it, by the consumers' tracking. The relay's own position is a tracking record.

The stream is not the record: a NATS that died may come back without its unsynced tail. So on
start and after every reconnect the relay publishes again from the lowest position any of
the stream's consumers recorded (never from further back than it must).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from taskengine_contracts import subjects
from taskengine_core.partitions import tracking_names
from taskengine_runtime import Runtime, metrics
from taskengine_runtime.bus import FAILOVER, FAILOVER_PAUSE
from taskengine_runtime.failures import describe
from taskengine_store.commits import wake_on_commits

log = logging.getLogger(__name__)

NAME = "relay"
BATCH = 2000
ACK_TIMEOUT = 30.0


async def relay(runtime: Runtime, stop_after: int | None = None) -> None:
    store, js = runtime.store, runtime.js
    tracked = await runtime.call(store.tracked, NAME)
    position = await _resume_from(runtime, tracked)
    log.info("relay resuming after position %d (tracked %d)", position, tracked)
    metrics.LAG.relay = lambda: position
    reconnects = runtime.reconnects.count
    stamp = runtime.config.hop_trace
    wake = asyncio.Event()
    listener = asyncio.create_task(wake_on_commits(runtime.config.database_url, wake, NAME))
    try:
        while stop_after is None or position < stop_after:
            if runtime.reconnects.count != reconnects:
                reconnects = runtime.reconnects.count
                position = await _resume_from(runtime, position)
                log.warning("relay: NATS reconnected; publishing again after %d", position)
            wake.clear()  # before reading: a commit during the read wakes the wait below
            notes = await runtime.call(store.notifications, position, BATCH)
            if not notes:
                try:
                    await asyncio.wait_for(wake.wait(), timeout=0.5)
                except TimeoutError:
                    pass
                continue
            acks = []
            for note in notes:
                headers = {
                    subjects.MSG_ID_HEADER: subjects.message_id(
                        note.originator_id, note.originator_version
                    ),
                    subjects.POSITION_HEADER: str(note.id),
                }
                if stamp:
                    headers[subjects.PUBLISHED_HEADER] = f"{time.time():.6f}"
                acks.append(
                    await js.publish_async(
                        subjects.subject_for_topic(note.topic), note.state, headers=headers
                    )
                )
            if not await _acked(acks, runtime):
                continue  # NATS came back meanwhile: the batch may be lost, publish it again
            position = notes[-1].id
            if position > tracked:  # below it we are re-publishing after a reconnect
                await runtime.call(store.track, NAME, position)
                tracked = position
    finally:
        listener.cancel()


async def _acked(acks: list[asyncio.Future], runtime: Runtime) -> bool:
    """Waits for a batch's acks; False if NATS reconnected first (they may never come) or the
    stream had no leader for a moment (a cluster's failover): the batch is to be published
    again, and JetStream drops what of it arrived."""
    done: asyncio.Future[Any] = asyncio.gather(*acks)
    reconnected: asyncio.Future[Any] = asyncio.ensure_future(runtime.reconnects.wait())
    try:
        finished, _ = await asyncio.wait(
            {done, reconnected}, timeout=ACK_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        reconnected.cancel()
    if done in finished:
        try:
            done.result()
        except FAILOVER as error:  # the stream's leader died: the batch may be half stored
            log.warning("relay: %s; publishing the batch again", describe(error))
            for ack in acks:
                ack.cancel()  # frees the client's pending-ack slots
            await asyncio.sleep(FAILOVER_PAUSE)
            return False
        return True
    done.cancel()  # frees the client's pending-ack slots
    if reconnected in finished:
        return False
    # A lost ack must not hang the relay: exit, restart, re-publish (deduplicated).
    raise TimeoutError(f"relay: no ack for {len(acks)} messages within {ACK_TIMEOUT}s")


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
