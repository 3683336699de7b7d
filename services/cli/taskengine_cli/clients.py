"""Clients and their keys: registered as events; only a hash of each key is stored."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from taskengine_contracts.events import ClientRegistered
from taskengine_core.clients import hash_key, key_lookup, mask, new_key, parse_bootstrap, verify_key
from taskengine_core.config import EngineSettings
from taskengine_core.ids import client_stream
from taskengine_store.store import EventStore

DEMO_CLIENT = "demo-client"


def register(store: EventStore, name: str, key: str, admin: bool = False) -> None:
    """Creates the client, or gives it this key (and admin flag) if it exists."""
    stream = client_stream(name)
    events = store.stream(stream)
    last = next((e for e in reversed(events) if isinstance(e, ClientRegistered)), None)
    if last and last.admin == admin and verify_key(key, last.key_hash):
        return
    store.commit(
        [
            ClientRegistered(
                id=stream,
                version=len(events) + 1,
                at=datetime.now(UTC),
                name=name,
                key_hash=hash_key(key),
                key_lookup=key_lookup(key),
                key_hint=mask(key)[-4:],
                admin=admin,
            )
        ]
    )


def ensure_clients(store: EventStore, config: EngineSettings, data_dir: Path) -> list:
    """Bootstrap clients from the environment, or the demo client whose key lives in the data dir.

    Returns (name, key, show_key) for the banner: a key is shown in full only when just
    created; afterwards its last 4 characters and the file that holds it.
    """
    if config.bootstrap_client:
        clients = parse_bootstrap(config.bootstrap_client)
        for name, key, admin in clients:
            register(store, name, key, admin)
        return [(name, key, False) for name, key, _ in clients]
    key_file = data_dir / f"{DEMO_CLIENT}.key"
    if key_file.exists():
        key = key_file.read_text().strip()
        register(store, DEMO_CLIENT, key, admin=True)
        return [(DEMO_CLIENT, key, False)]
    key = new_key()
    register(store, DEMO_CLIENT, key, admin=True)
    key_file.touch(mode=0o600)
    key_file.write_text(key + "\n")
    return [(DEMO_CLIENT, key, True)]
