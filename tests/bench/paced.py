"""`make bench`, paced: jobs submitted at a steady rate (200/s, then 500/s, `SECONDS` each),
each at its own instant whether or not earlier ones were answered. Prints the submit ack and
the enqueue → start latency (the job's `JobStarted.at`), both from the instant the generator
sent the job: as the peers' harness stamps its enqueues, after its timer woke and before
anything the system could hold it up with (no coordinated omission: a job that waited for a
free connection counts from before the wait). How late the generator's own timer woke past
each job's due instant (asyncio sleeps to the millisecond, on the same two cores) is printed
beside them, not counted.
Targets at 200/s: ack p50 ≤ 3 ms, p99 ≤ 15 ms; enqueue → start p50 ≤ 5 ms, p99 ≤ 25 ms.
Each rate's CPU per job by component follows its latencies.

On its own, on a fresh embedded system: `python -m tests.bench.paced` (`BENCH_RATES=200`,
`BENCH_PACED_SECONDS`, `BENCH_HOPS=0`, and `BENCH_TASKENGINE_<SETTING>=<value>` to run the
system with `TASKENGINE_<SETTING>`: the embedded system takes nothing from the caller's
environment)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

import psycopg

from tests.bench import breakdown, idle
from tests.bench.embedded import (
    Connection,
    Embedded,
    embedded,
    percentiles,
    wait_for_completion,
)

RATES = tuple(int(r) for r in os.environ.get("BENCH_RATES", "200,500").split(","))
SECONDS = float(os.environ.get("BENCH_PACED_SECONDS", "10"))
POOL = 64
"""Keep-alive connections: enough that a due job never waits for a free one at these rates."""


async def submit_paced(
    port: int, rate: int, seconds: float
) -> dict[int, tuple[float, float, float]]:
    """job id -> (due at, sent at, acknowledged at), wall clock."""
    pool: asyncio.Queue[Connection] = asyncio.Queue()
    for _ in range(POOL):
        connection = Connection(port)
        await connection.open()
        pool.put_nowait(connection)
    results: dict[int, tuple[float, float, float]] = {}

    async def send(n: int, due: float) -> None:
        sent = time.time()
        connection = await pool.get()
        try:
            body = json.dumps({"job": {"workflow": "noop"}, "parameters": {"n": n}}).encode()
            status, payload = await connection.post("/job", body)
            if status != 200:
                raise RuntimeError(f"submit failed: {status} {payload[:200]!r}")
            results[json.loads(payload)["id"]] = (due, sent, time.time())
        finally:
            pool.put_nowait(connection)

    count = int(rate * seconds)
    start = time.time() + 0.2
    sends = []
    for n in range(count):
        due = start + n / rate
        await asyncio.sleep(max(0.0, due - time.time()))
        sends.append(asyncio.create_task(send(n, due)))
    await asyncio.gather(*sends)
    while not pool.empty():
        pool.get_nowait().writer.close()
    return results


def report(system: Embedded, hops: bool, rates: tuple[int, ...] = RATES) -> None:
    tracing = "on" if hops else "off"
    print(
        f"paced: noop jobs at a steady rate for {SECONDS:.0f} s each, {POOL} connections,"
        f" hop tracing {tracing}"
    )
    for rate in rates:
        cpu_before, started = idle.cpu_by_name(system.supervisor), time.time()
        submitted = asyncio.run(submit_paced(system.port, rate, SECONDS))
        with psycopg.connect(system.endpoints["database_url"]) as db:
            times = wait_for_completion(db, set(submitted), deadline=time.monotonic() + 300)
            cpu_after, elapsed = idle.cpu_by_name(system.supervisor), time.time() - started
            acks = [ack - sent for _, sent, ack in submitted.values()]
            starts = [times[job][0] - submitted[job][1] for job in times]
            late = [sent - due for due, sent, _ in submitted.values()]
            print(f"  {rate:4d}/s  submit -> ack     {percentiles(acks)}")
            print(f"  {rate:4d}/s  enqueue -> start  {percentiles(starts)}")
            print(f"  {rate:4d}/s  (generator late   {percentiles(late)}, not counted)")
            breakdown.cpu(cpu_before, cpu_after, elapsed, len(submitted))
            breakdown.chain(db, set(submitted))
        if hops:
            breakdown.hops(system.data_dir / "run", since=started)


def main() -> int:
    hops = os.environ.get("BENCH_HOPS", "1") != "0"
    settings = {"TASKENGINE_HOP_TRACE": "true" if hops else "false"}
    # A/B of a setting: BENCH_TASKENGINE_X=v runs the system with TASKENGINE_X=v.
    given = {k.removeprefix("BENCH_"): v for k, v in os.environ.items()}
    settings |= {k: v for k, v in given.items() if k.startswith("TASKENGINE_")}
    with embedded("te-bench-paced-", **settings) as system:
        system.setting("max_jobs", 10_000)
        asyncio.run(submit_paced(system.port, 50, 1.0))  # warm-up: connections, consumers
        time.sleep(1)
        report(system, hops)
    return 0


if __name__ == "__main__":
    sys.exit(main())
