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

from taskengine_contracts import subjects
from taskengine_embedded._nats import nats_server_binary
from taskengine_embedded._process import free_port, port_open

from tests.support.servers import scratch_dir

USERS_CONF = Path(__file__).resolve().parents[2] / "deploy" / "nats-users.conf"
SERVICES_USER, SUBSCRIBER_USER = "taskengine", "taskengine-subscriber"
SUBSCRIBER_INBOX = subjects.SUBSCRIBER_INBOX
"""The inbox prefix the subscriber user connects with (its only inboxes)."""


@dataclass(frozen=True)
class SecuredNats:
    url: str
    passwords: dict[str, str]
    """User -> password."""
    ca: Path | None = None
    """The CA file of a TLS server."""

    def url_of(self, user: str) -> str:
        """The URL with the user's credentials in it (for tools that take only a URL)."""
        return self.url.replace("://", f"://{user}:{self.passwords[user]}@", 1)


def make_certificates(root: Path) -> Path:
    """A CA (ca.pem) and a server certificate it signed for 127.0.0.1 and localhost
    (server.pem, server.key), made with the openssl command; returns the CA's file."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=root, check=True, capture_output=True)

    openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-subj", "/CN=taskengine test CA", "-keyout", "ca.key", "-out", "ca.pem",
    )  # fmt: skip
    openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
        "-keyout", "server.key", "-out", "server.csr",
    )  # fmt: skip
    (root / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", "server.pem",
    )  # fmt: skip
    return root / "ca.pem"


@contextmanager
def secured_nats(tls: bool = False) -> Iterator[SecuredNats]:
    """nats-server with JetStream and deploy/nats-users.conf, the passwords in its environment;
    `tls`: clients must connect over TLS (its CA: `SecuredNats.ca`)."""
    root = scratch_dir("te-nats-users-")
    passwords = {SERVICES_USER: "services-pw-5f2a9c", SUBSCRIBER_USER: "subscriber-pw-81d3e7"}
    port, monitor = free_port(), free_port()
    shutil.copy(USERS_CONF, root / "users.conf")
    ca = make_certificates(root) if tls else None
    settings = f"tls {{ cert_file: {root / 'server.pem'}, key_file: {root / 'server.key'} }}\n"
    (root / "nats.conf").write_text(
        f"listen: 127.0.0.1:{port}\nhttp: 127.0.0.1:{monitor}\n"
        f'jetstream {{ store_dir: "{root / "js"}" }}\ninclude users.conf\n'
        + (settings if tls else "")
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
        scheme = "tls" if tls else "nats"
        yield SecuredNats(f"{scheme}://127.0.0.1:{port}", passwords, ca)
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
