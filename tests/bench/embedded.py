"""The whole embedded system as `make up` starts it, for the benchmarks: `taskengine up` on a
fresh data dir with its own NATS and PostgreSQL, an admin client, and the figures' helpers."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import httpx
from taskengine_embedded import free_port

from tests.support.servers import scratch_dir

CLIENT, KEY = "bench", "bench-key-0123456789abcdef"
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "32"))


class Connection:
    """A minimal HTTP/1.1 keep-alive client: the load generator must not eat the cores."""

    def __init__(self, port: int):
        self.port = port

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nclient: {CLIENT}\r\napi-key: {KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        self.writer.write(head.encode() + body)
        status_line = await self.reader.readline()
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
        return int(status_line.split()[1]), await self.reader.readexactly(length)


@dataclass
class Embedded:
    root: Path
    port: int
    supervisor: int
    """The pid of `taskengine up` (every other process is its descendant)."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def headers(self) -> dict[str, str]:
        return {"client": CLIENT, "api-key": KEY}

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def endpoints(self) -> dict:
        return json.loads((self.data_dir / "run" / "endpoints.json").read_text())

    @property
    def env(self) -> dict[str, str]:
        """What a `taskengine` command needs to reach this system's store."""
        return {**os.environ, "TASKENGINE_DATABASE_URL": self.endpoints["database_url"]}

    def setting(self, name: str, value: object) -> None:
        httpx.post(
            self.url + "/settings", json={"name": name, "setting": value}, headers=self.headers
        ).raise_for_status()


@contextmanager
def embedded(prefix: str, **settings: str) -> Iterator[Embedded]:
    """Starts the system (TASKENGINE_* from `settings`, nothing from the caller's environment)
    and stops it after; BENCH_KEEP=1 leaves it running."""
    root = scratch_dir(prefix)
    port = free_port(18080)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TASKENGINE_")},
        "TASKENGINE_DATA_DIR": str(root / "data"),
        "TASKENGINE_PORT": str(port),
        "TASKENGINE_BOOTSTRAP_CLIENT": f"{CLIENT}:{KEY}:admin",
        "TASKENGINE_LOG_LEVEL": "WARNING",
        **settings,
    }
    taskengine = Path(sys.executable).parent / "taskengine"
    up = subprocess.Popen([str(taskengine), "up"], env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    system = Embedded(root, port, up.pid)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(system.url + "/", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or up.poll() is not None:
                raise SystemExit("the system did not start")
            time.sleep(0.2)
        yield system
    finally:
        if os.environ.get("BENCH_KEEP"):
            print(f"  kept running: data in {root / 'data'}, supervisor pid {up.pid}")
        else:
            os.killpg(up.pid, signal.SIGTERM)
            up.wait(timeout=60)
            shutil.rmtree(root, ignore_errors=True)


def percentiles(values: list[float]) -> str:
    """`p50 … ms   p99 … ms` of durations in seconds."""
    p50, p99 = p50_p99(values, width=8)
    return f"p50 {p50} ms   p99 {p99} ms"


def p50_p99(values: list[float], width: int = 6) -> tuple[str, str]:
    """The median and 99th percentile of durations in seconds, as milliseconds."""
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return f"{statistics.median(ordered) * 1000:{width}.1f}", f"{p99 * 1000:{width}.1f}"


def wait_for_completion(db, jobs: set[int], deadline: float) -> dict[int, tuple[float, float]]:  # type: ignore[no-untyped-def]
    """job id -> (started at, completed at) from the event log, once every job completed."""
    while True:
        done = db.execute(
            "SELECT count(*) FROM rm_jobs WHERE state = 'succeeded' AND job_id = ANY(%s)",
            (list(jobs),),
        ).fetchone()[0]
        if done >= len(jobs) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    times: dict[int, list[float]] = {}
    rows = db.execute(
        "SELECT topic, state FROM stored_events WHERE topic IN ('job.started', 'job.succeeded')"
    ).fetchall()
    for topic, state in rows:
        event = json.loads(bytes(state))
        if event["job_id"] in jobs:
            at = datetime.fromisoformat(event["at"].replace("Z", "+00:00")).timestamp()
            times.setdefault(event["job_id"], [0.0, 0.0])[topic == "job.succeeded"] = at
    missing = sorted(j for j in jobs if not times.get(j, [0, 0])[1])
    if missing:
        raise SystemExit(f"{len(missing)} jobs did not complete in time, e.g. {missing[:10]}")
    return {job: (t[0], t[1]) for job, t in times.items()}
