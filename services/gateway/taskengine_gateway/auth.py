"""Who is calling: a client's key in any of the seeds' header styles.

`client` + `api-key` headers (Task Engine), `Authorization: Bearer <key>` (work tasks,
scheduled tasks) and `Authorization: Basic client:key` (container tasks).

Keys are stored as HMAC-SHA-256 under a secret derived from `TASKENGINE_WEBHOOK_KEY`, checked
in microseconds on the event loop. A key still stored the old way (PBKDF2) is checked on a
one-thread executor of its own, only while its client name is under its failure limit, and
rehashed to HMAC on success. Failed checks are limited per caller address and per client name
(`limits.py`): an address over its limit gets 429 before any work; a name over its limit only
turns failures into 429 (and stops the slow hash), so a correct key still gets in. A 429 is
sent after a pause of up to `PAUSE_SECONDS`, so a flood paces itself.

Client records are read from their streams on a one-thread executor of their own (never the
store calls' thread pool) and kept `CACHE_SECONDS`, unknown names too: a revocation (or a new
key) takes effect within that time. A successful check is remembered by the key's digest.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NoReturn

import msgspec
from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException
from taskengine_contracts.events import ClientRegistered, ClientRevoked, Event
from taskengine_core.clients import hash_key, is_slow_hash, key_lookup, key_secret, verify_key
from taskengine_core.ids import client_stream
from taskengine_runtime import Runtime

from taskengine_gateway.limits import (
    FailureLimiter,
    TooManyAttempts,
    client_address,
    parse_networks,
)

log = logging.getLogger(__name__)

CACHE_SECONDS = 5.0
MAX_CACHED = 10_000
SLOW_QUEUE = 4
"""PBKDF2 checks that may wait for the slow executor; more get 429."""
PAUSE_SECONDS = 1.0
"""How long a 429 is held back: a caller that hammers waits instead of taking turns on the
event loop from everyone else (a sleeping request holds no thread and no connection)."""


@dataclass(frozen=True)
class Client:
    name: str
    admin: bool


@dataclass(frozen=True)
class _Record:
    name: str
    key_hash: str
    admin: bool


class _Changed(Exception):
    """The client was revoked or given a new key meanwhile: nothing to rehash."""


class Authenticator:
    def __init__(self, runtime: Runtime):
        self.runtime = runtime
        config = runtime.config
        self.secret = key_secret(config.webhook_key) if config.webhook_key else None
        if self.secret is None:
            log.warning(
                "TASKENGINE_WEBHOOK_KEY is not set: keys hashed with HMAC cannot be checked"
            )
        self.limiter = FailureLimiter(config.auth_failure_burst, config.auth_failures_per_minute)
        self.trusted = parse_networks(config.trusted_proxies)
        self.records: dict[str, tuple[float, _Record | None]] = {}
        self.lookups: dict[str, tuple[float, list[str]]] = {}
        self.verified: OrderedDict[str, tuple[str, str]] = OrderedDict()
        """key digest -> (client name, the stored hash it matched)"""
        self._loading: dict[tuple[str, str], asyncio.Future[Any]] = {}
        self._reads = ThreadPoolExecutor(1, thread_name_prefix="auth-records")
        self._slow = ThreadPoolExecutor(1, thread_name_prefix="auth-pbkdf2")
        self._slow_waiting = 0
        self.pause = PAUSE_SECONDS

    async def authenticate(self, connection: ASGIConnection) -> Client:
        name, key = credentials(connection)
        if not key:
            raise NotAuthorizedException("missing credentials: send client and api-key headers")
        digest = hashlib.sha256(key.encode()).hexdigest()
        if client := await self._known(name, digest):
            return client
        peer = connection.client.host if getattr(connection, "client", None) else None
        address = client_address(peer, connection.headers, self.trusted)
        if wait := self.limiter.wait(f"address:{address}"):
            await self._refuse(wait)
        for candidate in [name] if name else await self._names_for(key):
            record = await self._record(candidate)
            if record and await self._check(record, key, digest):
                return Client(record.name, record.admin)
        if wait := self.limiter.failed(address, name):
            await self._refuse(wait)
        raise NotAuthorizedException("invalid client or api-key")

    async def _refuse(self, wait: float) -> NoReturn:
        paused = min(wait, self.pause)
        await asyncio.sleep(paused)
        raise TooManyAttempts(wait - paused)

    async def _known(self, name: str | None, digest: str) -> Client | None:
        """A key checked before, still the client's current one: no hash, no limit."""
        known = self.verified.get(digest)
        if known is None or (name and name != known[0]):
            return None
        record = await self._record(known[0])
        if record is None or record.key_hash != known[1]:
            return None
        self.verified.move_to_end(digest)
        return Client(record.name, record.admin)

    async def _check(self, record: _Record, key: str, digest: str) -> bool:
        key_hash = record.key_hash
        if not is_slow_hash(key_hash):
            matched = verify_key(key, key_hash, self.secret)
        else:
            # The slow hash only runs while the name is under its failure limit.
            if wait := self.limiter.wait(f"name:{record.name}"):
                await self._refuse(wait)
            matched = await self._slow_verify(key, key_hash)
            if matched:
                key_hash = await self._rehash(record, key)
        if matched:
            self.verified[digest] = (record.name, key_hash)
            if len(self.verified) > MAX_CACHED:
                self.verified.popitem(last=False)
        return matched

    async def _slow_verify(self, key: str, key_hash: str) -> bool:
        if self._slow_waiting >= SLOW_QUEUE:
            await self._refuse(1)
        self._slow_waiting += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._slow, verify_key, key, key_hash)
        finally:
            self._slow_waiting -= 1

    async def _rehash(self, record: _Record, key: str) -> str:
        """Replaces a PBKDF2 hash by the HMAC one (a registration at the next version)."""
        if self.secret is None:
            return record.key_hash
        new_hash = hash_key(key, self.secret)
        loop = asyncio.get_running_loop()
        try:
            done = await loop.run_in_executor(self._reads, self._append_rehash, record, new_hash)
        except Exception as error:  # the key was right: let it in, rehash next time
            log.warning("client %s: key hash not migrated: %s", record.name, error)
            return record.key_hash
        self.records.pop(record.name, None)
        if done:
            log.info("client %s: key hash migrated from PBKDF2 to HMAC-SHA-256", record.name)
            return new_hash
        return record.key_hash

    def _append_rehash(self, record: _Record, new_hash: str) -> bool:
        def build(events: list[Event], version: int) -> Event:
            last = _latest(events)
            if not (isinstance(last, ClientRegistered) and last.key_hash == record.key_hash):
                raise _Changed
            return msgspec.structs.replace(
                last, version=version, at=datetime.now(UTC), key_hash=new_hash
            )

        try:
            self.runtime.store.append_next(client_stream(record.name), build)
        except _Changed:
            return False
        return True

    async def _record(self, name: str) -> _Record | None:
        cached = self.records.get(name)
        if cached and time.monotonic() - cached[0] < CACHE_SECONDS:
            return cached[1]
        started = time.monotonic()
        record = await self._once(("record", name), self._read_record, name)
        _bound(self.records)
        self.records[name] = (started, record)
        return record

    def _read_record(self, name: str) -> _Record | None:
        # The latest registration or revocation decides: a revoked key is simply not known.
        last = _latest(self.runtime.store.stream(client_stream(name)))
        if not isinstance(last, ClientRegistered):
            return None
        return _Record(last.name, last.key_hash, last.admin)

    async def _names_for(self, key: str) -> list[str]:
        """The clients whose key starts the same way (a bearer key without a client name)."""
        lookup = key_lookup(key)
        cached = self.lookups.get(lookup)
        if cached and time.monotonic() - cached[0] < CACHE_SECONDS:
            return cached[1]
        started = time.monotonic()
        names = await self._once(("lookup", lookup), self._read_names, lookup)
        _bound(self.lookups)
        self.lookups[lookup] = (started, names)
        return names

    def _read_names(self, lookup: str) -> list[str]:
        rows = self.runtime.store.query(
            "SELECT name FROM rm_clients WHERE key_lookup = %s AND revoked_at IS NULL", (lookup,)
        )
        return [row["name"] for row in rows]

    async def _once(self, what: tuple[str, str], read: Callable[[str], Any], arg: str) -> Any:
        """One read at a time per record: callers asking meanwhile share its answer."""
        future = self._loading.get(what)
        if future is None:
            future = asyncio.get_running_loop().run_in_executor(self._reads, read, arg)
            self._loading[what] = future
            future.add_done_callback(lambda _: self._loading.pop(what, None))
        return await asyncio.shield(future)


def _latest(events: list[Event]) -> ClientRegistered | ClientRevoked | None:
    return next(
        (e for e in reversed(events) if isinstance(e, (ClientRegistered, ClientRevoked))), None
    )


def _bound(cache: dict[str, tuple[float, Any]]) -> None:
    if len(cache) < MAX_CACHED:
        return
    now = time.monotonic()
    for key in [k for k, (at, _) in cache.items() if now - at >= CACHE_SECONDS]:
        del cache[key]
    if len(cache) >= MAX_CACHED:
        cache.clear()


def credentials(connection: ASGIConnection) -> tuple[str | None, str | None]:
    """(client name or None, key or None) from whichever header style the caller used."""
    headers = connection.headers
    if key := headers.get("api-key") or headers.get("x-api-key"):
        return headers.get("client"), key
    authorization = headers.get("authorization", "")
    scheme, _, value = authorization.partition(" ")
    named = headers.get("client")  # with a bearer key, the client it must belong to
    if scheme.lower() == "bearer" and value.strip():
        return named, value.strip()
    if scheme.lower() == "basic" and value.strip():
        try:
            name, _, key = base64.b64decode(value.strip()).decode().partition(":")
        except (binascii.Error, ValueError):
            raise NotAuthorizedException("malformed Basic credentials") from None
        if named and name and named != name:
            raise NotAuthorizedException("the client header and the credentials disagree")
        return name or named or None, key or None
    return None, None
