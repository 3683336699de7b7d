"""Which failures are worth waiting out (the store or the bus is away) and which are a message's
own (it fails the same way however often it is retried, so it is set aside after N tries)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import eventsourcing.persistence as es
import nats.errors
import psycopg
from taskengine_store.store import STALE_PLAN

T = TypeVar("T")
log = logging.getLogger(__name__)

POISON_ATTEMPTS = 5
"""Default of `TASKENGINE_POISON_ATTEMPTS`: same-way failures of one message before it is set
aside."""


class Transient(Exception):
    """Raised (or subclassed) by a handler for a failure that retrying will outlive."""


TRANSIENT: tuple[type[BaseException], ...] = (
    Transient,
    es.OperationalError,  # connection lost or refused, pool timeout, serialization failure
    es.InterfaceError,
    psycopg.OperationalError,
    psycopg.InterfaceError,
    nats.errors.Error,  # timeouts, connection closed, no servers
    ConnectionError,
    TimeoutError,
    # The schema is older than the code (an upgrade whose migration has not run yet): no
    # message is to blame, and setting messages aside would lose them. Wait for it.
    psycopg.errors.UndefinedTable,
    psycopg.errors.UndefinedColumn,
    psycopg.errors.UndefinedFunction,
)


def is_transient(error: BaseException) -> bool:
    """True for the store or the bus being unreachable or overloaded: retry, skip nothing."""
    seen: set[int] = set()
    current: BaseException | None = error
    # Wrapped (`raise ... from`): its causes too.
    while current is not None and id(current) not in seen:
        if isinstance(current, TRANSIENT) or _stale_plan(current):
            return True
        seen.add(id(current))
        current = current.__cause__
    return False


def _stale_plan(error: BaseException) -> bool:
    """A statement prepared before a migration changed its result (the store's connection has
    deallocated it: the retry prepares it again)."""
    return isinstance(error, psycopg.errors.FeatureNotSupported) and STALE_PLAN in str(error)


def describe(error: BaseException) -> str:
    """`Type: message`, on one line."""
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


RETRY_FIRST, RETRY_MAX = 0.2, 5.0
"""Backoff while a transient failure lasts (seconds)."""
BATCH_ATTEMPTS = 2
"""Same-way failures of a batch of several before it is split to find the culprit."""


async def isolating(
    batch: Sequence[T],
    handle: Callable[[Sequence[T]], Awaitable[None]],
    set_aside: Callable[[T, BaseException, int], Awaitable[None]],
    attempts: int,
    name: str,
) -> None:
    """Handles `batch` in order with `handle`, whatever fails.

    A transient failure is retried (with backoff) without end. A batch that fails otherwise
    `BATCH_ATTEMPTS` times is split in halves, handled in order, so the items before the
    culprit are handled; an item that fails alone `attempts` times goes to `set_aside`.
    """
    delay, failures = RETRY_FIRST, 0
    limit = max(1, attempts) if len(batch) == 1 else min(BATCH_ATTEMPTS, max(1, attempts))
    while True:
        try:
            return await handle(batch)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            if is_transient(error):
                log.warning(
                    "%s: batch of %d failed (%s); retry in %.1fs",
                    name,
                    len(batch),
                    describe(error),
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            failures += 1
            if failures >= limit:
                last = error
                break
            log.warning(
                "%s: batch of %d failed %d time(s): %s", name, len(batch), failures, describe(error)
            )
            await asyncio.sleep(min(0.05 * 2**failures, 1.0))
    if len(batch) > 1:
        middle = len(batch) // 2
        await isolating(batch[:middle], handle, set_aside, attempts, name)
        await isolating(batch[middle:], handle, set_aside, attempts, name)
        return
    log.error("%s: handling failed %d times", name, failures, exc_info=last)
    await set_aside(batch[0], last, failures)
