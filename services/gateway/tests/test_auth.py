"""The authenticator on an in-memory store: HMAC keys checked on the loop, PBKDF2 keys on their
own thread and migrated, failures limited per address and name without locking out the owner."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime
from types import SimpleNamespace
from uuid import UUID

import pytest
from litestar.exceptions import NotAuthorizedException
from taskengine_contracts.events import ClientRegistered, ClientRevoked, Event
from taskengine_core.clients import hash_key, key_lookup, key_secret, new_key, pbkdf2_hash
from taskengine_core.config import EngineSettings
from taskengine_core.ids import client_stream
from taskengine_gateway import auth
from taskengine_gateway.auth import Authenticator
from taskengine_gateway.limits import TooManyAttempts

MASTER = "unit-webhook-key"
SECRET = key_secret(MASTER)


class Store:
    """What the authenticator uses of the event store: client streams and the lookup query."""

    def __init__(self) -> None:
        self.streams: dict[UUID, list[Event]] = {}
        self.reads: list[str] = []

    def stream(self, stream_id: UUID) -> list[Event]:
        self.reads.append(threading.current_thread().name)
        return list(self.streams.get(stream_id, []))

    def append_next(self, stream_id, build):  # type: ignore[no-untyped-def]
        events = self.streams.setdefault(stream_id, [])
        event = build(list(events), len(events) + 1)
        events.append(event)
        return event

    def query(self, sql: str, params: tuple) -> list[dict]:
        return [
            {"name": e.name}
            for events in self.streams.values()
            if isinstance(e := events[-1], ClientRegistered) and e.key_lookup == params[0]
        ]

    def register(self, name: str, key: str, key_hash: str) -> None:
        stream = client_stream(name)
        version = len(self.streams.get(stream, [])) + 1
        self.streams.setdefault(stream, []).append(
            ClientRegistered(
                id=stream,
                version=version,
                at=datetime.now(UTC),
                name=name,
                key_hash=key_hash,
                key_lookup=key_lookup(key),
                key_hint=key[-4:],
            )
        )

    def revoke(self, name: str) -> None:
        stream = client_stream(name)
        events = self.streams[stream]
        events.append(
            ClientRevoked(
                id=stream, version=len(events) + 1, at=datetime.now(UTC), name=name, by="test"
            )
        )


def authenticator(store: Store, **settings: object) -> Authenticator:
    config = EngineSettings(webhook_key=MASTER, **settings)  # type: ignore[arg-type]
    gate = Authenticator(SimpleNamespace(config=config, store=store))  # type: ignore[arg-type]
    gate.pause = 0.0
    return gate


def asking(name: str | None, key: str, address: str = "127.0.0.1", **headers: str):  # type: ignore[no-untyped-def]
    if name is None:
        headers = {"authorization": f"Bearer {key}", **headers}
    else:
        headers = {"client": name, "api-key": key, **headers}
    return SimpleNamespace(headers=headers, client=SimpleNamespace(host=address))


@pytest.fixture
def store() -> Store:
    return Store()


async def test_a_key_hashed_with_hmac_gets_in_by_name_or_bearer_and_a_wrong_one_does_not(store):
    key = new_key()
    store.register("b", key, hash_key(key, SECRET))
    gate = authenticator(store)
    assert (await gate.authenticate(asking("b", key))).name == "b"
    assert (await gate.authenticate(asking(None, key))).name == "b"
    with pytest.raises(NotAuthorizedException):
        await gate.authenticate(asking("b", new_key()))
    with pytest.raises(NotAuthorizedException):
        await gate.authenticate(asking("nobody", key))


async def test_records_are_read_on_their_own_thread_and_cached_unknown_names_too(store):
    key = new_key()
    store.register("b", key, hash_key(key, SECRET))
    gate = authenticator(store, auth_failure_burst=100)
    for _ in range(5):
        await gate.authenticate(asking("b", key))
        with pytest.raises(NotAuthorizedException):
            await gate.authenticate(asking("ghost", key))
    assert store.reads == ["auth-records_0", "auth-records_0"]


async def test_an_address_over_its_limit_gets_429_and_a_correct_key_elsewhere_still_gets_in(
    store,
):
    key = new_key()
    store.register("b", key, hash_key(key, SECRET))
    gate = authenticator(store, auth_failure_burst=3, auth_failures_per_minute=6)
    attacker = "198.51.100.66"
    for _ in range(2):
        with pytest.raises(NotAuthorizedException):
            await gate.authenticate(asking("b", new_key(), attacker))
    with pytest.raises(TooManyAttempts) as limited:
        await gate.authenticate(asking("b", new_key(), attacker))
    assert limited.value.headers == {"Retry-After": "10"}
    # Over the limit the attacker is refused before any check, even with the right key...
    with pytest.raises(TooManyAttempts):
        await gate.authenticate(asking("b", key, attacker))
    # ...while the name, flooded too, still lets its owner in from another address.
    assert gate.limiter.wait("name:b") > 0
    assert (await gate.authenticate(asking("b", key, "203.0.113.7"))).name == "b"
    # A wrong key from a fresh address, for the flooded name: 429, not a hint either way.
    with pytest.raises(TooManyAttempts):
        await gate.authenticate(asking("b", new_key(), "192.0.2.1"))


async def test_a_key_checked_before_gets_in_even_from_an_address_over_its_limit(store):
    key = new_key()
    store.register("b", key, hash_key(key, SECRET))
    gate = authenticator(store, auth_failure_burst=2)
    assert (await gate.authenticate(asking("b", key))).name == "b"
    for _ in range(5):
        with pytest.raises((NotAuthorizedException, TooManyAttempts)):
            await gate.authenticate(asking("b", new_key()))
    assert gate.limiter.wait("address:127.0.0.1") > 0
    assert (await gate.authenticate(asking("b", key))).name == "b"


async def test_behind_a_trusted_proxy_the_forwarded_address_is_limited_not_the_proxy(store):
    key = new_key()
    store.register("b", key, hash_key(key, SECRET))
    gate = authenticator(store, auth_failure_burst=1, trusted_proxies="127.0.0.1")
    with pytest.raises(TooManyAttempts):
        await gate.authenticate(asking("b", new_key(), **{"x-forwarded-for": "198.51.100.66"}))
    assert gate.limiter.wait("address:198.51.100.66") > 0
    assert gate.limiter.wait("address:127.0.0.1") == 0


async def test_a_pbkdf2_key_is_checked_on_its_own_thread_then_rehashed_to_hmac(store, monkeypatch):
    key = new_key()
    store.register("old", key, pbkdf2_hash(key))
    threads: list[str] = []
    real_verify = auth.verify_key

    def verify(*args):  # type: ignore[no-untyped-def]
        threads.append(threading.current_thread().name)
        return real_verify(*args)

    monkeypatch.setattr(auth, "verify_key", verify)
    gate = authenticator(store)
    assert (await gate.authenticate(asking("old", key))).name == "old"
    assert threads == ["auth-pbkdf2_0"]
    events = store.streams[client_stream("old")]
    assert [e.version for e in events] == [1, 2]
    rehashed = events[-1]
    assert isinstance(rehashed, ClientRegistered)
    assert rehashed.key_hash == hash_key(key, SECRET)
    assert (rehashed.key_lookup, rehashed.key_hint, rehashed.admin) == (
        events[0].key_lookup,
        events[0].key_hint,
        events[0].admin,
    )
    # A fresh gateway checks the migrated key by HMAC, on the loop.
    threads.clear()
    assert (await authenticator(store).authenticate(asking("old", key))).name == "old"
    assert threads == ["MainThread"]
    assert len(store.streams[client_stream("old")]) == 2


async def test_no_slow_hash_runs_for_a_name_over_its_limit(store, monkeypatch):
    key = new_key()
    store.register("old", key, pbkdf2_hash(key))
    gate = authenticator(store, auth_failure_burst=2)
    for address in ("10.0.0.1", "10.0.0.2"):
        with pytest.raises((NotAuthorizedException, TooManyAttempts)):
            await gate.authenticate(asking("old", new_key(), address))
    slow = []
    monkeypatch.setattr(auth, "verify_key", lambda *args: slow.append(args) or False)
    with pytest.raises(TooManyAttempts):
        await gate.authenticate(asking("old", new_key(), "10.0.0.3"))
    assert slow == []


async def test_a_client_revoked_meanwhile_is_not_registered_again_by_the_rehash(store):
    key = new_key()
    store.register("old", key, pbkdf2_hash(key))
    gate = authenticator(store)
    record = await gate._record("old")
    assert record is not None
    store.revoke("old")
    assert gate._append_rehash(record, hash_key(key, SECRET)) is False
    assert isinstance(store.streams[client_stream("old")][-1], ClientRevoked)


async def test_a_revocation_takes_effect_once_the_cached_record_expires(store, monkeypatch):
    key = new_key()
    store.register("b", key, hash_key(key, SECRET))
    gate = authenticator(store)
    assert (await gate.authenticate(asking("b", key))).name == "b"
    store.revoke("b")
    monkeypatch.setattr(auth, "CACHE_SECONDS", 0.0)
    with pytest.raises(NotAuthorizedException):
        await gate.authenticate(asking("b", key))


async def test_a_429_is_held_back_so_a_caller_that_hammers_waits_for_it(store):
    gate = authenticator(store, auth_failure_burst=1, auth_failures_per_minute=60)
    gate.pause = 0.3
    with pytest.raises(TooManyAttempts):  # the failure that empties the bucket
        await gate.authenticate(asking("b", new_key()))
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TooManyAttempts) as limited:
        await gate.authenticate(asking("b", new_key()))
    assert loop.time() - started >= 0.3
    assert limited.value.headers == {"Retry-After": "1"}
