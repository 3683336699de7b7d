"""The event store on real PostgreSQL: racing moves, atomic commits, tracking."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
from eventsourcing.persistence import IntegrityError, Tracking
from taskengine_contracts.events import JobAdmitted, JobCancelled, decode, topic_of
from taskengine_core.jobs import JobRef, advance
from taskengine_runtime.failures import is_transient
from taskengine_store.commits import CHANNEL, WAITING, listen_to_commits, relay_channel
from taskengine_store.store import CARRIED_BYTES, STALE_PLAN, Conflict, EventStore, carried

from tests.support.factories import submitted


@pytest.fixture
def store(database_url):
    store = EventStore(database_url, pool_size=4, create_tables=True)
    yield store
    store.close()


def admit(job) -> JobAdmitted:  # type: ignore[no-untyped-def]
    return advance(
        JobRef.of(job), JobAdmitted, workflow="noop", priority=5, attempt=1, running=1, max_jobs=2
    )


def test_two_services_racing_to_move_a_job_cannot_both_win(store):
    job = submitted()
    store.commit([job])
    moves = [admit(job), advance(JobRef.of(job), JobCancelled, reason="race", by="test")] * 4

    def attempt(event) -> bool:  # type: ignore[no-untyped-def]
        try:
            store.commit([event])
            return True
        except Conflict as conflict:
            assert conflict.stale == {job.id}
            return False

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(attempt, moves))
    assert results.count(True) == 1
    assert [e.version for e in store.stream(job.id)] == [1, 2]


def test_a_conflicting_commit_stores_nothing_of_the_batch(store):
    first, second = submitted(), submitted()
    store.commit([first, second])
    store.commit([admit(first)])
    position = store.max_position()
    statement = ("INSERT INTO rm_clients VALUES ('x', 'h', 'l', 'hint', false, now())", ())
    with pytest.raises(Conflict) as raised:
        store.commit([admit(second), admit(first)], Tracking("t", position), [statement])
    assert raised.value.stale == {first.id}
    assert store.max_position() == position
    assert store.tracked("t") == 0
    assert store.query("SELECT count(*) AS n FROM rm_clients")[0]["n"] == 0


def test_commit_unmoved_leaves_out_only_the_moved_streams(store):
    first, second = submitted(), submitted()
    store.commit([first, second])
    store.commit([admit(first)])
    dropped = store.commit_unmoved([admit(first), admit(second)])
    assert dropped == {first.id}
    assert [e.version for e in store.stream(second.id)] == [1, 2]


def test_a_batch_already_tracked_is_reported_as_handled(store):
    job = submitted()
    store.commit([job], Tracking("consumer", 10))
    with pytest.raises(Conflict) as raised:
        store.commit([admit(job)], Tracking("consumer", 10))
    assert raised.value.stale == set()
    assert store.tracked("consumer") == 10 and len(store.stream(job.id)) == 1


def test_derived_state_commits_without_waiting_for_the_disk_and_never_carries_events(store):
    store.track("consumer", 7)
    store.commit((), Tracking("consumer", 9), [("SELECT 1", ())], durable=False)
    assert store.tracked("consumer") == 9
    # Only this commit's transaction gave up waiting for the flush: the next one waits again.
    [row] = store.query("SHOW synchronous_commit")
    assert row["synchronous_commit"] == "on"
    job = submitted()
    with pytest.raises(ValueError, match="always committed durably"):
        store.commit([job], Tracking("consumer", 10), durable=False)
    assert store.stream(job.id) == [] and store.tracked("consumer") == 9


def test_a_statement_prepared_before_a_migration_fails_as_a_wait_then_works(database_url):
    """Statements are prepared on the server; a migration that changes a table's columns
    makes PostgreSQL refuse the prepared ones that read it whole. That is transient (no
    message is to blame, none may be set aside): each connection fails once, then works."""
    EventStore(database_url, create_tables=True).close()
    store = EventStore(database_url, pool_size=1)
    store.datastore.pool.kwargs["prepare_threshold"] = 0  # prepared from the first run
    try:
        job = submitted(job_id=1)
        store.commit([job])
        for _ in range(4):
            assert len(store.stream(job.id)) == 1
        with psycopg.connect(database_url, autocommit=True) as migrate:
            migrate.execute("ALTER TABLE stored_events ADD COLUMN added_later int")
        failures = 0
        while True:
            try:
                events = store.stream(job.id)
                break
            except Exception as error:
                assert STALE_PLAN in str(error) and is_transient(error)
                failures += 1
                assert failures <= store.datastore.pool.max_size  # once per connection
        assert failures >= 1 and len(events) == 1
        for _ in range(4):  # on every connection of the pool
            assert len(store.stream(job.id)) == 1
        other = submitted(job_id=2)
        store.commit([other])
        assert len(store.stream(other.id)) == 1
    finally:
        store.close()


def test_a_position_tracked_alone_only_moves_forward(store):
    name = "it's; DROP TABLE stored_events; --"  # quoted as a literal, not spliced in
    store.track(name, 9)
    store.track(name, 5)
    assert store.tracked(name) == 9
    store.track(name, 12)
    assert store.tracked(name) == 12 and store.max_position() == 0


def test_the_rest_of_a_commit_is_the_events_stored_after_a_position_in_its_transaction(store):
    first = [submitted() for _ in range(3)]
    before = store.commit([submitted()])
    positions = store.commit(first)
    after = store.commit([submitted(), submitted()])

    rest = store.rest_of_commit(positions[0])
    assert [p.position for p in rest] == positions[1:]
    assert [p.event.id for p in rest] == [e.id for e in first[1:]]
    assert store.rest_of_commit(positions[-1]) == []  # the commit's last event
    assert store.rest_of_commit(before[0]) == []  # a commit of one, followed by another
    assert [p.position for p in store.rest_of_commit(after[0])] == after[1:]  # the newest
    assert store.rest_of_commit(after[-1] + 100) == []  # no such position


CLAIM = "INSERT INTO drove_task_ids (client, source_app, task_id, job_id) VALUES (%s, %s, %s, %s)"


def test_a_refused_claim_leaves_the_connection_fit_for_the_next_commit(database_url):
    """A commit whose claim is refused (a name taken) fails alone: every commit after it on
    the same connections succeeds. (With psycopg's prepared statements, a failure inside
    the commit's pipeline can leave the cache believing in a statement the server never kept:
    about one fresh store in two then failed a later commit with `prepared statement
    "_pg3_N" does not exist`, a 500 to the client.)"""
    EventStore(database_url, create_tables=True).close()
    numbers = iter(range(1, 1000))

    def claimed(store: EventStore, task_id: str) -> None:
        number = next(numbers)
        claim = (CLAIM, ("c", "app", task_id, number))
        store.commit([submitted(job_id=number)], None, [claim])

    for round_ in range(8):  # fresh connections each round
        store = EventStore(database_url, pool_size=1)
        if round_ % 2:  # every statement prepared from its first run, as a busy one is
            store.datastore.pool.kwargs["prepare_threshold"] = 0
        try:
            claimed(store, f"first-{round_}")
            for _ in range(5):
                with pytest.raises(IntegrityError):
                    claimed(store, f"first-{round_}")
            for n in range(3):
                claimed(store, f"fresh-{round_}-{n}")  # raised ProgrammingError before
        finally:
            store.close()


def test_a_commit_of_events_announces_its_last_position_to_listeners(store, database_url):
    """What `Runtime.heard` learns the store's head from, without reading it; on the relay's
    own channel, a small commit's announcement carries its events too, as the relay would
    read them."""
    with psycopg.connect(database_url, autocommit=True) as listener:
        listener.execute(f"LISTEN {CHANNEL}")
        listener.execute(f"LISTEN {store.relay_channel}")
        first = store.commit([submitted(job_id=n) for n in (1, 2, 3)])
        store.commit([], Tracking("quiet", 1))  # no events: nothing to announce
        second = store.commit([submitted(job_id=4)])
        large = store.commit([submitted(job_id=n) for n in range(5, 25)])
        notes = list(listener.notifies(timeout=2, stop_after=6))
    heads = [str(c[-1]) for c in (first, second, large)]
    assert [n.payload for n in notes if n.channel == CHANNEL] == heads
    to_relay = [n.payload for n in notes if n.channel == store.relay_channel]
    assert [p.split("\n")[0] for p in to_relay] == heads
    assert all(len(p.encode()) <= CARRIED_BYTES + 20 for p in to_relay)
    read = asyncio.run(outbox_after(store, first[0] - 1))
    assert carried(to_relay[0]) == read[:3]
    assert carried(to_relay[1]) == read[3:4]
    assert carried(to_relay[2]) == []  # too large to carry: read from the log


def test_the_relays_channel_is_named_after_the_database_password(database_url):
    """Any role that may connect may NOTIFY any channel: one without the password cannot
    name the relay's."""
    assert relay_channel("s3cret") == relay_channel("s3cret") != relay_channel("other")
    assert "s3cret" not in relay_channel("s3cret")
    assert len(relay_channel("s3cret")) < 64  # an identifier


async def outbox_after(store: EventStore, position: int) -> list:
    outbox = store.outbox()
    try:
        return await outbox.after(position, 100)
    finally:
        await outbox.close()


def test_a_reader_waiting_tells_the_follower_only_while_it_is_behind(store, database_url):
    """However often reads poll, a follower that holds the head hears nothing of them."""
    with psycopg.connect(database_url, autocommit=True) as listener:
        listener.execute(f"LISTEN {WAITING}")
        [position] = store.commit([submitted()])
        store.commit([], Tracking("projector", position))
        for _ in range(50):  # a flood of reads while the follower is caught up
            assert store.head_and_tracked("projector", waiting=True) == (position, position)
        [ahead] = store.commit([submitted()])
        assert store.head_and_tracked("projector", waiting=True) == (ahead, position)
        notes = list(listener.notifies(timeout=1))
    assert [(note.channel, note.payload) for note in notes] == [(WAITING, "projector")]


def test_a_commit_waits_for_the_log_lock_whatever_lock_timeout_the_database_sets(database_url):
    """The log's table lock is waited for (as eventsourcing's `SET LOCAL lock_timeout` made
    it), now set once per connection."""
    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute(
            psycopg.sql.SQL("ALTER DATABASE {} SET lock_timeout = '10ms'").format(
                psycopg.sql.Identifier(admin.info.dbname)
            )
        )
    store = EventStore(database_url, create_tables=True)
    try:
        with psycopg.connect(database_url) as holder:
            holder.execute("LOCK TABLE stored_events IN EXCLUSIVE MODE")
            with ThreadPoolExecutor(1) as pool:
                waiting = pool.submit(store.commit, [submitted()])
                # Longer than eventsourcing's retries of a lock refused (10 x 0.2 s).
                time.sleep(2.5)
                assert not waiting.done()
                holder.rollback()
                assert len(waiting.result(timeout=10)) == 1
    finally:
        store.close()


async def test_the_commit_listener_hears_every_commit_and_listens_again_when_cut_off(
    store, database_url
):
    heard: list[str] = []

    def hear(payload: str) -> None:
        heard.append(payload.split("\n")[0])  # the commit's last position

    listening = asyncio.create_task(listen_to_commits(database_url, hear, "test"))
    try:
        await heard_commit(store, heard)
        burst = [store.commit([submitted()])[-1] for _ in range(20)]
        await until(lambda: heard[-1:] == [str(burst[-1])])
        assert heard[-20:] == [str(position) for position in burst]  # each, in order

        with psycopg.connect(database_url, autocommit=True) as admin:
            cut = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND query = %s",
                (f"LISTEN {CHANNEL}",),
            ).fetchall()
        assert cut == [(True,)]
        await heard_commit(store, heard)  # on a new connection
        assert not listening.done()
    finally:
        listening.cancel()


async def heard_commit(store: EventStore, heard: list[str]) -> None:
    """Commits until the listener hears one (it may not be listening yet)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        position = store.commit([submitted()])[-1]
        await asyncio.sleep(0.1)
        if str(position) in heard:
            return
    raise AssertionError(f"no commit heard in 10 s (heard {heard[-5:]})")


async def until(condition, timeout: float = 5) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "not within the timeout"
        await asyncio.sleep(0.02)


async def test_the_outbox_reads_the_log_in_order_and_opens_a_connection_cut_off_again(store):
    """The relay's reader: the events after a position, in order, at most `limit`, each with
    what its message needs (position, stream, version, topic, state); a connection cut off
    (PostgreSQL restarted, say) is opened again and the read goes on."""
    jobs = [submitted(job_id=n) for n in range(1, 6)]
    store.commit(jobs[:3])
    store.commit(jobs[3:])
    start = store.max_position() - 5
    outbox = store.outbox()
    try:
        first = await outbox.after(start, 2)
        assert [(o.stream, o.version, o.topic) for o in first] == [
            (str(job.id), 1, topic_of(job)) for job in jobs[:2]
        ]
        assert [o.position for o in first] == [start + 1, start + 2]
        with psycopg.connect(store.database_url, autocommit=True) as admin:
            assert outbox.conn is not None
            admin.execute("SELECT pg_terminate_backend(%s)", (outbox.conn.info.backend_pid,))
        rest = await outbox.after(first[-1].position, 100)
        assert [o.position for o in rest] == [start + 3, start + 4, start + 5]
        assert [decode(o.state) for o in first + rest] == jobs
        assert await outbox.after(rest[-1].position, 100) == []
    finally:
        await outbox.close()


def test_log_pages_end_at_a_count_or_at_a_size_whichever_comes_first(store):
    """A replay's pages: at most `size` events and `budget` bytes of stored events, so the
    size of what it holds does not follow the size of the events clients chose; an event
    larger than the budget is a page of its own."""
    small = store.commit([submitted(job_id=n) for n in range(1, 6)])
    huge = store.commit([submitted(job_id=6, parameters={"blob": "x" * 300_000})])
    more = store.commit([submitted(job_id=n) for n in range(7, 10)])
    pages = store.log_pages()
    everything = store.max_position()
    # By count alone: pages of 4, whatever their bytes.
    assert list(pages.ends(everything, 4, 10**9)) == [small[3], more[1], everything]
    # By bytes: the huge event stands alone, the small ones around it stay together.
    assert list(pages.ends(everything, 100, 100_000)) == [small[-1], huge[0], everything]
    assert list(pages.ends(more[0], 100, 100_000)) == [small[-1], huge[0], more[0]]
    assert [e.id for e in pages.between(small[-1], huge[0])] == huge
