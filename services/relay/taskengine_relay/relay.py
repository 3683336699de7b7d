"""The outbox relay: publishes every stored event to JetStream in store order.

Each event goes out with `Nats-Msg-Id` = `<stream id>:<version>`, so a re-publish after a crash
(between the store commit and our tracking update) is dropped by JetStream's duplicate window
and, beyond it, by the consumers' tracking. The relay's own position is a tracking record.
"""

from __future__ import annotations

import asyncio
import logging

import psycopg
from taskengine_bus import Runtime
from taskengine_contracts import subjects

log = logging.getLogger(__name__)

NAME = "relay"
BATCH = 2000
ACK_TIMEOUT = 30.0


async def relay(runtime: Runtime, stop_after: int | None = None) -> None:
    store, js = runtime.store, runtime.js
    position = await runtime.call(store.tracked, NAME)
    log.info("relay resuming after position %d", position)
    wake = asyncio.Event()
    listener = asyncio.create_task(_listen(runtime.config.database_url, wake))
    try:
        while stop_after is None or position < stop_after:
            notes = await runtime.call(store.notifications, position, BATCH)
            if not notes:
                wake.clear()
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
                acks.append(
                    await js.publish_async(
                        subjects.subject_for_topic(note.topic), note.state, headers=headers
                    )
                )
            # A lost ack must not hang the relay: exit, restart, re-publish (deduplicated).
            await asyncio.wait_for(asyncio.gather(*acks), timeout=ACK_TIMEOUT)
            position = notes[-1].id
            await runtime.call(store.track, NAME, position)
    finally:
        listener.cancel()


async def _listen(database_url: str, wake: asyncio.Event) -> None:
    """Wakes the relay on the store's NOTIFY, so it need not poll hard to stay prompt."""
    while True:
        try:
            async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
                await conn.execute("LISTEN stored_events")
                async for _ in conn.notifies():
                    wake.set()
        except asyncio.CancelledError:
            raise
        except Exception as error:  # the poll fallback keeps us going meanwhile
            log.warning("relay: LISTEN failed (%s); retrying", error)
            await asyncio.sleep(1)
