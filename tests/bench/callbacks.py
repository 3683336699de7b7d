"""`make bench`, callbacks: how fast the notifier delivers to a fast loopback receiver, alone
and with a slow receiver (answering after 5 s) taking callbacks at the same time. Each noop
job has one callback URL and gets two callbacks (its start and its end); the slow receiver
listens on another port (a receiver is a scheme, host and port: each has its own lane).
Prints deliveries/s from the first delivery to the last, and how long after the last job
ended its last callback arrived (a backlog shows there). Target: ≥ 2,000 deliveries/s,
within 10% of that beside a slow receiver.

With one URL a job, deliveries come no faster than twice the rate jobs run at: once the
notifier keeps up (its last callback close after the last job), those rows measure the
engine's job rate: 3,000 jobs, 6,000 deliveries a row (with 1,000 jobs a row lasted ~0.6 s,
and the two rows' ratio swung from -12% to +1% between sittings). The rows `URLS URLs a job`
give each of `URL_JOBS` jobs that many callback URLs on the fast receiver (each its own line:
a job's deliveries to one URL go in order), so deliveries come faster than the notifier can
send them and the rate is the notifier's own: 10,000 deliveries a row, ~2-4 s of sending
(with 2,000, a row lasted ~1 s and swung by a fifth between runs).

On its own, on a fresh embedded system: `.venv/bin/python -m tests.bench.callbacks`
(`BENCH_PER_HOST=8` there sets `TASKENGINE_OUTBOUND_PER_HOST`, to compare lane widths)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time

import httpx
import psycopg
from taskengine_embedded import free_port

from tests.bench.embedded import CONNECTIONS, Connection, Embedded, embedded, wait_for_completion

JOBS = int(os.environ.get("BENCH_CALLBACK_JOBS", "3000"))
SLOW_JOBS = 50
URLS = 10
URL_JOBS = 500


async def submit(port: int, urls: list[str], count: int) -> set[int]:
    queue: asyncio.Queue[int] = asyncio.Queue()
    for n in range(count):
        queue.put_nowait(n)
    jobs: set[int] = set()

    async def worker() -> None:
        connection = Connection(port)
        await connection.open()
        while not queue.empty():
            n = queue.get_nowait()
            body = {"job": {"workflow": "noop"}, "parameters": {"n": n, "rest_endpoints": urls}}
            status, payload = await connection.post("/job", json.dumps(body).encode())
            if status != 200:
                raise RuntimeError(f"submit failed: {status} {payload[:200]!r}")
            jobs.add(json.loads(payload)["id"])
        connection.writer.close()

    await asyncio.gather(*(worker() for _ in range(CONNECTIONS)))
    return jobs


def report(system: Embedded) -> None:
    port, slow_port = free_port(19090), free_port(19190)
    receiver = subprocess.Popen(
        [sys.executable, "-m", "tests.bench.receiver", str(port), str(slow_port)]
    )
    try:
        base, slow_base = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{slow_port}"
        _wait_listening(base)
        print(f"callbacks: {JOBS} noop jobs, one callback URL each (2 callbacks a job), loopback")
        rows = (
            ("alone", False, 1, JOBS),
            (f"  {URLS} URLs a job", False, URLS, URL_JOBS),
            ("beside a slow receiver", True, 1, JOBS),
            (f"  {URLS} URLs a job", True, URLS, URL_JOBS),
        )
        for n, (label, slow, urls, count) in enumerate(rows):
            name = f"fast{n}"
            if slow and urls == 1:  # it stays busy for both rows beside it (~15 s)
                asyncio.run(submit(system.port, [f"{slow_base}/slow"], SLOW_JOBS))
            endpoints = [f"{base}/{name}/{u}" for u in range(urls)]
            jobs = asyncio.run(submit(system.port, endpoints, count))
            with psycopg.connect(system.endpoints["database_url"]) as db:
                ended = wait_for_completion(db, jobs, deadline=time.monotonic() + 300)
            last_end = max(done for _, done in ended.values())
            counts = _wait_count(base, name, 2 * urls * count, timeout=300)
            span = counts["last"] - counts["first"]
            rate = (counts["n"] - 1) / span if span > 0 else float("inf")
            behind = counts["last"] - last_end
            print(
                f"  {label:<24} {counts['n']:6d} delivered  {rate:8.0f} /s"
                f"   last {behind:6.2f} s after the last job ended"
            )
    finally:
        receiver.terminate()
        receiver.wait(timeout=10)


def _wait_listening(base: str) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            httpx.get(f"{base}/count/none", timeout=1)
            return
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _wait_count(base: str, name: str, expected: int, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        counts = httpx.get(f"{base}/count/{name}", timeout=5).json()
        if counts["n"] >= expected or time.monotonic() > deadline:
            return counts
        time.sleep(0.2)


def main() -> int:
    settings = {"TASKENGINE_CALLBACK_ALLOWLIST": "127.0.0.0/8"}
    if per_host := os.environ.get("BENCH_PER_HOST"):
        settings["TASKENGINE_OUTBOUND_PER_HOST"] = per_host
    with embedded("te-bench-callbacks-", **settings) as system:
        system.setting("max_jobs", 10_000)
        report(system)
    return 0


if __name__ == "__main__":
    sys.exit(main())
