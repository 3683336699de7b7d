"""`make bench`: burn down N noop jobs through the whole embedded system and print figures.

Starts `taskengine up` on a fresh data dir with its own NATS and PostgreSQL (the embedded
default), raises `max_jobs` so admission does not cap the run, submits N jobs over keep-alive
connections, and reads submit/start/complete times back from the event store. Then it times
a list query (`GET /jobs`) alone and right after a write: what waiting for the read models to
hold the write (`TASKENGINE_READ_WAIT`) costs a list.

Where the time goes: each job's lifecycle events are read back (submitted → admitted →
started → succeeded, by their `at`), and with hop tracing on (`TASKENGINE_HOP_TRACE`, the
default here) every consumed event's written → published → received → handled instants, per
consumer and topic (`taskengine_runtime.hops`).

    make bench                      # 2,000 jobs
    BENCH_JOBS=10000 make bench     # more
    BENCH_READ_WAIT=0 make bench    # lists without waiting for the read models (they miss)
    BENCH_HOPS=0 make bench         # without hop tracing (nothing stamped or written)
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psycopg
from taskengine_embedded import free_port

from tests.support.servers import scratch_dir

JOBS = int(os.environ.get("BENCH_JOBS", "2000"))
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "32"))
LIST_ROUNDS = int(os.environ.get("BENCH_LIST_ROUNDS", "300"))
HOPS = os.environ.get("BENCH_HOPS", "1") != "0"
CLIENT, KEY = "bench", "bench-key-0123456789abcdef"
CHAIN = ("job.submitted", "job.admitted", "job.started", "job.succeeded")


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


async def submit_all(port: int, count: int) -> dict[int, tuple[float, float]]:
    """Submits `count` noop jobs; returns job id -> (sent at, acknowledged at), wall clock."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for n in range(count):
        queue.put_nowait(n)
    results: dict[int, tuple[float, float]] = {}

    async def worker() -> None:
        connection = Connection(port)
        await connection.open()
        while not queue.empty():
            n = queue.get_nowait()
            body = json.dumps({"job": {"workflow": "noop"}, "parameters": {"n": n}}).encode()
            sent = time.time()
            status, payload = await connection.post("/job", body)
            if status != 200:
                raise RuntimeError(f"submit failed: {status} {payload[:200]!r}")
            results[json.loads(payload)["id"]] = (sent, time.time())
        connection.writer.close()

    await asyncio.gather(*(worker() for _ in range(CONNECTIONS)))
    return results


def percentiles(values: list[float]) -> str:
    ordered = sorted(values)
    p50 = statistics.median(ordered) * 1000
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000
    return f"p50 {p50:8.1f} ms   p99 {p99:8.1f} ms"


def main() -> int:
    root = scratch_dir("te-bench-")
    port = free_port(18080)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TASKENGINE_")},
        "TASKENGINE_DATA_DIR": str(root / "data"),
        "TASKENGINE_PORT": str(port),
        "TASKENGINE_BOOTSTRAP_CLIENT": f"{CLIENT}:{KEY}:admin",
        "TASKENGINE_LOG_LEVEL": "WARNING",
        "TASKENGINE_READ_WAIT": os.environ.get("BENCH_READ_WAIT", "2"),
        "TASKENGINE_HOP_TRACE": "true" if HOPS else "false",
    }
    taskengine = Path(sys.executable).parent / "taskengine"
    up = subprocess.Popen([str(taskengine), "up"], env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(url + "/", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or up.poll() is not None:
                raise SystemExit("the system did not start")
            time.sleep(0.2)
        endpoints = json.loads((root / "data" / "run" / "endpoints.json").read_text())
        headers = {"client": CLIENT, "api-key": KEY}
        httpx.post(url + "/settings", json={"name": "max_jobs", "setting": JOBS}, headers=headers)
        asyncio.run(submit_all(port, 50))  # warm-up: connections, caches, consumers
        time.sleep(1)

        tracing = "on" if HOPS else "off"
        print(
            f"burn-down: {JOBS} noop jobs, {CONNECTIONS} connections, 2 cores,"
            f" hop tracing {tracing}",
            flush=True,
        )
        started = time.time()
        submitted = asyncio.run(submit_all(port, JOBS))
        submit_seconds = time.time() - started
        with psycopg.connect(endpoints["database_url"]) as db:
            times = wait_for_completion(db, set(submitted), deadline=time.monotonic() + 600)
        finished = max(done for _, done in times.values())
        elapsed = finished - started
        print(
            f"  submitted in      {submit_seconds:8.2f} s   ({JOBS / submit_seconds:8.0f} jobs/s)"
        )
        print(f"  end to end        {elapsed:8.2f} s   ({JOBS / elapsed:8.0f} jobs/s)")
        print(f"  submit -> ack      {percentiles([a - s for s, a in submitted.values()])}")
        print(f"  submit -> start    {percentiles([times[j][0] - submitted[j][0] for j in times])}")
        print(f"  submit -> complete {percentiles([times[j][1] - submitted[j][0] for j in times])}")
        with psycopg.connect(endpoints["database_url"]) as db:
            chain_breakdown(db, set(submitted))
        if HOPS:
            hop_breakdown(root / "data" / "run", since=started)
        list_after_write(url, headers)
        return 0
    finally:
        if os.environ.get("BENCH_KEEP"):
            print(f"  kept running: data in {root / 'data'}, supervisor pid {up.pid}")
        else:
            os.killpg(up.pid, signal.SIGTERM)
            up.wait(timeout=60)
            shutil.rmtree(root, ignore_errors=True)


def chain_breakdown(db, jobs: set[int]) -> None:  # type: ignore[no-untyped-def]
    """Each step of a job's life, from the `at` of its lifecycle events: the writer's instant
    of one to the writer's instant of the next (a commit, a relay hop, a consumer's turn)."""
    instants: dict[int, dict[str, float]] = {}
    rows = db.execute(
        "SELECT topic, state FROM stored_events WHERE topic = ANY(%s)", (list(CHAIN),)
    ).fetchall()
    for topic, state in rows:
        event = json.loads(bytes(state))
        if event["job_id"] in jobs:
            at = datetime.fromisoformat(event["at"].replace("Z", "+00:00")).timestamp()
            instants.setdefault(event["job_id"], {})[topic] = at
    print("per job, between its lifecycle events (writer's instants):")
    for earlier, later in zip(CHAIN, CHAIN[1:], strict=False):
        gaps = [t[later] - t[earlier] for t in instants.values() if earlier in t and later in t]
        if gaps:
            print(f"  {earlier[4:]:>9} -> {later[4:]:<9} {percentiles(gaps)}")


def hop_breakdown(run: Path, since: float) -> None:
    """Per consumer and topic, from the hop traces of the events written since `since`:
    written -> published (the writer's commit and the relay), published -> received (the
    bus and the consumer's fetch), received -> handled (the consumer's work and commit)."""
    hops: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    for path in sorted(run.glob("hops-*.csv")):
        with path.open() as file:
            for row in csv.DictReader(file):
                if not row["published"] or float(row["written"]) < since:
                    continue
                written, published = float(row["written"]), float(row["published"])
                received, handled = float(row["received"]), float(row["handled"])
                hops.setdefault((row["consumer"], row["topic"]), []).append(
                    (published - written, received - published, handled - received)
                )
    print("per hop, p50 / p99 ms (written -> published -> received -> handled):")
    for (consumer, topic), values in sorted(hops.items(), key=lambda kv: -len(kv[1])):
        if len(values) < 100:
            continue
        columns = ["   ".join(_p50_p99([v[n] for v in values])) for n in range(3)]
        print(f"  {consumer:<10} {topic:<15} {len(values):>6}   " + "  |  ".join(columns))


def _p50_p99(values: list[float]) -> tuple[str, str]:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return f"{statistics.median(ordered) * 1000:6.1f}", f"{p99 * 1000:6.1f}"


def list_after_write(url: str, headers: dict[str, str], rounds: int = LIST_ROUNDS) -> None:
    """Prints the latency of `GET /jobs` alone and right after a write acknowledged (a
    scheduled job's submission): the second waits for the projector to hold that write."""
    later = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S.000")
    alone: list[float] = []
    after: list[float] = []
    stale = missed = 0
    with httpx.Client(base_url=url, headers=headers, timeout=30) as http:
        for _ in range(rounds):
            started = time.perf_counter()
            http.get("/jobs", params={"limit": 10}).raise_for_status()
            alone.append(time.perf_counter() - started)
        for _ in range(rounds):
            body = {"job": {"workflow": "noop"}, "run_at": later}
            job = http.post("/job", json=body).raise_for_status().json()["id"]
            started = time.perf_counter()
            response = http.get("/jobs", params={"limit": 10, "job_ids": job}).raise_for_status()
            after.append(time.perf_counter() - started)
            stale += response.headers.get("X-Taskengine-Stale") == "true"
            missed += [row["id"] for row in response.json()] != [job]
    print(f"list queries: {rounds} each, one at a time")
    print(f"  GET /jobs alone       {percentiles(alone)}")
    print(f"  GET /jobs after write {percentiles(after)}   ({missed} missed, {stale} stale)")


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


if __name__ == "__main__":
    sys.exit(main())
