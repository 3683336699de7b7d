"""`taskengine clients add / revoke / list` against a running system: a revoked key is refused
in every header style, and adding the client again gives it a new key."""

from __future__ import annotations

import base64
import subprocess

import httpx
from taskengine_cli.clients import DEMO_CLIENT, ensure_clients, register, revoke
from taskengine_contracts.events import ClientRegistered, ClientRevoked
from taskengine_core.config import EngineSettings
from taskengine_core.ids import client_stream
from taskengine_core.outbound import webhook_secret
from taskengine_store.store import EventStore

from tests.support.system import BIN, WEBHOOK_KEY, System
from tests.support.waiting import wait_until

NAME = "revocable"


def taskengine(system: System, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "taskengine"), *args],
        env=system.env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def add(system: System, name: str) -> str:
    done = taskengine(system, "clients", "add", name)
    assert done.returncode == 0, done.stderr
    key_line, secret_line = done.stdout.splitlines()
    prefix = f"client {name}: key "
    assert key_line.startswith(prefix), done.stdout
    # The secret its callbacks are signed with, derived from the system's webhook key.
    assert secret_line.startswith(f"webhook secret {webhook_secret(WEBHOOK_KEY, name)} ")
    return key_line.removeprefix(prefix).strip()


def header_styles(name: str, key: str) -> dict[str, dict[str, str]]:
    basic = base64.b64encode(f"{name}:{key}".encode()).decode()
    return {
        "client+api-key": {"client": name, "api-key": key},
        "bearer": {"Authorization": f"Bearer {key}"},
        "basic": {"Authorization": f"Basic {basic}"},
    }


def statuses(system: System, name: str, key: str) -> dict[str, int]:
    return {
        style: httpx.get(system.url + "/jobs", headers=headers, timeout=10).status_code
        for style, headers in header_styles(name, key).items()
    }


def all_are(status: int):  # type: ignore[no-untyped-def]
    return lambda found: set(found.values()) == {status}


def test_a_revoked_key_is_refused_and_adding_the_client_again_gives_a_new_key(system_factory):
    # Polling for the new key fails until the gateway's 5 s client cache lets it in; those
    # failures would drain the failure limiter's allowance (tested in test_key_flood).
    system = system_factory(TASKENGINE_AUTH_FAILURE_BURST="100000")
    old_key = add(system, NAME)
    # Bearer finds the client through the projected rm_clients: wait for the projector.
    wait_until(
        lambda: all_are(200)(statuses(system, NAME, old_key)),
        timeout=15,
        what="the new key to work in every style",
    )
    listed = taskengine(system, "clients", "list").stdout
    assert f"{NAME}\tkey ****{old_key[-4:]}\t" in listed

    revoked = taskengine(system, "clients", "revoke", NAME)
    assert revoked.returncode == 0, revoked.stderr
    assert f"client {NAME} revoked" in revoked.stdout
    # Once the gateway's 5 s cache expires (with room for a busy machine).
    wait_until(
        lambda: all_are(401)(statuses(system, NAME, old_key)),
        timeout=20,
        what="the revoked key to be refused in every style",
    )
    wrong = httpx.get(system.url + "/jobs", headers={"client": NAME, "api-key": "wrong-key-123"})
    for style, headers in header_styles(NAME, old_key).items():
        refused = httpx.get(system.url + "/jobs", headers=headers)
        assert (refused.status_code, refused.json()) == (401, wrong.json()), style
    wait_until(
        lambda: f"{NAME}\trevoked\t" in taskengine(system, "clients", "list").stdout,
        timeout=15,
        what="clients list to show the client revoked",
    )

    again = taskengine(system, "clients", "revoke", NAME)
    assert (again.returncode, again.stdout) == (1, "")
    assert f"client {NAME!r} is already revoked" in again.stderr
    unknown = taskengine(system, "clients", "revoke", "no-such-client")
    assert unknown.returncode == 1
    assert "no client named 'no-such-client'" in unknown.stderr

    new_key = add(system, NAME)
    assert new_key != old_key
    wait_until(
        lambda: all_are(200)(statuses(system, NAME, new_key)),
        timeout=15,
        what="the new key to work in every style",
    )
    assert all_are(401)(statuses(system, NAME, old_key))
    listed = taskengine(system, "clients", "list").stdout
    assert f"{NAME}\tkey ****{new_key[-4:]}\t" in listed
    assert f"{NAME}\trevoked" not in listed


def test_starting_the_system_does_not_undo_a_revocation(database_url, engine_root):
    """Neither the bootstrap environment nor the demo key file re-registers a revoked client;
    only `clients add` does."""
    store = EventStore(database_url, pool_size=1, create_tables=True)
    try:
        bootstrap = EngineSettings(bootstrap_client="kept:kept-key-0123456789,gone:gone-key-01234")
        assert [c[0] for c in ensure_clients(store, bootstrap, engine_root)] == ["kept", "gone"]
        revoke(store, "gone", by="test")
        assert [c[0] for c in ensure_clients(store, bootstrap, engine_root)] == ["kept"]
        assert isinstance(store.stream(client_stream("gone"))[-1], ClientRevoked)

        demo = EngineSettings(bootstrap_client="")
        [(_, key, shown)] = ensure_clients(store, demo, engine_root)
        assert shown and (engine_root / f"{DEMO_CLIENT}.key").read_text().strip() == key
        revoke(store, DEMO_CLIENT, by="test")
        assert ensure_clients(store, demo, engine_root) == []
        assert isinstance(store.stream(client_stream(DEMO_CLIENT))[-1], ClientRevoked)

        assert register(store, DEMO_CLIENT, key, admin=True)  # what `clients add` does
        assert isinstance(store.stream(client_stream(DEMO_CLIENT))[-1], ClientRegistered)
        assert ensure_clients(store, demo, engine_root) == [(DEMO_CLIENT, key, False)]
    finally:
        store.close()
