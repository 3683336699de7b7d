"""Woken by commits: the store sends a NOTIFY on its `stored_events` channel with every
commit (eventsourcing's recorder does), so a follower of the log (the relay, the projector)
sleeps until there is something new instead of polling hard to stay prompt."""

from __future__ import annotations

import asyncio
import logging

import psycopg

log = logging.getLogger(__name__)

CHANNEL = "stored_events"


async def wake_on_commits(database_url: str, wake: asyncio.Event, who: str) -> None:
    """Sets `wake` on every commit to the store, reconnecting when the connection drops (the
    follower's own poll keeps it going meanwhile). Clear `wake` before reading the log, so a
    commit during the read wakes the next wait."""
    while True:
        try:
            async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
                await conn.execute(f"LISTEN {CHANNEL}")
                async for _ in conn.notifies():
                    wake.set()
        except asyncio.CancelledError:
            raise
        except Exception as error:
            log.warning("%s: LISTEN failed (%s); retrying", who, error)
            await asyncio.sleep(1)
