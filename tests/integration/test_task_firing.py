"""Scheduled tasks fired by the real scheduler against real NATS and PostgreSQL: downtime fires
once, two schedulers never fire a run twice (leader killed with SIGKILL mid-run), and even two
firers racing on the same due rows without the leader lock fire each run once."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

from taskengine_contracts.events import TaskCreated, TaskDefinition, TaskFired, TaskPaused
from taskengine_core.dialects.scheduled.runs import run_id
from taskengine_scheduler.tasks import TaskFiring, task_statements
from taskengine_store.store import Position

from tests.support.waiting import wait_until

LEADING = "scheduler: leading"
STANDBY = "scheduler: standby, waiting for the leader lock"


def definition(expr: str, **fields) -> TaskDefinition:  # type: ignore[no-untyped-def]
    return TaskDefinition(
        title="t",
        description="",
        schedule_kind="cron",
        schedule_expr=expr,
        payload={"workflow": "noop"},
        created_by=UUID(int=7),
        **fields,
    )


def task(expr: str, next_fire_at: datetime, at: datetime | None = None) -> TaskCreated:
    return TaskCreated(
        id=uuid4(),
        version=1,
        at=at or datetime.now(UTC),
        client="alice",
        definition=definition(expr),
        next_fire_at=next_fire_at,
    )


def fired(services) -> list[TaskFired]:  # type: ignore[no-untyped-def]
    return [e for e in services.events() if isinstance(e, TaskFired)]


def test_runs_missed_while_no_scheduler_ran_fire_once_on_recovery(services):
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    missed_since = now - timedelta(minutes=10)  # every minute since then was missed
    created = task("* * * * *", missed_since, at=missed_since - timedelta(seconds=30))
    services.store.commit([created])
    services.start("relay", "scheduler")

    [fire] = wait_until(lambda: fired(services) or None, what="the missed run to fire")
    assert fire.trigger == "schedule" and fire.fire_at == missed_since
    assert fire.run_id == run_id(created.id, missed_since)
    assert fire.missed >= 10  # the minutes up to now, folded into this one run
    assert fire.next_fire_at is not None and fire.next_fire_at > fire.at
    assert fire.next_fire_at.second == 0
    time.sleep(1.5)  # nothing else fires before the next minute
    if datetime.now(UTC) < fire.next_fire_at:
        assert len(fired(services)) == 1


def test_two_schedulers_fire_every_run_once_and_the_standby_takes_over(services):
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=2)
    tasks = [task("* * * * * *", start) for _ in range(20)]
    services.store.commit(tasks)
    services.start("relay")
    services.start_as("scheduler", "scheduler-a")
    wait_until(lambda: LEADING in services.log("scheduler-a"), what="scheduler-a to lead")
    services.start_as("scheduler", "scheduler-b")
    wait_until(lambda: STANDBY in services.log("scheduler-b"), what="scheduler-b to wait")

    wait_until(lambda: len(fired(services)) >= 60, timeout=30, what="three rounds of fires")
    services.kill("scheduler-a")
    killed_at = datetime.now(UTC)
    wait_until(lambda: LEADING in services.log("scheduler-b"), what="the takeover")
    wait_until(
        lambda: sum(f.at > killed_at for f in fired(services)) >= 60,
        timeout=30,
        what="fires by the new leader",
    )
    services.stop("scheduler-b")

    fires = fired(services)
    per_run = Counter((f.id, f.fire_at) for f in fires)
    assert max(per_run.values()) == 1, [k for k, n in per_run.items() if n > 1][:5]
    assert len({f.run_id for f in fires}) == len(fires)
    for created in tasks:  # each task's fires are strictly increasing, each a whole second
        moments = [f.fire_at for f in fires if f.id == created.id]
        assert moments == sorted(set(moments)) and all(m.microsecond == 0 for m in moments)
    assert LEADING not in services.log("scheduler-b").split(STANDBY)[0]


class Calls:
    """What TaskFiring needs of the runtime, around a store."""

    def __init__(self, store):  # type: ignore[no-untyped-def]
        self.store = store

    async def call(self, fn, *args):  # type: ignore[no-untyped-def]
        return await asyncio.to_thread(fn, *args)


def test_a_batch_planned_ahead_fires_at_its_instant_without_a_task_paused_meanwhile(services):
    """The next tick's runs are read and planned a tick ahead, then committed once it comes,
    stamped with its instant; a task paused in between is not fired (its version moved)."""
    instant = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=2)
    tasks = [task("* * * * * *", instant) for _ in range(50)]
    positions = services.store.commit(tasks)
    services.store.execute(
        task_statements([Position(p, e) for p, e in zip(positions, tasks, strict=True)])
    )
    firing = TaskFiring(Calls(services.store))  # type: ignore[arg-type]
    asyncio.run(firing.prepare(instant))
    assert firing.planned is not None and len(firing.planned.due) == len(tasks)
    paused = TaskPaused(id=tasks[0].id, version=2, at=datetime.now(UTC), client="alice", by="alice")
    services.store.commit([paused])  # the scheduler's row learns it only later
    time.sleep(max(0.0, (instant - datetime.now(UTC)).total_seconds()))

    assert asyncio.run(firing.fire_due()) == len(tasks) - 1
    fires = fired(services)
    assert sorted(f.id for f in fires) == sorted(t.id for t in tasks[1:])
    assert {(f.at, f.fire_at) for f in fires} == {(instant, instant)}
    assert all(f.next_fire_at == instant + timedelta(seconds=1) for f in fires)
    assert asyncio.run(firing.fire_due()) == 0  # the paused task's row was rebuilt: paused


def test_two_firers_racing_on_the_same_due_runs_fire_each_once(services):
    """Without the leader lock (as if two leaders overlapped), the task versions alone keep a
    run from firing twice: the loser's commit conflicts and it rebuilds its rows."""
    due = datetime.now(UTC) - timedelta(seconds=1)
    tasks = [task("0 0 1 1 *", due) for _ in range(200)]
    positions = services.store.commit(tasks)
    services.store.execute(
        task_statements([Position(p, e) for p, e in zip(positions, tasks, strict=True)])
    )

    async def race() -> list[int]:
        calls = Calls(services.store)
        firers = [TaskFiring(calls), TaskFiring(calls)]  # type: ignore[arg-type]
        return await asyncio.gather(*(f.fire_due() for f in firers))

    counts = asyncio.run(race())
    assert sum(counts) >= len(tasks)
    fires = fired(services)
    assert len(fires) == len(tasks)
    assert Counter(f.id for f in fires) == Counter({t.id: 1 for t in tasks})
    assert asyncio.run(race()) == [0, 0]  # nothing is due any more


class Counting(Calls):
    """`Calls`, noting each store call a tick makes."""

    def __init__(self, store):  # type: ignore[no-untyped-def]
        super().__init__(store)
        self.made: list[str] = []

    async def call(self, fn, *args):  # type: ignore[no-untyped-def]
        self.made.append(fn.__name__)
        return await super().call(fn, *args)


def test_a_tick_reads_no_schedule_until_one_is_due_by_the_next_tick(services):
    """Told the earliest next fire (the scheduler's one query a tick), a tick with nothing due
    by the next one makes no call at all; one due at the next tick plans it; then fires it."""
    instant = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=2)
    created = task("* * * * * *", instant)
    [position] = services.store.commit([created])
    services.store.execute(task_statements([Position(position, created)]))
    calls = Counting(services.store)
    firing = TaskFiring(calls)  # type: ignore[arg-type]

    assert asyncio.run(firing.tick(instant, False, instant - timedelta(seconds=1))) == 0
    assert calls.made == [] and firing.planned is None
    assert asyncio.run(firing.tick(instant, False, instant)) == 0
    assert firing.planned is not None and firing.planned.instant == instant
    assert fired(services) == []
    time.sleep(max(0.0, (instant - datetime.now(UTC)).total_seconds()))
    assert asyncio.run(firing.tick(instant, False, instant + timedelta(seconds=0.25))) == 1
    assert [(f.id, f.fire_at) for f in fired(services)] == [(created.id, instant)]
