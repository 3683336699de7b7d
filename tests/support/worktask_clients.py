"""A client of the work-task dialect in end-to-end tests: its HTTP session, a client of its
own, and its WebSocket of updates."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from uuid import uuid4

import httpx
from websockets.sync.client import ClientConnection, connect

from tests.support.system import BIN, System
from tests.support.waiting import wait_until


def bearer(system: System, key: str) -> httpx.Client:
    return httpx.Client(base_url=system.url, headers={"Authorization": f"Bearer {key}"}, timeout=30)


def new_client(system: System, prefix: str = "c") -> tuple[str, str]:
    """A client of its own (not an admin), so counts are exactly the test's: (name, key)."""
    name = f"{prefix}-{uuid4().hex[:8]}"
    done = subprocess.run(
        [str(BIN / "taskengine"), "clients", "add", name],
        env=system.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    key = done.stdout.splitlines()[0].removeprefix(f"client {name}: key ").strip()
    with bearer(system, key) as http:  # a bare key is found in the clients' read model
        wait_until(lambda: http.get("/api/worktasks").status_code == 200, what=f"{name}'s key")
    return name, key


def socket(system: System, key: str | None, query: str = "") -> ClientConnection:
    """`/ws/tasks` with `key` as a bearer (None: no header, e.g. a `?token=` in `query`)."""
    url = system.url.replace("http://", "ws://") + "/ws/tasks" + query
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return connect(url, additional_headers=headers, open_timeout=10)


def receive_until(
    ws: ClientConnection, done: Callable[[list[dict]], bool], timeout: float = 30
) -> list[dict]:
    """Messages until `done(messages so far)`; fails at the deadline."""
    messages: list[dict] = []
    deadline = time.monotonic() + timeout
    while not done(messages):
        left = deadline - time.monotonic()
        assert left > 0, f"timed out; received {messages}"
        try:
            messages.append(json.loads(ws.recv(timeout=left)))
        except TimeoutError:
            continue
    return messages
