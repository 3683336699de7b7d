"""Clients and their keys: registered as events; only a hash of each key is stored.

The hash is an HMAC under a secret derived from `TASKENGINE_WEBHOOK_KEY` (`key_secret`): the
gateway and this command must share that key. Without it here, the slow salted hash is stored
and the gateway replaces it with the HMAC on the key's first use.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from taskengine_contracts.events import ClientRegistered, ClientRevoked, Event
from taskengine_core.clients import (
    hash_key,
    key_lookup,
    key_secret,
    mask,
    new_key,
    parse_bootstrap,
    verify_key,
)
from taskengine_core.config import EngineSettings
from taskengine_core.errors import DomainError
from taskengine_core.ids import client_stream

if TYPE_CHECKING:  # the store is imported by who makes one
    from taskengine_store.store import EventStore

DEMO_CLIENT = "demo-client"


class ClientError(DomainError):
    """No such client, or it is already revoked."""


def latest(events: list[Event]) -> ClientRegistered | ClientRevoked | None:
    """The client's last registration or revocation: a revocation wins until it registers again."""
    for event in reversed(events):
        if isinstance(event, (ClientRegistered, ClientRevoked)):
            return event
    return None


def register(
    store: EventStore,
    name: str,
    key: str,
    admin: bool = False,
    revive: bool = True,
    secret: bytes | None = None,
) -> bool:
    """Creates the client, or gives it this key (and admin flag) if it exists.

    A revoked client is registered again only with `revive` (startup passes False, so an old
    key file or environment never undoes a revocation). `secret` (`key_secret` of the webhook
    key) is what the key is hashed under. Returns whether the client is usable.
    """
    stream = client_stream(name)
    last = latest(store.stream(stream))
    if (
        isinstance(last, ClientRegistered)
        and last.admin == admin
        and verify_key(key, last.key_hash, secret)
    ):
        return True
    if isinstance(last, ClientRevoked) and not revive:
        return False
    store.append_next(
        stream,
        lambda _, version: ClientRegistered(
            id=stream,
            version=version,
            at=datetime.now(UTC),
            name=name,
            key_hash=hash_key(key, secret),
            key_lookup=key_lookup(key),
            key_hint=mask(key)[-4:],
            admin=admin,
        ),
    )
    return True


def revoke(store: EventStore, name: str, by: str) -> ClientRevoked:
    """Appends the client's revocation: its key is refused from now on."""
    stream = client_stream(name)

    def build(events: list[Event], version: int) -> ClientRevoked:
        last = latest(events)
        if last is None:
            raise ClientError(f"no client named {name!r}")
        if isinstance(last, ClientRevoked):
            raise ClientError(f"client {name!r} is already revoked")
        return ClientRevoked(id=stream, version=version, at=datetime.now(UTC), name=name, by=by)

    return store.append_next(stream, build)


def ensure_clients(
    store: EventStore, config: EngineSettings, data_dir: Path, webhook_key: str | None = None
) -> list[tuple[str, str, bool]]:
    """Bootstrap clients from the environment, or the demo client whose key lives in the data dir.

    Returns (name, key, show_key) for the banner: a key is shown in full only when just
    created; afterwards its last 4 characters and the file that holds it. A revoked client
    stays revoked (`taskengine clients add` registers it again) and is left out.
    """
    secret = key_secret(webhook_key) if webhook_key else None
    if config.bootstrap_client:
        clients = parse_bootstrap(config.bootstrap_client)
        usable = [
            (n, k, a)
            for n, k, a in clients
            if register(store, n, k, a, revive=False, secret=secret)
        ]
        return [(name, key, False) for name, key, _ in usable]
    key_file = data_dir / f"{DEMO_CLIENT}.key"
    if key_file.exists():
        key = key_file.read_text().strip()
        registered = register(store, DEMO_CLIENT, key, admin=True, revive=False, secret=secret)
        return [(DEMO_CLIENT, key, False)] if registered else []
    key = new_key()
    register(store, DEMO_CLIENT, key, admin=True, secret=secret)
    key_file.touch(mode=0o600)
    key_file.write_text(key + "\n")
    return [(DEMO_CLIENT, key, True)]
