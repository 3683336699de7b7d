"""Pacing the followers off a job's way to its start (TASKENGINE_FOLLOW_INTERVAL for the
projector, TASKENGINE_REACTION_INTERVAL for the scheduler and the notifier), on real
NATS and PostgreSQL: what comes during the interval is taken as one batch."""

from __future__ import annotations

import asyncio

import nats
from taskengine_contracts import subjects
from taskengine_contracts.events import encode
from taskengine_runtime.bus import BatchConsumer

from tests.support.factories import started, submitted
from tests.support.receiver import CallbackReceiver
from tests.support.system import reset_stream
from tests.support.waiting import wait_until


def test_a_paced_consumer_takes_what_came_during_its_interval_as_one_batch(nats_url):
    reset_stream(nats_url)
    batches: list[list[int]] = []

    async def run() -> None:
        nc = await nats.connect(nats_url)
        js = nc.jetstream()

        async def publish(position: int) -> None:
            headers = {subjects.POSITION_HEADER: str(position)}
            await js.publish("taskengine.job.submitted", encode(submitted()), headers=headers)

        progressed = asyncio.Event()

        async def handler(batch) -> bool:  # type: ignore[no-untyped-def]
            batches.append([item.position for item in batch])
            progressed.set()
            return True

        async def handled(count: int) -> None:
            while sum(map(len, batches)) < count:
                progressed.clear()
                await progressed.wait()

        async def track(position: int) -> None:
            return None

        async def reject(items, position) -> None:  # type: ignore[no-untyped-def]
            raise AssertionError(items)

        async def latest() -> int:
            return 3

        consumer = BatchConsumer(
            nc, "paced", [subjects.JOBS], handler, 0, track, reject, latest, interval=2.0
        )
        task = asyncio.create_task(consumer.run())
        try:
            await publish(1)
            await handled(1)
            await publish(2)  # within the interval: they wait for its end, together
            await asyncio.sleep(0.3)
            await publish(3)
            await handled(3)
        finally:
            task.cancel()
            await nc.close()

    asyncio.run(asyncio.wait_for(run(), 60))
    assert batches == [[1], [2, 3]]


def test_the_paced_projector_projects_commits_of_its_interval_in_one_transaction(services):
    services.env["TASKENGINE_FOLLOW_INTERVAL"] = "1"
    services.start("projector")
    first, second, third = submitted(), submitted(), submitted()
    services.store.commit([first])
    wait_until(lambda: rows(services, first.job_id), what="the first job projected")
    services.store.commit([second])  # two commits, one after the other
    services.store.commit([third])
    wait_until(lambda: rows(services, third.job_id), what="the others projected")
    # Rows written in one transaction share its id (xmin).
    [(one,)], [(two,)] = rows(services, second.job_id), rows(services, third.job_id)
    assert one == two != rows(services, first.job_id)[0][0]


def rows(services, job_id: int) -> list[tuple[str]]:  # type: ignore[no-untyped-def]
    found = services.store.query("SELECT xmin::text AS x FROM rm_jobs WHERE job_id = %s", (job_id,))
    return [(row["x"],) for row in found]


def test_the_notifier_is_paced_by_the_reaction_interval_not_the_projectors(services):
    services.env["TASKENGINE_REACTION_INTERVAL"] = "1"
    services.env["TASKENGINE_FOLLOW_INTERVAL"] = "0"
    services.env["TASKENGINE_HOP_TRACE"] = "true"  # each batch's received instant, per event
    services.start("relay", "notifier")
    trace = services.data_dir / "run" / "hops-notifier.csv"
    with CallbackReceiver() as receiver:
        first, second = submitted(callbacks=[receiver.url]), submitted(callbacks=[receiver.url])
        services.store.commit([first])
        services.store.commit([started(first, [receiver.url])])
        wait_until(lambda: started_batches(trace), timeout=90, what="the first batch")
        services.store.commit([second])  # at once: unpaced, handled a moment later
        services.store.commit([started(second, [receiver.url])])
        wait_until(lambda: len(receiver.received) > 1, what="the second callback")
    one, two = started_batches(trace)
    # Pacing: the batch with the second job's start began a whole interval after the first's.
    assert two - one >= 0.99
    assert [body["job_id"] for body in receiver.received] == [first.job_id, second.job_id]


def started_batches(trace) -> list[float]:  # type: ignore[no-untyped-def]
    """When the notifier received the batch of each job.started it handled, in order (the
    hop trace's `received`)."""
    lines = trace.read_text().splitlines()[1:] if trace.exists() else []
    return [float(line.split(",")[5]) for line in lines if line.split(",")[1] == "job.started"]
