"""The leader lock behind active/standby services (admission, scheduler), on a real
PostgreSQL: one leader at a time, a standby takes over when the leader's session ends, and a
leader that lost its lock can neither go on nor slip a commit in after its successor."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading

import psycopg
import pytest
from eventsourcing.persistence import Tracking
from taskengine_store import leadership
from taskengine_store.leadership import LeaderLock, LeadershipLost
from taskengine_store.store import EventStore

NAME = "test-service"


@pytest.fixture(autouse=True)
def store(database_url):
    """The store, with its tables: the leaders' turns and the fence's function among them."""
    store = EventStore(database_url, pool_size=2, create_tables=True)
    yield store
    store.close()


def test_one_leader_at_a_time_and_a_standby_takes_over_when_its_session_ends(database_url):
    async def scenario() -> None:
        leader, standby = LeaderLock(database_url, NAME), LeaderLock(database_url, NAME)
        await asyncio.wait_for(leader.acquire(), 10)
        waiting = asyncio.create_task(standby.acquire(poll=0.05))
        done, _ = await asyncio.wait({waiting}, timeout=0.5)
        assert not done, "a second process took the leader lock while it was held"
        await leader.close()  # as when the leader is killed: PostgreSQL ends its session
        await asyncio.wait_for(waiting, 10)
        await standby.close()

    asyncio.run(scenario())


def test_a_leader_that_lost_its_lock_connection_stops_and_cannot_commit(database_url, store):
    async def scenario() -> None:
        lock = LeaderLock(database_url, NAME)
        await lock.acquire()
        fence = lock.fence
        store.commit([], Tracking("fenced", 1), [fence])  # leading: accepted
        assert lock.connection is not None
        store.query("SELECT pg_terminate_backend(%s)", (lock.connection.info.backend_pid,))
        with pytest.raises(LeadershipLost):
            await asyncio.wait_for(lock.watch(every=0.05), 10)
        # Only a leader process (`run_as_leader`) is bound to exit: the caller of `watch` is not.
        assert not [t for t in threading.enumerate() if isinstance(t, threading.Timer)]
        with pytest.raises(Exception, match="no longer holds the leader lock"):
            store.commit([], Tracking("fenced", 2), [fence])
        await lock.close()

    asyncio.run(scenario())
    assert store.tracked("fenced") == 1


def test_a_new_leader_waits_out_a_fenced_commit_of_the_old_one(database_url):

    async def scenario() -> None:
        old, new = LeaderLock(database_url, NAME), LeaderLock(database_url, NAME)
        await old.acquire()
        assert old.connection is not None
        with psycopg.connect(database_url) as committing:
            committing.execute(*old.fence)  # the fence passed; the transaction is still open
            with psycopg.connect(database_url, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (old.connection.info.backend_pid,))
            taking_over = asyncio.create_task(new.acquire(poll=0.05))
            done, _ = await asyncio.wait({taking_over}, timeout=0.5)
            assert not done, "the new leader did not wait for the old leader's commit"
            committing.commit()
        await asyncio.wait_for(taking_over, 10)
        await old.close()
        await new.close()

    asyncio.run(scenario())


def test_after_a_takeover_only_the_new_leaders_fence_lets_a_commit_through(database_url, store):
    """The lock is held again, by the successor: the old leader's fence still fails (its turn
    is over), the new one's passes."""

    async def scenario() -> None:
        old, new = LeaderLock(database_url, NAME), LeaderLock(database_url, NAME)
        await old.acquire()
        old_fence = old.fence
        store.commit([], Tracking("fenced", 1), [old_fence])
        assert old.connection is not None
        store.query("SELECT pg_terminate_backend(%s)", (old.connection.info.backend_pid,))
        await asyncio.wait_for(new.acquire(poll=0.05), 10)
        assert new.epoch == old.epoch + 1
        with pytest.raises(Exception, match="no longer holds the leader lock"):
            store.commit([], Tracking("fenced", 2), [old_fence])
        store.commit([], Tracking("fenced", 3), [new.fence])
        await old.close()
        await new.close()

    asyncio.run(scenario())
    assert store.tracked("fenced") == 3


HANGS = {
    "in a worker thread": "    loop = asyncio.get_running_loop()\n"
    "    loop.run_in_executor(None, threading.Event().wait)\n"
    "    await asyncio.sleep(3600)\n",
    "in a task that ignores its cancellation": "    while True:\n"
    "        try:\n"
    "            await asyncio.sleep(3600)\n"
    "        except asyncio.CancelledError:\n"
    "            pass\n",
}


@pytest.mark.parametrize("hang", HANGS)
def test_a_deposed_leader_whose_shutdown_hangs_still_exits(database_url, tmp_path, hang):
    """A store call stuck in a worker thread keeps the interpreter from exiting by itself, and
    a work task that swallows its cancellation keeps the leader's task group open; the leader
    that lost its lock ends anyway, non-zero, within its grace period."""
    script = tmp_path / "leader.py"
    script.write_text(
        "import asyncio, sys, threading, psycopg\n"
        "from taskengine_store import leadership\n"
        "leadership.EXIT_GRACE = 0.5\n"
        "async def work(lock):\n"
        "    pid = lock.connection.info.backend_pid\n"
        "    with psycopg.connect(sys.argv[1], autocommit=True) as other:\n"
        "        other.execute('SELECT pg_terminate_backend(%s)', (pid,))\n"
        + HANGS[hang]
        + "async def main():\n"
        "    await leadership.run_as_leader(sys.argv[1], 'deposed-test', work)\n"
        "asyncio.run(main())\n"
    )
    process = subprocess.run(
        [sys.executable, str(script), database_url], capture_output=True, text=True, timeout=60
    )
    assert process.returncode == leadership.LOST_STATUS, process.stderr
    assert "lost the leader lock" in process.stderr
