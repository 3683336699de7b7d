"""Poison against real NATS and PostgreSQL: garbage on every subject is set aside by every
consumer and jobs flow on; the resume search is not misled by messages without a position;
an event the projector cannot project is set aside; a consumer waits out a store that is
away, and sets aside only the event that fails on its own."""

from __future__ import annotations

import asyncio
import time

import nats
import psycopg
import pytest
from taskengine_cli.ops import replay, reset_read_models
from taskengine_contracts import subjects
from taskengine_contracts.events import CallbackDelivered, JobSucceeded, encode
from taskengine_runtime import bus, failures
from taskengine_runtime.bus import BatchConsumer
from taskengine_store.rejected import counts

from tests.support.factories import submitted
from tests.support.garbage import EVENT_SUBJECTS, KINDS, publish_garbage
from tests.support.receiver import CallbackReceiver
from tests.support.system import reset_stream, wait_events
from tests.support.waiting import wait_until

CONSUMERS = ("admission", "dispatcher", "notifier", "scheduler")


def started(services, name: str) -> None:
    """Waits for a service process to be up (minutes on a loaded machine, seconds otherwise)."""
    wait_until(lambda: " started (instance" in services.log(name), timeout=180, what=name)


def matches(subject: str, filter_subject: str) -> bool:
    if filter_subject.endswith(".>"):
        return subject.startswith(filter_subject[:-1])
    return subject == filter_subject


def filters(nats_url: str) -> dict[str, list[str]] | None:
    """Each consumer's filter subjects, as the server has them (None until all exist)."""

    async def read() -> dict[str, list[str]] | None:
        nc = await nats.connect(nats_url)
        try:
            infos = await nc.jetstream().consumers_info(subjects.STREAM)
        finally:
            await nc.close()
        found = {}
        for service in CONSUMERS:  # a dispatcher's or notifier's: `<service>-<instance>-...`
            for info in infos:
                if info.name == service or info.name.startswith(f"{service}-"):
                    found[service] = info.config.filter_subjects or [info.config.filter_subject]
        return found if len(found) == len(CONSUMERS) else None

    return asyncio.run(read())


def finished(services, job, timeout: float = 30) -> list:  # type: ignore[no-untyped-def]
    return wait_events(
        services,
        lambda es: (
            any(isinstance(e, JobSucceeded) and e.job_id == job.job_id for e in es)
            and any(isinstance(e, CallbackDelivered) and e.job_id == job.job_id for e in es)
        ),
        timeout=timeout,
        what=f"job {job.job_id} to succeed and its callbacks to be delivered",
    )


def test_garbage_on_every_subject_is_set_aside_by_each_consumer_and_jobs_flow(services):
    services.start("relay", "admission", "dispatcher", "notifier", "scheduler", "projector")
    with CallbackReceiver() as receiver:
        first = submitted(callbacks=[receiver.url])
        services.store.commit([first])
        # Every consumer exists and is past its start (slow on a loaded machine).
        finished(services, first, timeout=180)
        by_consumer = wait_until(lambda: filters(services.nats_url), timeout=180)

        sent = publish_garbage(services.nats_url)
        assert sent == len(EVENT_SUBJECTS) * KINDS
        job = submitted(callbacks=[receiver.url])
        started = time.monotonic()
        services.store.commit([job])
        finished(services, job)
        latency = time.monotonic() - started

        expected = {
            name: KINDS * sum(any(matches(s, f) for f in fs) for s in EVENT_SUBJECTS)
            for name, fs in by_consumer.items()
        }
        assert all(n > 0 for n in expected.values())
        wait_until(lambda: counts(services.store) == expected, what=f"{expected} set aside")
        rows = services.store.query(
            "SELECT consumer, stream_seq, subject, error, payload_size, position"
            " FROM rejected_messages"
        )
        assert all(r["stream_seq"] and r["error"] for r in rows)
        subscribed = {
            s
            for s in EVENT_SUBJECTS
            for fs in by_consumer.values()
            if any(matches(s, f) for f in fs)
        }
        assert {r["subject"] for r in rows} == subscribed
        assert max(r["payload_size"] for r in rows) > 700_000
        forged = [r for r in rows if r["position"]]
        assert forged and all("event on taskengine." in r["error"] for r in forged)
        print(f"job submitted after the garbage finished in {latency:.2f}s")

        # A consumer restarting resumes through the garbage, and does not record it twice.
        services.kill("admission")
        services.start("admission")
        again = submitted(callbacks=[receiver.url])
        services.store.commit([again])
        finished(services, again, timeout=180)
    assert counts(services.store) == expected
    wait_until(lambda: services.store.tracked("projector") == services.store.max_position())
    assert not services.store.query("SELECT 1 FROM rejected_messages WHERE consumer = 'projector'")


# --- the resume search ---------------------------------------------------------------------


async def _stream(nats_url: str, layout: list[int | None]) -> dict[int, int]:
    """Publishes `layout` (a position, or None for garbage); returns position -> sequence."""
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    sequences = {}
    for position in layout:
        headers = None if position is None else {subjects.POSITION_HEADER: str(position)}
        ack = await js.publish("taskengine.job.queued", b"{}", headers=headers)
        if position is not None:
            sequences[position] = ack.seq
    await nc.close()
    return sequences


async def _search(nats_url: str, position: int) -> int:
    nc = await nats.connect(nats_url)

    async def never():  # type: ignore[no-untyped-def]
        raise AssertionError

    consumer = BatchConsumer(nc, "search", [subjects.JOBS], never, position, never, never, never)
    try:
        return await consumer._stream_sequence_after(position)
    finally:
        await nc.close()


@pytest.mark.parametrize("long_runs", [False, True])
def test_resume_search_is_not_misled_by_messages_without_a_position(
    nats_url, monkeypatch, long_runs
):
    monkeypatch.setattr(bus, "RESUME_MARGIN", 0)  # the search alone, without its safety margin
    reset_stream(nats_url)
    layout: list[int | None] = []
    for position in range(1, 41):
        run = (position * 7) % (bus.PROBE + 30 if long_runs else bus.PROBE)
        layout += [None] * run + [position]
    layout += [None] * 5
    sequences = asyncio.run(_stream(nats_url, layout))
    for position in range(0, 41):
        start = asyncio.run(_search(nats_url, position))
        after = sequences.get(position + 1, len(layout) + 1)
        assert start <= after, f"after {position}: would skip event {position + 1}"
        if not long_runs:  # exact: nothing already handled is delivered again
            assert all(seq < start for p, seq in sequences.items() if p <= position)


# --- the projector ---------------------------------------------------------------------------


def test_an_event_the_projector_cannot_project_is_set_aside_and_the_rest_projected(services):
    services.store.commit([submitted() for _ in range(10)])
    poison = submitted(parameters={"x": "a\x00b"})  # stored, but jsonb refuses U+0000
    [position] = services.store.commit([poison])
    services.store.commit([submitted() for _ in range(10)])
    services.start("projector")
    started(services, "projector")

    wait_until(
        lambda: services.store.tracked("projector") == services.store.max_position(),
        what="the projector past the poison",
    )
    rows = services.store.query("SELECT job_id FROM rm_jobs")
    assert len(rows) == 20 and poison.job_id not in {r["job_id"] for r in rows}
    [rejected] = services.store.query("SELECT * FROM rejected_messages")
    assert rejected["consumer"] == "projector" and rejected["position"] == position
    assert rejected["subject"] == "taskengine.job.submitted" and rejected["attempts"] == 5
    assert "Unicode" in rejected["error"] and rejected["stream_seq"] is None
    done = replay(services.store)
    assert done.replayed == done.live

    # After a restart (or a rewind) it is not tried again.
    services.kill("projector")
    services.start("projector")
    started(services, "projector")
    services.store.commit([submitted()])
    wait_until(lambda: len(services.store.query("SELECT 1 FROM rm_jobs")) == 21)
    assert services.store.query("SELECT attempts FROM rejected_messages") == [{"attempts": 5}]


async def _consume(nats_url: str, handler, until: int) -> list:  # type: ignore[no-untyped-def]
    """Runs a consumer of `taskengine.job.>` until it has handled position `until`."""
    nc = await nats.connect(nats_url)
    set_aside: list = []

    async def reject(items, position) -> None:  # type: ignore[no-untyped-def]
        set_aside.extend((item, position) for item in items)

    async def track(position: int) -> None:
        return None

    async def latest() -> int:
        return until

    consumer = BatchConsumer(nc, "poison-test", [subjects.JOBS], handler, 0, track, reject, latest)
    task = asyncio.create_task(consumer.run())
    try:
        for _ in range(1200):  # a minute at most
            if consumer.handled >= until:
                break
            await asyncio.sleep(0.05)
    finally:
        task.cancel()
        await nc.close()
    return set_aside


def test_a_consumer_waits_out_transient_failures_and_sets_aside_only_the_culprit(
    nats_url, monkeypatch
):
    """Real NATS: events with positions, garbage among them, a store that fails transiently
    for a while, and one event whose handling always fails."""
    monkeypatch.setattr(failures, "RETRY_MAX", 0.2)  # the outage in less time
    reset_stream(nats_url)
    jobs = [submitted() for _ in range(10)]
    layout: list[tuple[bytes, dict | None]] = []
    for position, job in enumerate(jobs, start=1):
        layout.append((encode(job), {subjects.POSITION_HEADER: str(position)}))
        if position % 3 == 0:
            layout.append((b"garbage", None))

    async def publish() -> None:
        nc = await nats.connect(nats_url)
        for payload, headers in layout:
            await nc.jetstream().publish("taskengine.job.submitted", payload, headers=headers)
        await nc.close()

    asyncio.run(publish())
    handled: list[int] = []
    calls = 0

    async def handler(batch) -> bool:  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        if calls <= 8:  # the store away: longer than `attempts` failures
            raise psycopg.OperationalError("connection refused")
        if any(item.position == 5 for item in batch):
            raise ValueError("cannot handle job 5")
        handled.extend(item.position for item in batch)
        return True

    set_aside = asyncio.run(_consume(nats_url, handler, until=10))
    assert handled == [1, 2, 3, 4, 6, 7, 8, 9, 10]  # each once, in order
    garbage = [(item, position) for item, position in set_aside if item.position is None]
    culprits = [(item, position) for item, position in set_aside if item.position]
    assert len(garbage) == 3 and all(position is None for _, position in garbage)
    assert all("undecodable" in item.error and item.stream_seq for item, _ in garbage)
    [(culprit, tracked)] = culprits
    assert culprit.position == tracked == 5 and culprit.attempts == 5
    assert "ValueError: cannot handle job 5" in culprit.error
    assert culprit.msg_id is None and culprit.stream_seq == 6  # after the first garbage


def test_the_projector_tracks_past_events_set_aside_at_the_end_of_its_batch(services):
    """Readers wait for the projector's position to reach the store's head: events it set
    aside, ending a batch after a rewind, must not hold that position back (the projector,
    idle, re-reads its position and tracks past them)."""
    services.store.commit([submitted() for _ in range(5)])
    services.store.commit([submitted(parameters={"x": "a\x00b"})])  # the log's last event
    services.start("projector")
    started(services, "projector")
    head = services.store.max_position()
    wait_until(lambda: services.store.tracked("projector") == head, what="the first pass")
    services.stop("projector")

    reset_read_models(services.store)  # a rewind: the batch is now five events and the poison
    services.start("projector")
    started(services, "projector")
    wait_until(
        lambda: services.store.head_and_tracked("projector") == (head, head),
        what="the projector's position past the poison again",
    )
    assert len(services.store.query("SELECT 1 FROM rm_jobs")) == 5
