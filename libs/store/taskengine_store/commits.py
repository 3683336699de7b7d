"""Woken by commits: the store sends a NOTIFY on its `stored_events` channel with every commit
of events, its payload the commit's last position. A follower of the log (the relay, the
projector) sleeps until there is something new instead of polling hard to stay prompt, and
reads the log only when a commit past what it holds was heard; a consumer of the bus learns
how far the store got without asking it (`Runtime.heard`)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import psycopg

log = logging.getLogger(__name__)

CHANNEL = "stored_events"


async def listen_to_commits(database_url: str, told: Callable[[str], None], who: str) -> None:
    """Tells `told` each commit's payload (its last position), reconnecting when the connection
    drops. Whoever relies on it must have another way for what it misses meanwhile."""
    while True:
        try:
            async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
                await conn.execute(f"LISTEN {CHANNEL}")
                async for note in conn.notifies():
                    told(note.payload)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            log.warning("%s: LISTEN failed (%s); retrying", who, error)
            await asyncio.sleep(1)
