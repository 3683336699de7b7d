"""The notifier POSTs callbacks, retries while the receiver is down, records each delivery."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from taskengine_contracts.events import (
    CallbackAttemptFailed,
    CallbackDelivered,
    JobSubmitted,
    JobSucceeded,
)
from taskengine_core.config import EngineSettings
from taskengine_core.outbound import OutboundGuard, parse_allowlist
from taskengine_core.outbound_http import outbound_client
from taskengine_notifier.notifier import Notifier
from taskengine_runtime import Delivered, Runtime

from tests.support.factories import started, submitted
from tests.support.lost_answer import answer_lost_once
from tests.support.receiver import CallbackReceiver
from tests.support.system import WEBHOOK_KEY, wait_events
from tests.support.waiting import wait_until


def succeeded(job, callbacks: list[str]) -> JobSucceeded:  # type: ignore[no-untyped-def]
    return JobSucceeded(
        id=job.id,
        version=4,
        at=job.at,
        job_id=job.job_id,
        client=job.client,
        workflow=job.workflow,
        attempt=1,
        callbacks=callbacks,
    )


def test_callback_is_retried_while_the_receiver_is_down_then_delivered(services):
    services.start("relay", "notifier")
    with CallbackReceiver() as receiver:
        receiver.status = 503
        job = submitted(callbacks=[receiver.url])
        services.store.commit([job])
        services.store.commit([started(job, [receiver.url])])
        wait_events(
            services,
            lambda es: any(isinstance(e, CallbackAttemptFailed) for e in es),
            timeout=90,  # the first wait includes starting the services on a busy machine
            what="a failed attempt",
        )
        receiver.status = 200
        events = wait_events(
            services,
            lambda es: any(isinstance(e, CallbackDelivered) for e in es),
            timeout=20,
            what="the delivery",
        )
        wait_until(lambda: receiver.received, what="the receiver to get it")
    [body] = receiver.received
    assert body["event"] == "start" and body["job_id"] == job.job_id and body["status"] == "running"
    assert receiver.verify_signatures(job.client) == 1
    delivered = [e for e in events if isinstance(e, CallbackDelivered)]
    assert delivered[0].attempts >= 2 and delivered[0].status_code == 200
    assert services.store.query("SELECT count(*) AS n FROM notifier_deliveries")[0]["n"] == 0


def test_callbacks_to_internal_addresses_are_refused_without_allowlist(services):
    services.env["TASKENGINE_CALLBACK_ALLOWLIST"] = ""
    services.start("relay", "notifier")
    with CallbackReceiver() as receiver:
        job = submitted(callbacks=[receiver.url])
        services.store.commit([job])
        services.store.commit([started(job, [receiver.url])])
        events = wait_events(
            services,
            lambda es: any(isinstance(e, CallbackAttemptFailed) for e in es),
            timeout=90,
            what="the refusal",
        )
    [refused] = [e for e in events if isinstance(e, CallbackAttemptFailed)]
    assert refused.next_at is None and "internal address" in refused.error
    assert receiver.received == []


def test_a_jobs_callbacks_to_a_url_keep_their_order_across_retries(services):
    services.start("relay", "notifier")
    with CallbackReceiver() as receiver:
        receiver.status = 503
        job = submitted(callbacks=[receiver.url])
        services.store.commit([job])
        services.store.commit([started(job, [receiver.url])])
        services.store.commit([succeeded(job, [receiver.url])])
        events = wait_events(
            services,
            lambda es: sum(isinstance(e, CallbackAttemptFailed) for e in es) >= 2,
            timeout=90,
            what="the start callback to fail twice",
        )
        # The end waits behind the start, which is being retried: it is not even attempted.
        failed = [e.event for e in events if isinstance(e, CallbackAttemptFailed)]
        assert set(failed) == {"start"}, failed
        receiver.status = 200
        wait_until(lambda: len(receiver.received) == 2, timeout=20, what="both callbacks")
    assert [body["event"] for body in receiver.received] == ["start", "complete"]


def test_each_jobs_callbacks_to_each_url_keep_their_order_with_the_lane_full(services):
    # Many lines (a job and one of its URLs) to one receiver, its lane full all along: calls
    # run side by side, yet each line's callbacks arrive one after the other, in order.
    services.start("relay", "notifier")
    with CallbackReceiver() as receiver:
        receiver.delay = 0.02
        urls = [f"{receiver.url}?to={n}" for n in range(3)]
        jobs = [submitted(callbacks=urls) for _ in range(20)]
        services.store.commit(jobs)
        services.store.commit([started(job, urls) for job in jobs])
        services.store.commit([succeeded(job, urls) for job in jobs])
        expected = 2 * len(urls) * len(jobs)
        wait_until(lambda: len(receiver.received) == expected, timeout=90, what="every callback")
    lines: dict[tuple[int, str], list[str]] = {}
    for body, path in zip(receiver.received, receiver.paths, strict=True):
        lines.setdefault((body["job_id"], path), []).append(body["event"])
    assert len(lines) == len(jobs) * len(urls)
    assert all(events == ["start", "complete"] for events in lines.values()), lines


def started_with_callback(store, url: str) -> tuple[JobSubmitted, list[Delivered]]:  # type: ignore[no-untyped-def]
    """A job with a callback to `url`, stored, and the batch of its start as a consumer gets it."""
    job = submitted(callbacks=[url])
    store.commit([job])
    event = started(job, [url])
    [position] = store.commit([event])
    return job, [Delivered(position, event, None)]


@asynccontextmanager
async def notifier_in_process(services) -> AsyncIterator[Notifier]:  # type: ignore[no-untyped-def]
    """A notifier in this process on the test's store, alone (holding every partition), with
    no consumer: the test hands it batches."""
    config = EngineSettings(webhook_key=WEBHOOK_KEY, data_dir=services.data_dir)
    guard = OutboundGuard(parse_allowlist("127.0.0.0/8"))
    async with outbound_client(guard) as client:
        runtime = Runtime("notifier", config, services.store, None, None)  # type: ignore[arg-type]
        notifier = Notifier(runtime, client, guard)
        await notifier.partitions.refresh()
        yield notifier


async def test_callbacks_stored_by_a_commit_whose_answer_was_lost_are_sent_once(services):
    """The retried commit finds the batch's deliveries there: they are sent, each once, not set
    aside with the batch as if it were poison."""
    store = services.store
    with CallbackReceiver() as receiver:
        job, batch = started_with_callback(store, receiver.url)
        async with notifier_in_process(services) as notifier:
            sender = asyncio.create_task(notifier.deliver_forever())
            try:
                with answer_lost_once(store) as lost:
                    assert await notifier.on_job_events(batch)
                assert lost, "the commit's answer was not lost: the test tested nothing"
                # The same batch again (redelivered): its partition is past it, nothing new.
                assert not await notifier.on_job_events(batch)
                for _ in range(200):
                    if receiver.received and not notifier.pending():
                        break
                    await asyncio.sleep(0.05)
                await asyncio.sleep(0.3)  # time for a second, wrong, send
            finally:
                sender.cancel()
    assert [body["event"] for body in receiver.received] == ["start"]
    assert store.query("SELECT count(*) AS n FROM notifier_deliveries")[0]["n"] == 0


async def test_an_attempt_recorded_by_a_commit_whose_answer_was_lost_is_not_sent_again(services):
    """The retried commit finds the attempt's event there (recorded already): the delivery is
    done, not sent again and again while its record keeps conflicting."""
    store = services.store
    with CallbackReceiver() as receiver:
        job, batch = started_with_callback(store, receiver.url)
        async with notifier_in_process(services) as notifier:
            assert await notifier.on_job_events(batch)
            with answer_lost_once(store) as lost:  # the next commit records the attempt
                sender = asyncio.create_task(notifier.deliver_forever())
                try:
                    for _ in range(100):
                        if lost and not notifier.pending():
                            break
                        await asyncio.sleep(0.05)
                    await asyncio.sleep(2.5)  # a resend would come within 1 s
                finally:
                    sender.cancel()
            assert lost, "the commit's answer was not lost: the test tested nothing"
            assert not notifier.pending()
    assert [body["event"] for body in receiver.received] == ["start"]
    delivered = [e for e in services.events(job.job_id) if isinstance(e, CallbackDelivered)]
    assert len(delivered) == 1
