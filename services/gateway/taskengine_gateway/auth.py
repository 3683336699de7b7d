"""Who is calling: a client's key in any of the seeds' header styles.

`client` + `api-key` headers (Task Engine), `Authorization: Bearer <key>` (work tasks,
scheduled tasks) and `Authorization: Basic client:key` (container tasks). Keys are kept only as
PBKDF2 hashes; a successful check is remembered by digest so the slow hash runs once per key.
A client's record is read from its stream and kept `CACHE_SECONDS`: a revocation (or a new key)
takes effect within that time.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import time
from dataclasses import dataclass

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException
from taskengine_bus import Runtime
from taskengine_contracts.events import ClientRegistered, ClientRevoked
from taskengine_core.clients import key_lookup, verify_key
from taskengine_core.ids import client_stream

CACHE_SECONDS = 5.0


@dataclass(frozen=True)
class Client:
    name: str
    admin: bool


@dataclass(frozen=True)
class _Record:
    name: str
    key_hash: str
    admin: bool
    loaded: float


class Authenticator:
    def __init__(self, runtime: Runtime):
        self.runtime = runtime
        self.records: dict[str, _Record] = {}
        self.verified: dict[tuple[str, str, str], bool] = {}

    async def authenticate(self, connection: ASGIConnection) -> Client:
        name, key = credentials(connection)
        if not key:
            raise NotAuthorizedException("missing credentials: send client and api-key headers")
        candidates = [await self._record(name)] if name else await self._by_key(key)
        for record in candidates:
            if record and await self._check(record, key):
                return Client(record.name, record.admin)
        raise NotAuthorizedException("invalid client or api-key")

    async def _check(self, record: _Record, key: str) -> bool:
        cache_key = (record.name, record.key_hash, hashlib.sha256(key.encode()).hexdigest())
        if cache_key not in self.verified:
            if len(self.verified) > 10_000:
                self.verified.clear()
            # The slow hash runs in a thread, so a flood of wrong keys cannot stall the loop.
            verified = await self.runtime.call(verify_key, key, record.key_hash)
            self.verified[cache_key] = verified
        return self.verified[cache_key]

    async def _record(self, name: str) -> _Record | None:
        record = self.records.get(name)
        if record and time.monotonic() - record.loaded < CACHE_SECONDS:
            return record
        events = await self.runtime.call(self.runtime.store.stream, client_stream(name))
        # The latest registration or revocation decides: a revoked key is simply not known.
        last = next(
            (e for e in reversed(events) if isinstance(e, (ClientRegistered, ClientRevoked))), None
        )
        if not isinstance(last, ClientRegistered):
            self.records.pop(name, None)
            return None
        record = _Record(last.name, last.key_hash, last.admin, time.monotonic())
        self.records[name] = record
        return record

    async def _by_key(self, key: str) -> list[_Record | None]:
        rows = await self.runtime.call(
            self.runtime.store.query,
            "SELECT name FROM rm_clients WHERE key_lookup = %s AND revoked_at IS NULL",
            (key_lookup(key),),
        )
        return [await self._record(row["name"]) for row in rows]


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
