"""Pacing the followers off a job's way to its start (TASKENGINE_FOLLOW_INTERVAL), on real
NATS and PostgreSQL: what comes during the interval is taken as one batch."""

from __future__ import annotations

import asyncio

import nats
from taskengine_contracts import subjects
from taskengine_contracts.events import encode
from taskengine_runtime.bus import BatchConsumer

from tests.support.factories import submitted
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
            js, "paced", [subjects.JOBS], handler, 0, track, reject, latest, interval=2.0
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
