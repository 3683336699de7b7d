"""The outbox relay against real PostgreSQL and NATS: order, message ids, restarts."""

from __future__ import annotations

import asyncio
import csv
import shutil
import subprocess
import time

import nats
import psycopg
import pytest
from nats.js import api
from nats.js.errors import NotFoundError
from taskengine_contracts import subjects
from taskengine_contracts.events import decode, encode, topic_of
from taskengine_embedded import EmbeddedNats, EmbeddedPostgres
from taskengine_store.commits import CHANNEL, relay_channel
from taskengine_store.store import Conflict

from tests.support.factories import submitted
from tests.support.system import BIN, Services
from tests.support.waiting import wait_until


def stream_messages(nats_url: str) -> list:
    async def read() -> list:
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        try:
            info = await js.stream_info(subjects.STREAM)
        except NotFoundError:  # the relay has not created it yet
            await nc.close()
            return []
        if info.state.messages == 0:
            await nc.close()
            return []
        messages = [
            await js.get_msg(subjects.STREAM, seq)
            for seq in range(info.state.first_seq, info.state.last_seq + 1)
        ]
        await nc.close()
        return messages

    return asyncio.run(read())


def test_relay_publishes_every_event_in_store_order_exactly_once_across_restarts(services):
    services.start("relay")
    events = [submitted() for _ in range(300)]
    for chunk in range(0, 300, 100):
        services.store.commit(events[chunk : chunk + 100])
    wait_until(lambda: len(stream_messages(services.nats_url)) == 300, what="300 messages")

    services.kill("relay")
    # Make the relay re-publish what it already sent, as after a crash before tracking.
    services.store.execute(
        [
            (
                "UPDATE notification_tracking SET notification_id = 100"
                " WHERE application_name = 'relay'",
                (),
            )
        ]
    )
    more = [submitted() for _ in range(50)]
    services.store.commit(more)
    services.start("relay")
    wait_until(lambda: services.store.tracked("relay") >= 350, what="relay to catch up")

    messages = stream_messages(services.nats_url)
    assert len(messages) == 350  # the re-published 200 were dropped as duplicates
    decoded = [decode(m.data) for m in messages]
    assert [e.job_id for e in decoded] == [e.job_id for e in events + more]
    positions = [int(m.headers[subjects.POSITION_HEADER]) for m in messages]
    assert positions == sorted(positions)
    first = messages[0]
    assert first.headers[subjects.MSG_ID_HEADER] == f"{events[0].id}:1"
    assert first.subject == "taskengine.job.submitted"


def test_commits_carried_by_their_notify_large_ones_and_gaps_all_go_out_in_order(services):
    """Single events come with their commit's NOTIFY; a commit too large to carry and a
    position an insert used up before it was rolled back send the relay to the log."""
    services.start("relay")
    first = submitted()
    services.store.commit([first])
    wait_until(lambda: len(stream_messages(services.nats_url)) == 1, what="the relay up")
    alone = [submitted() for _ in range(20)]
    for event in alone[:10]:
        services.store.commit([event])
    with pytest.raises(Conflict):  # the same stream and version again: rolled back
        services.store.commit([submitted(), alone[0]])
    for event in alone[10:]:
        services.store.commit([event])
    large = [submitted() for _ in range(40)]
    services.store.commit(large)
    last = submitted()
    services.store.commit([last])
    expected = [first, *alone, *large, last]
    wait_until(
        lambda: len(stream_messages(services.nats_url)) >= len(expected), what="all published"
    )
    messages = stream_messages(services.nats_url)
    assert [decode(m.data).id for m in messages] == [e.id for e in expected]
    positions = [int(m.headers[subjects.POSITION_HEADER]) for m in messages]
    assert positions == sorted(positions) and len(set(positions)) == len(positions)
    assert positions[11] > positions[10] + 1  # the rolled-back insert's gap


def test_events_in_a_notify_by_whoever_lacks_the_password_are_not_published(services):
    """Any role that may connect may NOTIFY: on the commits' channel, or on the relay's as a
    guess without the database password, its events go nowhere."""
    services.start("relay")
    real = [submitted(), submitted()]
    services.store.commit(real[:1])
    wait_until(lambda: len(stream_messages(services.nats_url)) == 1, what="the relay up")
    position = services.store.max_position()
    forged = submitted()
    line = f"{position + 1}\t{forged.id}\t1\t{topic_of(forged)}\t{encode(forged).hex()}"
    with psycopg.connect(services.database_url, autocommit=True) as stranger:
        for channel in (CHANNEL, relay_channel("a guess")):
            stranger.execute("SELECT pg_notify(%s, %s)", (channel, f"{position + 1}\n{line}"))
    time.sleep(1)
    services.store.commit(real[1:])
    wait_until(lambda: len(stream_messages(services.nats_url)) >= 2, what="the next event")
    time.sleep(0.5)
    assert [decode(m.data).id for m in stream_messages(services.nats_url)] == [e.id for e in real]


def test_a_lost_stream_is_rebuilt_from_the_store_with_taskengine_republish(services):
    services.start("relay")
    events = [submitted() for _ in range(120)]
    services.store.commit(events)
    wait_until(lambda: len(stream_messages(services.nats_url)) == 120, what="120 messages")
    services.kill("relay")
    asyncio.run(_delete_stream(services.nats_url))

    republish = subprocess.run(
        [str(BIN / "taskengine"), "republish", "--after", "0"],
        env=services.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert republish.returncode == 0, republish.stderr
    services.start("relay")
    wait_until(lambda: len(stream_messages(services.nats_url)) == 120, what="the rebuilt stream")
    assert [decode(m.data).job_id for m in stream_messages(services.nats_url)] == [
        e.job_id for e in events
    ]


async def _delete_stream(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    await nc.jetstream().delete_stream(subjects.STREAM)
    await nc.close()


def test_an_outside_subscriber_follows_a_job_with_plain_nats_py(services):
    services.start("relay")
    event = submitted(workflow="echo")

    async def follow() -> list:
        nc = await nats.connect(services.nats_url)
        js = nc.jetstream()
        sub = await js.subscribe(subjects.JOBS, ordered_consumer=True)
        await asyncio.to_thread(services.store.commit, [event])
        message = await sub.next_msg(timeout=10)
        await nc.close()
        return [message]

    [message] = asyncio.run(follow())
    assert decode(message.data) == event


async def _add_consumer(nats_url: str, durable: str) -> None:
    nc = await nats.connect(nats_url)
    await nc.jetstream().add_consumer(
        subjects.STREAM, api.ConsumerConfig(durable_name=durable, ack_policy=api.AckPolicy.ALL)
    )
    await nc.close()


def test_after_nats_comes_back_without_its_tail_the_relay_publishes_it_again(
    engine_root, database_url
):
    nats_dir = engine_root / "own-nats"
    server = EmbeddedNats(nats_dir)  # one this test may stop and roll back
    services = Services(engine_root, server.start(), database_url)
    try:
        services.start("relay")
        first = [submitted() for _ in range(200)]
        services.store.commit(first)
        wait_until(  # the first wait includes the relay's start: slow on a busy machine
            lambda: len(stream_messages(services.nats_url)) == 200, timeout=90, what="200 messages"
        )
        # a consumer of the stream that has handled (and recorded) exactly those 200
        asyncio.run(_add_consumer(services.nats_url, "lagging"))
        services.store.track("lagging", services.store.max_position())
        server.stop()
        shutil.copytree(nats_dir, engine_root / "snapshot")
        server.start()
        later = [submitted() for _ in range(100)]
        services.store.commit(later)
        wait_until(lambda: len(stream_messages(services.nats_url)) == 300, what="300 messages")

        # NATS dies and comes back with its store as it was before the last 100 (unsynced)
        server.stop()
        shutil.rmtree(nats_dir)
        shutil.copytree(engine_root / "snapshot", nats_dir)
        server.start()
        wait_until(lambda: len(stream_messages(services.nats_url)) == 300, what="the lost tail")
        ids = [decode(m.data).job_id for m in stream_messages(services.nats_url)]
        assert ids == [e.job_id for e in first + later]  # each once, in store order
    finally:
        services.close()
        server.stop()


def test_a_service_started_while_postgres_is_down_waits_for_it(engine_root, nats_url):
    postgres = EmbeddedPostgres(engine_root / "own-pg")  # one this test may stop
    services = Services(engine_root, nats_url, postgres.start())
    try:
        services.start()  # the stream and the tables
        services.close_store()
        postgres.stop()
        services.start("relay", wait=False)  # it cannot say it started before PostgreSQL is back
        wait_until(
            lambda: "relay: waiting for the database" in services.log("relay"),
            timeout=60,
            what="the relay to wait for PostgreSQL",
        )
        assert services.processes["relay"].poll() is None
        postgres.start()
        services.store.commit([submitted() for _ in range(5)])
        wait_until(lambda: len(stream_messages(services.nats_url)) == 5, what="5 messages")
    finally:
        services.close()
        postgres.stop()


def test_hop_tracing_records_each_consumed_events_instants_in_order(services):
    """Debug mode: the relay stamps the publish instant, a consumer appends what it handled;
    each instant follows the one before (one clock: one machine)."""
    services.env["TASKENGINE_HOP_TRACE"] = "true"
    job = submitted("noop")
    services.store.commit([job])
    services.start("relay", "admission")
    trace = services.data_dir / "run" / "hops-admission.csv"
    rows = wait_until(
        lambda: (
            trace.exists()
            and [r for r in csv.DictReader(trace.open()) if r["topic"] == "job.submitted"]
        ),
        what="the admission's trace of the submission",
    )
    [row] = rows
    instants = [float(row[name]) for name in ("written", "published", "received", "handled")]
    assert instants == sorted(instants), row
    assert instants[0] == job.at.timestamp() and instants[-1] - instants[0] < 60
    assert row["consumer"] == "admission" and int(row["position"]) > 0
    [message] = [m for m in stream_messages(services.nats_url) if m.subject.endswith("submitted")]
    assert float(message.headers[subjects.PUBLISHED_HEADER]) == float(row["published"])


def test_without_hop_tracing_nothing_is_stamped_or_written(services):
    services.store.commit([submitted("noop")])
    services.start("relay", "admission")
    messages = wait_until(
        lambda: (lambda ms: ms if any(m.subject.endswith("admitted") for m in ms) else None)(
            stream_messages(services.nats_url)
        ),
        what="the admission to handle the submission",
    )
    assert messages and all(subjects.PUBLISHED_HEADER not in m.headers for m in messages)
    assert not list((services.data_dir / "run").glob("hops-*.csv"))
