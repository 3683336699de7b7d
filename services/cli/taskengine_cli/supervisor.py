"""`taskengine up`: the embedded default. Servers from wheels, then every service as a process.

Starts a real nats-server and PostgreSQL from their wheels unless `TASKENGINE_NATS_URL` /
`TASKENGINE_DATABASE_URL` name existing ones, creates the tables once, makes sure a client
exists, then runs each service as its own process (own process group), restarting any that
dies. The supervisor imports every service's code once; each service process is a fork of
it (`taskengine_cli.forks`), named `taskengine_<service> (<instance>)` in `ps`. A server it
started that dies is started again (`healing`). Services reconnect; one that dies meanwhile
is held while NATS is down, and started at once while PostgreSQL recovers (it waits for the
database itself), so restarts do not pile up. SIGINT/SIGTERM stop every child, then the
servers it started.

Each service serves its Prometheus metrics on a port of its own (TASKENGINE_METRICS_PORT):
from the supervisor's TASKENGINE_METRICS_PORT on, one per service in SERVICES order (one in
use: any free port), else free ports; the banner lists them, as does `run/endpoints.json`.

`TASKENGINE_REPLICAS` (e.g. `gateway=2,admission=2`) runs more than one process of a service:
gateways share the one port (SO_REUSEPORT: the kernel spreads connections over them); the
admission controller and the scheduler elect a leader, the rest stand by; dispatchers and
notifiers share the work by partitions (`taskengine_core.partitions`). Replica `i` of a
service is `<service>-<i>` (its log, pid file and TASKENGINE_INSTANCE; the first keeps the
plain name). The relay and the projector run once (their order is the store's).
"""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from taskengine_core.clients import mask
from taskengine_core.config import EngineSettings
from taskengine_core.confinement import not_dumpable
from taskengine_embedded import EmbeddedNats, EmbeddedPostgres, free_port
from taskengine_store.store import EventStore

from taskengine_cli.clients import ensure_clients
from taskengine_cli.endpoints import webhook_key, write_endpoints
from taskengine_cli.forks import Forked, preload
from taskengine_cli.healing import FIRST_DELAY, WatchedServer, say

SERVICES = ("relay", "projector", "scheduler", "admission", "dispatcher", "notifier", "gateway")
STOP_GRACE = 10.0
REPLICABLE = ("gateway", "admission", "scheduler", "dispatcher", "notifier")
"""Services of which `TASKENGINE_REPLICAS` may run more than one process."""
MAX_REPLICAS = 16


def parse_replicas(text: str) -> dict[str, int]:
    """`TASKENGINE_REPLICAS` (`service=count,...`) as a count per service (1 unless named);
    ValueError saying what is wrong with it."""
    counts = dict.fromkeys(SERVICES, 1)
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, raw = part.partition("=")
        name = name.strip()
        if not sep or name not in SERVICES:
            raise ValueError(f"{part!r} is not service=count with a service of {SERVICES}")
        try:
            count = int(raw)
        except ValueError:
            raise ValueError(f"{part!r}: the count must be a whole number") from None
        if not 1 <= count <= MAX_REPLICAS:
            raise ValueError(f"{part!r}: the count must be from 1 to {MAX_REPLICAS}")
        if count > 1 and name not in REPLICABLE:
            raise ValueError(
                f"{part!r}: the {name} runs once (only {', '.join(REPLICABLE)} run several)"
            )
        counts[name] = count
    return counts


def hide_password(url: str) -> str:
    """The URL with its password masked but for the last 4 characters."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", f":{mask(parts.password)}@")
    return parts._replace(netloc=netloc).geturl()


def port_open(port: int, host: str) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((host, port)) == 0


def metrics_ports(base: int, instances: list[str], reserved: int) -> dict[str, int]:
    """A metrics port for each instance: `base` + its index (if free), else any free one;
    never `reserved` (the gateway's port: free until the gateway binds it, so the OS may
    offer it)."""
    ports: dict[str, int] = {}
    for index, name in enumerate(instances):
        preferred = base + index if base and base + index != reserved else None
        port = free_port(preferred)
        while port in ports.values() or port == reserved:
            port = free_port()
        ports[name] = port
    return ports


def file_name(service: str, index: int) -> str:
    """What the log and pid files of a service's `index`th process are named after."""
    return service if index == 0 else f"{service}-{index}"


@dataclass
class Child:
    name: str
    """The service it runs."""
    index: int
    """Which of the service's processes it is (TASKENGINE_INSTANCE `<service>-<index>`)."""
    log_path: Path
    pid_path: Path
    process: Forked | None = None
    started: float = 0.0
    backoff: float = FIRST_DELAY
    next_start: float = 0.0
    metrics_port: int = 0
    """Where it serves its metrics, the same across its restarts."""

    @property
    def key(self) -> str:
        return file_name(self.name, self.index)

    def start(self, env: dict[str, str]) -> None:
        self.process = Forked.start(
            self.name,
            f"taskengine_{self.name} ({self.key})",
            {
                **env,
                "TASKENGINE_METRICS_PORT": str(self.metrics_port),
                "TASKENGINE_INSTANCE": f"{self.name}-{self.index}",
            },
            self.log_path,
        )
        self.started = time.monotonic()
        # Whole or not at all: a reader (an operator's script, the tests) never sees it empty.
        written = self.pid_path.with_name(self.pid_path.name + ".new")
        written.write_text(str(self.process.pid))
        os.replace(written, self.pid_path)

    def signal_group(self, signum: int) -> None:
        if self.process and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signum)
            except ProcessLookupError:
                pass


@dataclass
class Supervisor:
    config: EngineSettings
    children: list[Child] = field(default_factory=list)
    servers: list = field(default_factory=list)
    watched: list[WatchedServer] = field(default_factory=list)
    stopping: bool = False

    def run(self) -> int:
        not_dumpable()  # its environment holds the services' secrets: not for a step to read
        data_dir = self.config.data_dir.resolve()
        for sub in ("logs", "run", "workflows"):
            (data_dir / sub).mkdir(parents=True, exist_ok=True)
        lock = open(data_dir / "run" / "supervisor.lock", "a+")  # noqa: SIM115  (held until exit)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"taskengine is already running with data dir {data_dir}", file=sys.stderr)
            return 1
        try:
            replicas = parse_replicas(self.config.replicas)
        except ValueError as error:
            print(f"TASKENGINE_REPLICAS: {error}", file=sys.stderr)
            return 2
        if port_open(self.config.port, self.config.host):
            print(
                f"port {self.config.port} on {self.config.host} is in use: stop what listens"
                " there or set TASKENGINE_PORT",
                file=sys.stderr,
            )
            return 1
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._on_signal)
        preload(SERVICES)
        try:
            nats_url, database_url = self._servers(data_dir)
            master = webhook_key(self.config, create=True) or ""
            store = EventStore(database_url, pool_size=1, create_tables=True)
            banner_clients = ensure_clients(store, self.config, data_dir, master)
            store.close()
            env = {
                **os.environ,
                "TASKENGINE_DATABASE_URL": database_url,
                "TASKENGINE_NATS_URL": nats_url,
                "TASKENGINE_DATA_DIR": str(data_dir),
                "TASKENGINE_CREATE_TABLES": "false",
                "TASKENGINE_WEBHOOK_KEY": master,
            }
            if replicas["gateway"] > 1:  # the gateways share the port
                env["TASKENGINE_REUSE_PORT"] = "true"
            gateway_url = f"http://{self.config.host}:{self.config.port}"
            names = [
                (name, index, file_name(name, index))
                for name in SERVICES
                for index in range(replicas[name])
            ]
            ports = metrics_ports(
                self.config.metrics_port, [key for _, _, key in names], self.config.port
            )
            host = self.config.metrics_host
            write_endpoints(
                data_dir,
                database_url=database_url,
                nats_url=nats_url,
                gateway_url=gateway_url,
                dashboard_url=f"{gateway_url}/ui",
                metrics={name: f"http://{host}:{port}/metrics" for name, port in ports.items()},
            )
            for name, index, key in names:
                child = Child(
                    name,
                    index,
                    data_dir / "logs" / f"{key}.log",
                    data_dir / "run" / f"{key}.pid",
                    metrics_port=ports[key],
                )
                child.start(env)
                self.children.append(child)
            ready = self._wait_ready(gateway_url)
            self._banner(data_dir, gateway_url, nats_url, database_url, banner_clients, ready)
            self._watch(env)
        finally:
            self._stop()
        return 0

    def _servers(self, data_dir: Path) -> tuple[str, str]:
        nats_url, database_url = self.config.nats_url, self.config.database_url
        if not nats_url:
            nats = EmbeddedNats(data_dir / "nats")
            nats_url = nats.start()
            self.servers.append(nats)
        if not database_url:
            postgres = EmbeddedPostgres(data_dir / "postgres")
            database_url = postgres.start()
            self.servers.append(postgres)
        self.watched = [WatchedServer(server, started=time.monotonic()) for server in self.servers]
        return nats_url, database_url

    def _wait_ready(self, gateway_url: str, timeout: float = 60.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.stopping:
            try:
                with urllib.request.urlopen(gateway_url + "/", timeout=1) as response:
                    if response.status == 200:
                        return True
            except OSError:
                time.sleep(0.2)
        return False

    def _banner(
        self,
        data_dir: Path,
        gateway_url: str,
        nats_url: str,
        database_url: str,
        clients: list[tuple[str, str, bool]],
        ready: bool,
    ) -> None:
        lines = [
            "",
            f"Taskengine is {'up' if ready else 'starting (gateway not answering yet)'}",
            f"  gateway     {gateway_url}",
            f"  NATS        {nats_url}",
            f"  PostgreSQL  {hide_password(database_url)}",
            f"  data        {data_dir}",
            f"  logs        {data_dir / 'logs'}/<service>.log",
            f"  dashboard   {gateway_url}/ui  (sign in with a client's name and key)",
            f"  metrics     http://{self.config.metrics_host}:<port>/metrics, the ports:",
            *(f"    {child.key:<11} {child.metrics_port}" for child in self.children),
            "",
        ]
        for name, key, shown in clients:
            where = (
                ""
                if shown
                else f" (in {data_dir / f'{name}.key'})"
                if name == "demo-client"
                else ""
            )
            lines.append(f"  client {name}: key {key if shown else mask(key)}{where}")
        if clients:
            name, key, _ = clients[0]
            lines += [
                "",
                "  Authenticate with any of:",
                f"    -H 'client: {name}' -H 'api-key: <key>'",
                "    -H 'Authorization: Bearer <key>'",
                f"    -u '{name}:<key>'",
                "",
                f"  curl -s {gateway_url}/job -H 'client: {name}' -H 'api-key: <key>' \\",
                "    -H 'Content-Type: application/json' \\",
                f'    -d \'{{"client": "{name}", "job": {{"workflow": "echo"}}, '
                '"parameters": {"hello": "world"}}\'',
            ]
        lines += ["", "Ctrl-C stops everything.", ""]
        print("\n".join(lines), flush=True)

    def _watch(self, env: dict[str, str]) -> None:
        while not self.stopping:
            self._heal_servers()
            # services wait for PostgreSQL themselves, but exit without NATS: hold those
            down = [w.name for w in self.watched if w.down and isinstance(w.server, EmbeddedNats)]
            now = time.monotonic()
            for child in self.children:
                process = child.process
                if process is None or process.poll() is None:
                    if process is None and now >= child.next_start and not down:
                        child.start(env)
                    continue
                code = process.returncode
                child.process = None
                if down:  # not its own fault: start it once the server is back, no backoff
                    say(f"{child.key} exited ({code}) while {', '.join(down)} is down")
                    continue
                # It died: restart with backoff, reset once it stays up a minute.
                if now - child.started > 60:
                    child.backoff = FIRST_DELAY
                child.next_start = now + child.backoff
                print(
                    f"{child.key} exited ({code}); restarting in {child.backoff:.1f}s"
                    f" (see {child.log_path})",
                    file=sys.stderr,
                    flush=True,
                )
                child.backoff = min(child.backoff * 2, 30.0)
            time.sleep(0.2)

    def _heal_servers(self) -> None:
        """Restarts dead embedded servers, each once its delay is over."""
        for watched in self.watched:
            watched.noticed_death(time.monotonic())
            if watched.restart_if_due(time.monotonic()):
                # services that died meanwhile were waiting for this, not failing on their own
                for child in self.children:
                    child.backoff, child.next_start = FIRST_DELAY, 0.0

    def _on_signal(self, signum: int, frame: object) -> None:
        self.stopping = True

    def _stop(self) -> None:
        for child in self.children:
            child.signal_group(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        for child in self.children:
            if child.process:
                try:
                    child.process.wait(timeout=max(deadline - time.monotonic(), 0.1))
                except subprocess.TimeoutExpired:
                    pass
            child.signal_group(signal.SIGKILL)
            if child.process:
                child.process.wait()
            child.pid_path.unlink(missing_ok=True)
        for server in reversed(self.servers):
            server.stop()
        if self.children:
            print("Taskengine stopped.", flush=True)
