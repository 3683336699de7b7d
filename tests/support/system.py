"""The engine under test, started for real.

`System` runs `taskengine up` exactly as `make up` does (a supervisor with every service as
its own process). `Services` runs chosen service processes alone, for integration tests.
Both get a fresh database and their own NATS (or a reset stream on a named test server).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import nats
from nats.js.errors import NotFoundError
from taskengine_cli.supervisor import parse_replicas
from taskengine_contracts import subjects
from taskengine_contracts.events import Event
from taskengine_embedded import free_port
from taskengine_runtime import ensure_stream
from taskengine_runtime.bus import servers
from taskengine_store.store import EventStore

from tests.support.waiting import wait_until

BIN = Path(sys.executable).parent
ADMIN = ("tester", "tester-key-0123456789")
OTHER = ("other", "other-key-9876543210")
WEBHOOK_KEY = "test-webhook-key-0123456789abcdef"
STARTUP = 180.0
"""How long a process may take to come up: generous, as the machine may be busy."""


def reset_stream(nats_url: str, replicas: int = 1) -> None:
    """A clean stream, as the services would create it: no events from an earlier test."""

    async def reset() -> None:
        nc = await nats.connect(servers(nats_url))
        try:
            await nc.jetstream().delete_stream(subjects.STREAM)
        except NotFoundError:
            pass
        await ensure_stream(nc.jetstream(), replicas)
        await nc.close()

    asyncio.run(reset())


class _Engine:
    def __init__(self, root: Path, nats_url: str, database_url: str, **env: str):
        self.root = root
        self.data_dir = root / "data"
        self.nats_url = nats_url
        self.database_url = database_url
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "TASKENGINE_DATA_DIR": str(self.data_dir),
            "TASKENGINE_PORT": str(self.port),
            "TASKENGINE_NATS_URL": nats_url,
            "TASKENGINE_DATABASE_URL": database_url,
            "TASKENGINE_BOOTSTRAP_CLIENT": f"{ADMIN[0]}:{ADMIN[1]}:admin,{OTHER[0]}:{OTHER[1]}",
            "TASKENGINE_CALLBACK_ALLOWLIST": "127.0.0.0/8",
            "TASKENGINE_WEBHOOK_KEY": WEBHOOK_KEY,
            "PYTHONFAULTHANDLER": "1",  # a stuck service shows its stacks on SIGABRT
            **env,
        }
        self._store: EventStore | None = None

    @property
    def replicas(self) -> int:
        return int(self.env.get("TASKENGINE_NATS_REPLICAS", "1"))

    @property
    def store(self) -> EventStore:
        if self._store is None:
            self._store = EventStore(self.database_url, pool_size=2, create_tables=True)
        return self._store

    def write_workflow(self, filename: str, text: str) -> Path:
        """Puts a workflow file in the engine's workflows directory (`<data dir>/workflows`)."""
        path = self.data_dir / "workflows" / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def client(self, who: tuple[str, str] = ADMIN) -> httpx.Client:
        headers = {"client": who[0], "api-key": who[1]}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def events(self, job_id: int | None = None) -> list[Event]:
        items = []
        position = 0
        while batch := self.store.events_after(position, 5000):
            items.extend(batch)
            position = batch[-1].position
        return [
            p.event for p in items if job_id is None or getattr(p.event, "job_id", None) == job_id
        ]

    def service_errors(self, lines: int = 20) -> str:
        """The last error lines of every service log, to explain a failure."""
        report = []
        for path in sorted([*(self.data_dir / "logs").glob("*.log"), *self.root.glob("*.log")]):
            errors = [
                line
                for line in path.read_text(errors="replace").splitlines()
                if "ERROR" in line or "Error" in line or "WARNING" in line
            ]
            report += [f"--- {path.name}", *errors[-lines:]]
        return "\n".join(report)

    def close_store(self) -> None:
        if self._store:
            self._store.close()
            self._store = None


class System(_Engine):
    """`taskengine up` as a subprocess, in its own process group."""

    process: subprocess.Popen | None = None

    def start(self, timeout: float = STARTUP) -> System:
        reset_stream(self.nats_url, self.replicas)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.output = open(self.root / "up.log", "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            [str(BIN / "taskengine"), "up"],
            env=self.env,
            stdout=self.output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_until(self._alive, timeout=timeout, what="the gateway to answer")
        processes = sum(parse_replicas(self.env.get("TASKENGINE_REPLICAS", "")).values())
        wait_until(lambda: len(self.pids()) == processes, timeout=STARTUP, what="all services")
        return self

    def _alive(self) -> bool:
        if self.process and self.process.poll() is not None:
            raise AssertionError(f"taskengine up exited: {(self.root / 'up.log').read_text()}")
        try:
            return httpx.get(self.url + "/", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def pids(self) -> dict[str, int]:
        run = self.data_dir / "run"
        return {p.stem: int(p.read_text()) for p in run.glob("*.pid") if p.read_text().strip()}

    def kill(self, service: str, signum: int = signal.SIGKILL) -> int:
        pid = self.pids()[service]
        os.kill(pid, signum)
        return pid

    def wait_restarted(self, service: str, old_pid: int, timeout: float = 30.0) -> None:
        def restarted() -> bool:
            pid = self.pids().get(service)
            return bool(pid and pid != old_pid and _alive(pid))

        wait_until(restarted, timeout=timeout, what=f"{service} to be restarted")

    def stop(self) -> list[int]:
        """SIGTERM to the supervisor; returns the pids of its children still alive after it."""
        children = list(self.pids().values())
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=60)
        self.close_store()
        return [pid for pid in children if _alive(pid)]

    def log(self) -> str:
        return (self.root / "up.log").read_text()


class Services(_Engine):
    """Chosen service processes (e.g. relay + admission) without the supervisor."""

    def __init__(self, root: Path, nats_url: str, database_url: str, **env: str):
        super().__init__(root, nats_url, database_url, **env)
        self.processes: dict[str, subprocess.Popen] = {}
        self.prepared = False

    def start(self, *names: str, wait: bool = True) -> Services:
        """Starts `names` and returns once each is up (connected to the store and the bus);
        with `wait` false, at once (e.g. for a service that is to wait for PostgreSQL)."""
        if not self.prepared:
            self.prepared = True
            reset_stream(self.nats_url, self.replicas)
            self.data_dir.mkdir(parents=True, exist_ok=True)
            self.store  # noqa: B018  (creates the tables before any service starts)
        started = [self._spawn(name, name, f"{name}-test") for name in names]
        for name, offset in zip(names, started, strict=True):
            if wait:
                self._wait_started(name, name, offset)
        return self

    def start_as(self, name: str, instance: str) -> Services:
        """One more process of service `name`, as `instance` (its key here and its log name),
        e.g. a second admission controller; returns once it is up."""
        self.start()  # prepares the stream and tables on first use
        self._wait_started(name, instance, self._spawn(name, instance, instance))
        return self

    def _spawn(self, service: str, key: str, instance: str) -> int:
        """Starts a process of `service` logging to `<key>.log`; the log's size before it."""
        path = self.root / f"{key}.log"
        offset = path.stat().st_size if path.exists() else 0
        log = open(path, "ab")  # noqa: SIM115
        self.processes[key] = subprocess.Popen(
            [sys.executable, "-m", f"taskengine_{service}"],
            env={**self.env, "TASKENGINE_INSTANCE": instance},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        return offset

    def _wait_started(self, service: str, key: str, offset: int) -> None:
        # Starting a Python process takes seconds of CPU: on a loaded machine, tens of seconds.
        # Waiting for it here keeps the tests' own deadlines about what they test.
        process = self.processes[key]

        def up() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"{key} exited ({process.returncode}): {self.log(key)}")
            return f"{service} started (instance" in self.log(key)[offset:]

        wait_until(up, timeout=STARTUP, every=0.2, what=f"{key} to start")

    def stop(self, *names: str) -> None:
        for name in names or list(self.processes):
            process = self.processes.pop(name)
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def kill(self, name: str) -> None:
        process = self.processes.pop(name)
        process.kill()
        process.wait()

    def wait_exit(self, key: str, timeout: float = 60.0) -> int:
        """Waits for process `key` to exit by itself; its exit status. One that does not is
        made to dump its threads' stacks into its log (faulthandler), shown in the failure."""
        process = self.processes[key]
        try:
            wait_until(lambda: process.poll() is not None, timeout=timeout, what=f"{key} to exit")
        except AssertionError as error:
            process.send_signal(signal.SIGABRT)
            process.wait(timeout=30)
            raise AssertionError(f"{error}\n--- {key}.log:\n{self.log(key)[-20000:]}") from None
        return process.returncode

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text()

    def close(self) -> None:
        self.stop()
        self.close_store()


@contextmanager
def running_system(
    postgres_url: str,
    name: str,
    workflows: dict[str, str] | None = None,
    env: dict[str, str] | None = None,
    nats_url: str | None = None,
) -> Iterator[System]:
    """A system of its own (fresh database, own NATS) for a whole test module; `workflows`
    (file name: YAML) are in its workflows directory before it starts; `env` adds to (or
    overrides) its environment; `nats_url` names a NATS of the caller's (e.g. a cluster's
    servers, comma-separated) to use instead of its own."""
    from tests.support.servers import drop_database, fresh_database, nats_server, scratch_dir

    root = scratch_dir(f"te-{name}-")
    database_url = fresh_database(postgres_url)
    try:
        with nats_server(root, nats_url) as url:
            system = System(root, url, database_url, **(env or {}))
            for filename, text in (workflows or {}).items():
                system.write_workflow(filename, text)
            try:
                system.start()  # inside: a start that times out still stops what it started
                yield system
            finally:
                system.stop()
    finally:
        drop_database(postgres_url, database_url)
        shutil.rmtree(root, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is not alive
        return (
            "zombie" not in Path(f"/proc/{pid}/status").read_text().lower().split("state:")[1][:20]
        )
    except (OSError, IndexError):
        return True


def wait_events(engine: _Engine, predicate, timeout: float = 30.0, what: str = ""):  # type: ignore[no-untyped-def]
    """Waits until the event log satisfies `predicate(events)`; returns the events."""
    return wait_until(
        lambda: (lambda es: es if predicate(es) else None)(engine.events()),
        timeout=timeout,
        what=what,
    )


__all__ = ["ADMIN", "OTHER", "Services", "System", "time", "wait_events"]
