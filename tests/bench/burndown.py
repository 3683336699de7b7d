"""`make bench`: the whole embedded system on one machine, one table per mode.

Starts `taskengine up` on a fresh data dir with its own NATS and PostgreSQL (the embedded
default), then, in one sitting:

- idle: PSS, RSS and CPU of every process of the quiet system (`idle`);
- burst: raises `max_jobs` so admission does not cap the run, submits N noop jobs over
  keep-alive connections, and reads submit/start/complete times back from the event store;
- replay: `taskengine replay` of every read model from position 0, in events/s;
- paced: 200 and then 500 jobs/s for 10 s each, submit ack and enqueue → start (`paced`);
- callbacks: deliveries/s to a fast loopback receiver, alone and beside a slow one, with one
  callback URL a job and with ten (the notifier's own rate) (`callbacks`; on its own:
  `python -m tests.bench.callbacks`);
- lists: a list query (`GET /jobs`) alone and right after a write: what waiting for the read
  models to hold the write (`TASKENGINE_READ_WAIT`) costs a list.

Where the time goes: each job's lifecycle events are read back (submitted → admitted →
started → succeeded, by their `at`), with each component's CPU. All of the above runs as
deployed, hop tracing off; then a second system with hop tracing on (`TASKENGINE_HOP_TRACE`,
a debug setting that costs the burst ~6%) runs the burst and paced 200/s again and prints
every consumed event's written → published → received → handled instants, per consumer and
topic (`taskengine_runtime.hops`).

    make bench                      # 2,000 jobs in the burst
    BENCH_JOBS=10000 make bench     # more
    BENCH_READ_WAIT=0 make bench    # lists without waiting for the read models (they miss)
    BENCH_HOPS=0 make bench         # without the traced second system
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psycopg

from tests.bench import breakdown, callbacks, idle, paced
from tests.bench.embedded import (
    CONNECTIONS,
    Connection,
    Embedded,
    embedded,
    percentiles,
    wait_for_completion,
)

JOBS = int(os.environ.get("BENCH_JOBS", "2000"))
LIST_ROUNDS = int(os.environ.get("BENCH_LIST_ROUNDS", "300"))
HOPS = os.environ.get("BENCH_HOPS", "1") != "0"


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


def main() -> int:
    settings = {
        "TASKENGINE_READ_WAIT": os.environ.get("BENCH_READ_WAIT", "2"),
        "TASKENGINE_CALLBACK_ALLOWLIST": "127.0.0.0/8",
    }
    machine()
    with embedded("te-bench-", **settings, TASKENGINE_HOP_TRACE="false") as system:
        idle.report(system)
        warm_up(system)
        burst(system, traced=False)
        replay(system)
        paced.report(system, hops=False)
        callbacks.report(system)
        list_after_write(system)
    if HOPS:
        with embedded("te-bench-traced-", **settings, TASKENGINE_HOP_TRACE="true") as system:
            print("where the time goes: the burst and 200/s again, hop tracing on")
            warm_up(system)
            burst(system, traced=True)
            paced.report(system, hops=True, rates=paced.RATES[:1])
    return 0


def warm_up(system: Embedded) -> None:
    """Admission not to cap the burst, then connections, caches and consumers warmed."""
    system.setting("max_jobs", max(JOBS, 10_000))
    asyncio.run(submit_all(system.port, 50))
    time.sleep(1)


def machine() -> None:
    """What this machine is, and how fast it runs Python now: these machines differ from one
    session to the next, and one's speed drifts within an hour, so figures compare only
    within one sitting (the peers' harness measured in it too)."""
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "unknown",
    )
    started, total = time.perf_counter(), 0
    for n in range(10_000_000):
        total += n
    seconds = time.perf_counter() - started
    print(
        f"machine: {os.cpu_count()} cores, {model}; 10M additions in a Python function:"
        f" {seconds:.2f} s"
    )


def burst(system: Embedded, traced: bool) -> None:
    tracing = "on" if traced else "off"
    print(
        f"burst: {JOBS} noop jobs, {CONNECTIONS} connections, 2 cores, hop tracing {tracing}",
        flush=True,
    )
    cpu_before = idle.cpu_by_name(system.supervisor)
    started = time.time()
    submitted = asyncio.run(submit_all(system.port, JOBS))
    submit_seconds = time.time() - started
    with psycopg.connect(system.endpoints["database_url"]) as db:
        times = wait_for_completion(db, set(submitted), deadline=time.monotonic() + 600)
        finished = max(done for _, done in times.values())
        elapsed = finished - started
        rate = JOBS / submit_seconds
        print(f"  submitted in      {submit_seconds:8.2f} s   ({rate:8.0f} jobs/s)")
        print(f"  end to end        {elapsed:8.2f} s   ({JOBS / elapsed:8.0f} jobs/s)")
        print(f"  submit -> ack      {percentiles([a - s for s, a in submitted.values()])}")
        print(f"  submit -> start    {percentiles([times[j][0] - submitted[j][0] for j in times])}")
        print(f"  submit -> complete {percentiles([times[j][1] - submitted[j][0] for j in times])}")
        breakdown.cpu(cpu_before, idle.cpu_by_name(system.supervisor), elapsed, JOBS)
        breakdown.chain(db, set(submitted))
    if traced:
        breakdown.hops(system.data_dir / "run", since=started)


def replay(system: Embedded) -> None:
    """`taskengine replay`: every read model rebuilt from position 0 (and compared)."""
    taskengine = Path(sys.executable).parent / "taskengine"
    started = time.monotonic()
    done = subprocess.run(
        [str(taskengine), "replay"], env=system.env, capture_output=True, text=True, check=False
    )
    seconds = time.monotonic() - started
    lines = {line.split()[0]: line.split() for line in done.stdout.splitlines() if line.strip()}
    position, rebuilt = int(lines["position"][1]), float(lines["rebuilt"][1])
    took = float(lines["took"][1])
    verdict = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-200:]
    print("replay: every read model rebuilt from position 0 (`taskengine replay`), then compared")
    print(f"  {position} events rebuilt in {rebuilt:6.2f} s   ({position / rebuilt:8.0f} events/s)")
    print(f"  with both hashes {took:.2f} s ({verdict}); the whole command {seconds:.2f} s")


def list_after_write(system: Embedded, rounds: int = LIST_ROUNDS) -> None:
    """Prints the latency of `GET /jobs` alone and right after a write acknowledged (a
    scheduled job's submission): the second waits for the projector to hold that write."""
    later = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S.000")
    alone: list[float] = []
    after: list[float] = []
    stale = missed = 0
    with httpx.Client(base_url=system.url, headers=system.headers, timeout=30) as http:
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


if __name__ == "__main__":
    sys.exit(main())
