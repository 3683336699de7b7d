"""Lanes per receiver: a slow or dead receiver delays only the calls made to it.

A receiver is an origin (scheme, host and port of a URL). Each gets at most `per_host` calls in
flight at once, so one receiver's hung requests never use up the caller's whole concurrency, and
a circuit breaker: after `failures` failed calls in a row (errors, timeouts, 5xx) the receiver is
held back for `cooldown` seconds; then one call probes it (half-open). A probe that succeeds
closes the breaker; one that fails holds the receiver back again, twice as long each time up to
`max_cooldown`. The decisions are plain and clocked from outside, so they are tested without
sleeping; `acquire` is the one async part (waiting for a free slot). Callers waiting for a
receiver queue up in order and a freed slot wakes one of them, not all: thousands of calls
queued behind a busy receiver cost nothing while they wait.
"""

from __future__ import annotations

import asyncio
import functools
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from taskengine_core.config import EngineSettings


@functools.lru_cache(maxsize=4096)
def origin(url: str) -> str:
    """The receiver a URL names: `scheme://host:port` (an unparsable URL is its own receiver)."""
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return f"{parts.scheme}://{parts.hostname}:{port}"
    except ValueError:
        return url


@dataclass
class _Receiver:
    in_flight: int = 0
    failures: int = 0
    """Failed calls in a row."""
    open_until: float = -math.inf
    cooldown: float = 0.0
    probing: bool = False
    waiters: deque[asyncio.Future[None]] = field(default_factory=deque)
    """Calls waiting for a slot, in the order they came."""


class HostLanes:
    """Slots and a circuit breaker per receiver (see the module's docstring)."""

    def __init__(
        self,
        per_host: int,
        failures: int,
        cooldown: float,
        max_cooldown: float,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.per_host = per_host
        self.failures = failures
        self.cooldown = cooldown
        self.max_cooldown = max(max_cooldown, cooldown)
        self.clock = clock
        self.receivers: dict[str, _Receiver] = {}

    def _receiver(self, host: str) -> _Receiver:
        if host not in self.receivers:
            self.receivers[host] = _Receiver(cooldown=self.cooldown)
        return self.receivers[host]

    def wait(self, host: str) -> float | None:
        """None when a call to `host` may start now (then say `start`); else seconds to wait:
        finite while its breaker is open, `math.inf` until a call to it finishes."""
        receiver = self._receiver(host)
        if receiver.probing or receiver.in_flight >= self.per_host:
            return math.inf
        left = receiver.open_until - self.clock()
        return left if left > 0 else None

    def start(self, host: str) -> None:
        receiver = self._receiver(host)
        receiver.in_flight += 1
        if receiver.failures >= self.failures:  # the breaker's cooldown is over: this probes
            receiver.probing = True

    def finish(self, host: str, ok: bool) -> str | None:
        """Records a call's outcome; returns what changed for the receiver, if anything."""
        receiver = self._receiver(host)
        receiver.in_flight -= 1
        probe, receiver.probing = receiver.probing, False
        try:
            if ok:
                reopened = receiver.failures >= self.failures
                receiver.failures, receiver.cooldown = 0, self.cooldown
                receiver.open_until = -math.inf
                if receiver.in_flight == 0 and not receiver.waiters:
                    del self.receivers[host]  # nothing left to remember
                return f"{host} answers again: calls to it resume" if reopened else None
            receiver.failures += 1
            if probe or receiver.failures == self.failures:
                if probe:
                    receiver.cooldown = min(receiver.cooldown * 2, self.max_cooldown)
                receiver.open_until = self.clock() + receiver.cooldown
                return (
                    f"{host} failed {receiver.failures} times in a row: calls to it wait"
                    f" {receiver.cooldown:g}s, then one probes it"
                )
            return None
        finally:
            self._wake(host)

    def _wake(self, host: str) -> None:
        """Wakes the first call waiting for `host`, unless it still has no room for it. Each
        woken call passes the wake on once it took its slot or learnt that the breaker is open,
        so free slots and an open breaker reach every waiting call, one after the other."""
        receiver = self.receivers.get(host)
        if receiver is None or not receiver.waiters or self.wait(host) == math.inf:
            return
        while receiver.waiters:
            waiter = receiver.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def held_back(self, host: str) -> bool:
        """Whether `host`'s breaker is open or probing (calls to it wait)."""
        receiver = self.receivers.get(host)
        return bool(receiver and receiver.failures >= self.failures)

    async def acquire(self, host: str) -> float | None:
        """Waits for a slot to `host` and takes it (None), unless its breaker is open: then
        returns the seconds until it half-opens, without taking a slot."""
        woken = False
        while (wait := self.wait(host)) is not None:
            if wait != math.inf:
                self._wake(host)
                return wait
            waiter = asyncio.get_running_loop().create_future()
            waiters = self._receiver(host).waiters
            if woken:  # woken, but another call took the slot first: still first in the queue
                waiters.appendleft(waiter)
            else:
                waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._wake(host)  # woken but leaving: the next one goes instead
                raise
            woken = True
        self.start(host)
        self._wake(host)
        return None


def lanes_from(config: EngineSettings) -> HostLanes:
    """The lanes the settings ask for (`outbound_per_host`, `outbound_breaker_*`)."""
    return HostLanes(
        per_host=config.outbound_per_host,
        failures=config.outbound_breaker_failures,
        cooldown=config.outbound_breaker_cooldown,
        max_cooldown=config.outbound_breaker_max_cooldown,
    )
