"""Admission against real NATS and PostgreSQL: priority then FIFO, max_jobs, slot release,
and active/standby between two controllers."""

from __future__ import annotations

import asyncio

import msgspec
import nats
from taskengine_admission.admission import settings_at
from taskengine_contracts import subjects
from taskengine_contracts.events import Heartbeat, JobAdmitted, JobStarted, JobSucceeded
from taskengine_core.jobs import JobRef, advance
from taskengine_store.leadership import lock_key
from taskengine_store.store import EventStore

from tests.support.factories import settings, submitted
from tests.support.system import wait_events
from tests.support.waiting import wait_until


def admitted(events) -> list[int]:  # type: ignore[no-untyped-def]
    return [e.job_id for e in events if isinstance(e, JobAdmitted)]


def test_admits_by_priority_then_fifo_up_to_max_jobs_and_refills_freed_slots(services):
    settings(services.store, max_jobs=2)
    jobs = [submitted(priority=p) for p in (5, 3, 5, 1, 9)]
    services.store.commit(jobs)
    services.start("relay", "admission")

    events = wait_events(services, lambda es: len(admitted(es)) == 2, what="two admissions")
    by_priority = sorted(jobs, key=lambda j: (j.priority, j.job_id))
    assert admitted(events) == [by_priority[0].job_id, by_priority[1].job_id]

    # Finish one: exactly one more is admitted, the next in priority order (5, first come).
    first = next(e for e in events if isinstance(e, JobAdmitted))
    started = advance(JobRef.of(first), JobStarted, workflow="noop", attempt=1, executor="test")
    done = advance(JobRef.of(started), JobSucceeded, workflow="noop", attempt=1)
    services.store.commit([started, done])
    events = wait_events(services, lambda es: len(admitted(es)) == 3, what="a third admission")
    assert admitted(events)[2] == jobs[0].job_id

    # Raising max_jobs live admits the rest, lowest priority last.
    settings(services.store, max_jobs=10)
    events = wait_events(services, lambda es: len(admitted(es)) == 5, what="all admitted")
    assert admitted(events)[3:] == [jobs[2].job_id, jobs[4].job_id]
    assert len(admitted(events)) == len(set(admitted(events)))


# --- active/standby -------------------------------------------------------------------------

LEADING = "admission: leading"
STANDBY = "admission: standby, waiting for the leader lock"


def heartbeats(nats_url: str, instances: set[str], timeout: float = 10.0) -> dict[str, Heartbeat]:
    """The next heartbeat of each admission instance named."""

    async def listen() -> dict[str, Heartbeat]:
        nc = await nats.connect(nats_url)
        beats: dict[str, Heartbeat] = {}
        heard = asyncio.Event()

        async def on_beat(message) -> None:  # type: ignore[no-untyped-def]
            beat = msgspec.json.decode(message.data, type=Heartbeat)
            beats[beat.instance] = beat
            if instances <= beats.keys():
                heard.set()

        await nc.subscribe(subjects.heartbeat_subject("admission"), cb=on_beat)
        try:
            await asyncio.wait_for(heard.wait(), timeout)
        finally:
            await nc.close()
        return beats

    return asyncio.run(listen())


def working(services, instance: str) -> int | None:  # type: ignore[no-untyped-def]
    """What `instance` says it has in hand (it says so every 2 s); None if not in 30 s."""
    try:
        return heartbeats(services.nats_url, {instance}, timeout=30)[instance].working
    except TimeoutError:
        return None


def test_two_controllers_the_standby_takes_over_after_kill_9_where_the_leader_stopped(services):
    settings(services.store, max_jobs=2)
    jobs = [submitted(priority=5) for _ in range(4)]
    services.store.commit(jobs)
    services.start("relay")
    services.start_as("admission", "admission-a")
    wait_until(lambda: LEADING in services.log("admission-a"), what="admission-a to lead")
    services.start_as("admission", "admission-b")
    wait_until(lambda: STANDBY in services.log("admission-b"), what="admission-b to wait")

    events = wait_events(services, lambda es: len(admitted(es)) == 2, what="two admissions")
    assert admitted(events) == [jobs[0].job_id, jobs[1].job_id]
    wait_until(lambda: working(services, "admission-a") == 2, what="the leader's heartbeat")
    assert working(services, "admission-b") == 0
    assert LEADING not in services.log("admission-b")

    services.kill("admission-a")
    wait_until(lambda: LEADING in services.log("admission-b"), what="the takeover")
    wait_until(lambda: working(services, "admission-b") == 2, what="the new leader's queue")
    # Restarted (as its supervisor would), the old leader waits as the standby.
    offset = len(services.log("admission-a"))
    services.start_as("admission", "admission-a")
    wait_until(lambda: STANDBY in services.log("admission-a")[offset:], what="a new standby")

    # The new leader carries on from the old one's last commit: nothing admitted twice, and
    # a freed slot goes to the next job in order, chosen after the release was applied.
    first = next(e for e in events if isinstance(e, JobAdmitted))
    started = advance(JobRef.of(first), JobStarted, workflow="noop", attempt=1, executor="test")
    done = advance(JobRef.of(started), JobSucceeded, workflow="noop", attempt=1)
    [_, released_at] = services.store.commit([started, done])
    events = wait_events(services, lambda es: len(admitted(es)) == 3, what="a third admission")
    assert admitted(events) == [j.job_id for j in jobs[:3]]
    third = [e for e in events if isinstance(e, JobAdmitted)][2]
    assert third.position >= released_at

    # A standby stops at once on SIGTERM (cleanly: exit status 0).
    standby = services.processes["admission-a"]
    services.stop("admission-a")
    assert standby.returncode == 0

    # A leader whose lock connection is cut exits (non-zero) so its supervisor restarts it.
    key = lock_key("taskengine:admission")
    [row] = services.store.query(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1"
        " AND classid = %s AND objid = %s",
        ((key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF),
    )
    services.store.query("SELECT pg_terminate_backend(%s)", (row["pid"],))
    assert services.wait_exit("admission-b") != 0
    assert "lost the leader lock" in services.log("admission-b")


def test_a_new_leader_starts_with_the_settings_as_of_its_tracked_position(database_url):
    store = EventStore(database_url, pool_size=2, create_tables=True)

    class Calls:  # what `settings_at` needs of the runtime
        def __init__(self) -> None:
            self.store = store

        async def call(self, fn, *args):  # type: ignore[no-untyped-def]
            return fn(*args)

    try:
        settings(store, max_jobs=3)
        tracked = store.max_position()
        settings(store, max_jobs=7, priority_slots=2)  # later than what the queue reflects
        then = asyncio.run(settings_at(Calls(), tracked))  # type: ignore[arg-type]
        now = asyncio.run(settings_at(Calls(), store.max_position()))  # type: ignore[arg-type]
        assert (then.max_jobs, then.int("priority_slots")) == (3, 0)
        assert (now.max_jobs, now.int("priority_slots")) == (7, 2)
        assert asyncio.run(settings_at(Calls(), 0)).max_jobs == 2  # type: ignore[arg-type]
    finally:
        store.close()
