"""`make bench`, scheduler case: N active cron tasks all due at the same minute boundary.

Starts the services firing needs (relay, scheduler) on a fresh database, commits N
`TaskCreated` events straight to the store at least `LEAD` seconds before a minute boundary
(every-minute cron lines in a few timezones, all due at that boundary), waits until the
scheduler holds all of them, then until every run of that boundary fired, and prints figures.

Lateness is read from the event log: `TaskFired.at - fire_at` ("stamped", the instant the
scheduler took for the batch, before its commit) and the instant the bench first saw the fire
committed ("committed", polled every `POLL` seconds). The goal is every task fired with p99
lateness of at most 1 s; the bench reports whether it was met and asserts nothing.

    make bench                            # burn-down, then this
    .venv/bin/python -m tests.bench.scheduler
    BENCH_TASKS=20000 .venv/bin/python -m tests.bench.scheduler

Uses TASKENGINE_TEST_DATABASE_URL / TASKENGINE_TEST_NATS_URL when set, like the tests;
otherwise starts its own PostgreSQL and NATS. BENCH_KEEP=1 keeps the database and the logs.
"""

from __future__ import annotations

import bisect
import math
import os
import shutil
import sys
import time
from datetime import UTC, datetime
from uuid import UUID, uuid4

import psycopg
from taskengine_cli.supervisor import hide_password
from taskengine_contracts.events import TaskCreated, TaskDefinition, TaskFired, decode
from taskengine_core.dialects.scheduled.lifecycle import first_fire

from tests.support.servers import (
    drop_database,
    fresh_database,
    nats_server,
    postgres_server,
    scratch_dir,
)
from tests.support.system import Services
from tests.support.waiting import wait_until

TASKS = int(os.environ.get("BENCH_TASKS", "10000"))
LEAD = 25.0
"""Seconds at least between the first task created and the boundary they are all due at."""
CREATE_BATCH = 2000
"""Tasks per store commit while creating them."""
FIRE_TIMEOUT = 60.0
"""Seconds after the boundary the bench waits for every fire."""
POLL = 0.05
GOAL_P99 = 1.0

CRON_LINES = ("* * * * *", "*/1 * * * *", "0-59 * * * *")
TIMEZONES = ("UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata", "Asia/Kathmandu")
CLIENTS = ("bench-a", "bench-b", "bench-c", "bench-d")


def definition(n: int) -> TaskDefinition:
    return TaskDefinition(
        title=f"bench {n}",
        description="",
        schedule_kind="cron",
        schedule_expr=CRON_LINES[n % len(CRON_LINES)],
        timezone=TIMEZONES[n % len(TIMEZONES)],
        payload={"workflow": "noop", "parameters": {"n": n}},
        created_by=UUID(int=n + 1),
    )


def create_tasks(services: Services, count: int, boundary: datetime) -> None:
    """Commits `count` task creations, each at its own instant, in batches: what `created()`
    makes, with each schedule's first fire worked out once (it is the same for all)."""
    first: dict[tuple[str | None, str], datetime | None] = {}
    for start in range(0, count, CREATE_BATCH):
        events: list[TaskCreated] = []
        for n in range(start, min(count, start + CREATE_BATCH)):
            task, now = definition(n), datetime.now(UTC)
            key = (task.schedule_expr, task.timezone)
            if key not in first:
                first[key] = first_fire(task, now, now)
            if first[key] != boundary or now >= boundary:
                raise SystemExit(f"task {n} is due at {first[key]}, not at {boundary}")
            client = CLIENTS[n % len(CLIENTS)]
            events.append(
                TaskCreated(
                    id=uuid4(),
                    version=1,
                    at=now,
                    client=client,
                    definition=task,
                    next_fire_at=boundary,
                )
            )
        services.store.commit(events)


def next_boundary(lead: float) -> tuple[datetime, float]:
    """The first minute boundary at least `lead` seconds away once creating may start, and
    how long to wait before creating (tasks must be created in the minute before it)."""
    now = time.time()
    boundary = math.ceil(now / 60) * 60
    wait = 0.0
    if boundary - now < lead:
        wait, boundary = boundary - now + 0.2, boundary + 60
    return datetime.fromtimestamp(boundary, UTC), wait


def scheduler_holds(db: psycopg.Connection, count: int) -> bool:
    query = "SELECT count(*) FROM scheduler_tasks WHERE status = 'active'"
    return db.execute(query).fetchone()[0] >= count  # type: ignore[index]


def watch_fires(db: psycopg.Connection, count: int, deadline: float) -> list[tuple[float, int]]:
    """(wall clock, fires committed so far) every POLL seconds until all or the deadline."""
    seen: list[tuple[float, int]] = []
    # Only the events stored since the last look (notification ids commit in order): the
    # bench must not load the database it measures.
    query = (
        "SELECT max(notification_id), count(*) FILTER (WHERE topic = 'task.fired')"
        " FROM stored_events WHERE notification_id > %s"
    )
    position, fires = 0, 0
    while True:
        last, new = db.execute(query, (position,)).fetchone()  # type: ignore[misc]
        position, fires = last or position, fires + new
        seen.append((time.time(), fires))
        if fires >= count or time.monotonic() > deadline:
            return seen
        time.sleep(POLL)


def fired_events(db: psycopg.Connection) -> list[TaskFired]:
    rows = db.execute("SELECT state FROM stored_events WHERE topic = 'task.fired'").fetchall()
    return [event for (state,) in rows if isinstance(event := decode(bytes(state)), TaskFired)]


def quantile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def committed_lateness(seen: list[tuple[float, int]], boundary: float, q: float) -> float:
    """Seconds after the boundary until the first poll that saw a fraction `q` committed."""
    counts = [fires for _, fires in seen]
    index = bisect.bisect_left(counts, math.ceil(q * TASKS))
    return seen[index][0] - boundary if index < len(seen) else math.inf


def report(fires: list[TaskFired], seen: list[tuple[float, int]], boundary: datetime) -> None:
    late = sorted((f.at - f.fire_at).total_seconds() for f in fires if f.fire_at == boundary)
    print(f"  fired              {len(late):8d} of {TASKS}")
    if not late:
        print("  goal (all fired, p99 <= 1 s): NOT MET")
        return
    stamped = [quantile(late, q) for q in (0.5, 0.9, 0.99)] + [late[-1]]
    committed = [committed_lateness(seen, boundary.timestamp(), q) for q in (0.5, 0.9, 0.99, 1)]
    print(f"  lateness, stamped   {milliseconds(stamped)}")
    print(f"  lateness, committed {milliseconds(committed)}")
    took = max(committed[3] - late[0], 1e-3)
    print(f"  first fire         {late[0] * 1000:8.0f} ms after due")
    print(f"  fires per second   {len(late) / took:8.0f}   (first fire to the last committed)")
    met = len(late) == TASKS and max(stamped[2], committed[2]) <= GOAL_P99
    print(f"  goal (all fired, p99 <= 1 s): {'met' if met else 'NOT MET'}")


def milliseconds(values: list[float]) -> str:
    names = ("p50", "p90", "p99", "max")
    return "  ".join(f"{n} {v * 1000:7.0f} ms" for n, v in zip(names, values, strict=True))


def run(services: Services, database_url: str) -> None:
    services.start("relay", "scheduler")
    wait_until(
        lambda: "scheduler: leading" in services.log("scheduler"),
        timeout=60,
        what="the scheduler to lead",
    )
    boundary, wait = next_boundary(LEAD)
    due = f"{boundary:%H:%M:%S} UTC"
    print(f"scheduler: {TASKS} cron tasks due at {due}, {os.cpu_count()} cores", flush=True)
    time.sleep(wait)
    started = time.time()
    create_tasks(services, TASKS, boundary)
    print(f"  created in         {time.time() - started:8.2f} s")
    with psycopg.connect(database_url, autocommit=True) as db:
        wait_until(
            lambda: scheduler_holds(db, TASKS), timeout=30, every=0.2, what="every task held"
        )
        ahead = boundary.timestamp() - time.time()
        print(f"  held by scheduler  {time.time() - started:8.2f} s   ({ahead:.1f} s before due)")
        time.sleep(max(0.0, ahead - 0.5))
        deadline = time.monotonic() + (boundary.timestamp() - time.time()) + FIRE_TIMEOUT
        seen = watch_fires(db, TASKS, deadline)
        report(fired_events(db), seen, boundary)


def main() -> int:
    root = scratch_dir("te-bench-scheduler-")
    keep = bool(os.environ.get("BENCH_KEEP"))
    try:
        with postgres_server() as server_url:
            database_url = fresh_database(server_url)
            try:
                with nats_server(root) as nats_url:
                    services = Services(root, nats_url, database_url)
                    try:
                        run(services, database_url)
                    finally:
                        services.close()
            finally:
                if keep:
                    print(f"  kept: database {hide_password(database_url)}, logs in {root}")
                else:
                    drop_database(server_url, database_url)
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
