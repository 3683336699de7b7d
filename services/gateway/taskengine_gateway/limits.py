"""Failed key checks, limited per caller address and per client name; request bytes, limited
per client.

Token buckets kept in memory by each gateway instance (several instances each allow their own
burst): a failure takes a token, a bucket regains `per_minute` tokens a minute up to `burst`,
and an empty one answers 429 with the seconds until it holds a token again.

`ByteBudget` charges each client's request bodies to the client: what one client sends cannot
outrun what the services behind the gateway handle, which every other client waits behind.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network

from litestar.exceptions import HTTPException
from litestar.status_codes import HTTP_429_TOO_MANY_REQUESTS

MAX_BUCKETS = 100_000
"""Memory bound: beyond it, buckets that have filled up again are forgotten."""

Network = IPv4Network | IPv6Network


class TooManyAttempts(HTTPException):
    """429 with `Retry-After`: too many failed key checks from this address or for this name."""

    status_code = HTTP_429_TOO_MANY_REQUESTS

    def __init__(self, retry_after: float):
        seconds = max(1, math.ceil(retry_after))
        super().__init__(
            detail=f"too many failed authentication attempts: retry in {seconds} s",
            headers={"Retry-After": str(seconds)},
        )


@dataclass
class _Bucket:
    tokens: float
    at: float


class _Buckets:
    """Token buckets by key, each regaining `rate` tokens a second up to `burst`. At most
    MAX_BUCKETS are kept: beyond that, those full again are forgotten, then the oldest."""

    def __init__(self, burst: float, rate: float, clock: Callable[[], float]):
        self.burst = burst
        self.rate = rate
        self.clock = clock
        self.held: dict[str, _Bucket] = {}

    def tokens(self, bucket: _Bucket, now: float) -> float:
        return min(self.burst, bucket.tokens + (now - bucket.at) * self.rate)

    def get(self, key: str, now: float) -> _Bucket:
        """`key`'s bucket, a full one if it had none."""
        bucket = self.held.get(key)
        if bucket is None:
            self._bound(now)
            bucket = self.held[key] = _Bucket(self.burst, now)
        return bucket

    def _bound(self, now: float) -> None:
        if len(self.held) < MAX_BUCKETS:
            return
        full = [k for k, b in self.held.items() if self.tokens(b, now) >= self.burst]
        for key in full:
            del self.held[key]
        if len(self.held) >= MAX_BUCKETS:  # still full of active buckets: forget the oldest
            for key in list(self.held)[: MAX_BUCKETS // 2]:
                del self.held[key]


class FailureLimiter:
    """Buckets of failures by address (`address:<ip>`) and by client name (`name:<name>`)."""

    def __init__(self, burst: int, per_minute: float, clock: Callable[[], float] = time.monotonic):
        self.buckets = _Buckets(float(burst), per_minute / 60.0, clock)

    def wait(self, key: str) -> float:
        """Seconds until `key` may fail again (0: it may now)."""
        bucket = self.buckets.held.get(key)
        if bucket is None:
            return 0.0
        tokens = self.buckets.tokens(bucket, self.buckets.clock())
        return 0.0 if tokens >= 1 else (1 - tokens) / self.buckets.rate

    def fail(self, key: str) -> float:
        """Takes a token for a failure; returns the wait that now applies to `key`."""
        now = self.buckets.clock()
        bucket = self.buckets.get(key, now)
        bucket.tokens = max(0.0, self.buckets.tokens(bucket, now) - 1)
        bucket.at = now
        return self.wait(key)

    def failed(self, address: str, name: str | None) -> float:
        """A failed check from `address` for `name`: the longest wait now due (0: none)."""
        waits = [self.fail(f"address:{address}")]
        if name:
            waits.append(self.fail(f"name:{name}"))
        return max(waits)


def parse_networks(spec: str) -> tuple[Network, ...]:
    """`10.0.0.1, 192.168.0.0/16` -> networks; a bad entry is a configuration error."""
    try:
        return tuple(ip_network(p.strip(), strict=False) for p in spec.split(",") if p.strip())
    except ValueError as error:
        raise ValueError(f"TASKENGINE_TRUSTED_PROXIES: {error}") from None


def _within(address: str, networks: tuple[Network, ...]) -> bool:
    try:
        ip = ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


def client_address(
    peer: str | None, headers: Mapping[str, str], trusted: tuple[Network, ...]
) -> str:
    """The caller's address: the peer's, or, when the peer is a trusted proxy, the last
    `X-Forwarded-For` hop that is not one (hops left of it could be made up by the caller)."""
    peer = peer or "unknown"
    if not trusted or not _within(peer, trusted):
        return peer
    hops = [hop.strip() for hop in headers.get("x-forwarded-for", "").split(",") if hop.strip()]
    for hop in reversed(hops):
        if not _within(hop, trusted):
            return hop
    return hops[0] if hops else peer


MAX_WAIT = 1.0
"""Seconds a request may wait for its client's byte budget before it is refused instead."""


class TooManyBytes(HTTPException):
    """429 with `Retry-After`: the client sent more bytes than its budget allows for now."""

    status_code = HTTP_429_TOO_MANY_REQUESTS

    def __init__(self, retry_after: float, per_second: int):
        seconds = max(1, math.ceil(retry_after))
        super().__init__(
            detail=f"too much data: at most {per_second} request bytes a second per client;"
            f" retry in {seconds} s",
            headers={"Retry-After": str(seconds)},
        )


class ByteBudget:
    """Request bytes per client: `per_second` on average, bursts of up to `burst`.

    A request takes its size from its client's bucket before its body is read. When the bucket
    does not hold that much, the request waits until it would have (requests of one client
    take turns in arrival order), for at most `MAX_WAIT` seconds: beyond that it is refused with
    429. A waiting request holds no body and no thread."""

    def __init__(self, per_second: int, burst: int, clock: Callable[[], float] = time.monotonic):
        self.per_second = per_second
        self.buckets = _Buckets(float(max(burst, per_second)), float(per_second), clock)

    @property
    def burst(self) -> float:
        return self.buckets.burst

    def charge(self, client: str, size: int) -> float:
        """Takes `size` bytes from `client`'s bucket; the seconds to wait before going on.
        Raises TooManyBytes (and takes nothing) when that would be more than MAX_WAIT."""
        now = self.buckets.clock()
        bucket = self.buckets.get(client, now)
        tokens = self.buckets.tokens(bucket, now) - size
        wait = max(0.0, -tokens / self.per_second)
        if wait > MAX_WAIT:
            raise TooManyBytes(wait - MAX_WAIT, self.per_second)
        bucket.tokens, bucket.at = tokens, now
        return wait

    async def take(self, client: str, size: int) -> None:
        """`charge`, then the wait it asks for."""
        wait = self.charge(client, size)
        if wait:
            await asyncio.sleep(wait)
