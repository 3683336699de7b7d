"""A real nats-server (from the wheel) configured with deploy/nats-users.conf, the file the
production layouts give their NATS servers: the services' user and the lifecycle subscriber's."""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from taskengine_embedded._nats import nats_server_binary
from taskengine_embedded._process import free_port, port_open

from tests.support.servers import scratch_dir

USERS_CONF = Path(__file__).resolve().parents[2] / "deploy" / "nats-users.conf"
SERVICES_USER, SUBSCRIBER_USER = "taskengine", "taskengine-subscriber"
SUBSCRIBER_INBOX = "_INBOX_subscriber"
"""The inbox prefix the subscriber user connects with (its only subscribe permission)."""


@dataclass(frozen=True)
class SecuredNats:
    url: str
    passwords: dict[str, str]
    """User -> password."""

    def url_of(self, user: str) -> str:
        """The URL with the user's credentials in it (for tools that take only a URL)."""
        return self.url.replace("nats://", f"nats://{user}:{self.passwords[user]}@")


@contextmanager
def secured_nats() -> Iterator[SecuredNats]:
    """nats-server with JetStream and deploy/nats-users.conf, the passwords in its environment."""
    root = scratch_dir("te-nats-users-")
    passwords = {SERVICES_USER: "services-pw-5f2a9c", SUBSCRIBER_USER: "subscriber-pw-81d3e7"}
    port, monitor = free_port(), free_port()
    shutil.copy(USERS_CONF, root / "users.conf")
    (root / "nats.conf").write_text(
        f"listen: 127.0.0.1:{port}\nhttp: 127.0.0.1:{monitor}\n"
        f'jetstream {{ store_dir: "{root / "js"}" }}\ninclude users.conf\n'
    )
    env = {
        "TASKENGINE_NATS_PASSWORD": passwords[SERVICES_USER],
        "TASKENGINE_NATS_SUBSCRIBER_PASSWORD": passwords[SUBSCRIBER_USER],
    }
    log = open(root / "nats.log", "wb")  # noqa: SIM115
    process = subprocess.Popen(
        [str(nats_server_binary()), "-c", str(root / "nats.conf")],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while not _ready(port, monitor):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"nats-server did not start: {(root / 'nats.log').read_text()}")
            time.sleep(0.1)
        yield SecuredNats(f"nats://127.0.0.1:{port}", passwords)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
        shutil.rmtree(root, ignore_errors=True)


def _ready(port: int, monitor: int) -> bool:
    if not port_open(port):
        return False
    url = f"http://127.0.0.1:{monitor}/healthz?js-enabled-only=true"
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False
