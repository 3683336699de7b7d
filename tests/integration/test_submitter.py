"""The gateway's group commit (`Submitter`) on the real store, when a commit's answer is lost:
PostgreSQL committed, then the connection died before the answer came."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from taskengine_contracts.events import JobSubmitted
from taskengine_core.config import EngineSettings
from taskengine_gateway import submitter as submitter_module
from taskengine_gateway.submitter import CROWD, Submitter
from taskengine_runtime import Runtime
from taskengine_store.store import Conflict

from tests.support.factories import submitted
from tests.support.lost_answer import answer_lost_once


def stored_jobs(store) -> list[int]:  # type: ignore[no-untyped-def]
    found, after = [], 0
    while batch := store.events_after(after, 5000):
        found += [p.event.job_id for p in batch if isinstance(p.event, JobSubmitted)]
        after = batch[-1].position
    return found


@asynccontextmanager
async def submitter_in_process(services) -> AsyncIterator[tuple[Submitter, int]]:  # type: ignore[no-untyped-def]
    """A gateway's submitter on the test's store, and the number of a first job it stored (so
    a block of numbers is reserved: the next commit is the next use of the store)."""
    config = EngineSettings(data_dir=services.data_dir)
    submitter = Submitter(Runtime("gateway", config, services.store, None, None))  # type: ignore[arg-type]
    submitter.start()
    try:
        yield submitter, await submit(submitter)
    finally:
        await submitter.stop()


async def submit(submitter: Submitter) -> int:
    return await submitter.submit(lambda n: [submitted(job_id=n)])


async def test_jobs_stored_by_a_commit_whose_answer_was_lost_are_acknowledged_once(services):
    """Each concurrent submission of the batch gets its number, and each job is stored once:
    the client is not told of a failure for a job that runs (its retry would make a second)."""
    store = services.store
    async with submitter_in_process(services) as (submitter, first):
        with answer_lost_once(store) as lost:
            numbers = await asyncio.gather(*(submit(submitter) for _ in range(5)))
        assert lost, "the commit's answer was not lost: the test tested nothing"
        assert len(set(numbers)) == 5
        assert sorted(stored_jobs(store)) == sorted([first, *numbers])  # each once
        after = await submit(submitter)  # the submitter goes on as before
        assert stored_jobs(store).count(after) == 1


async def test_a_job_number_stored_before_fails_its_batch_and_is_not_acknowledged(services):
    """A Conflict that is not the commit's own (here, a stream already holding another
    submission under the number, as after a sequence reset) is not taken for a lost answer."""
    store = services.store
    async with submitter_in_process(services) as (submitter, first):
        store.commit([submitted(job_id=first + 1, client="someone-else")])
        with pytest.raises(Conflict):
            await submit(submitter)
        assert stored_jobs(store).count(first + 1) == 1  # the earlier one, alone
        assert await submit(submitter) == first + 2


def recording(submitter: Submitter) -> list[int]:
    """The number of jobs in each of `submitter`'s commits from now on."""
    sizes: list[int] = []
    commit = submitter._commit

    def counted(builds):  # type: ignore[no-untyped-def]
        sizes.append(len(builds))
        return commit(builds)

    submitter._commit = counted  # type: ignore[method-assign]
    return sizes


async def trickle(submitter: Submitter, count: int) -> list[int]:
    """`count` submissions, one a loop turn apart: each comes after the one before it was
    taken, as a crowd of clients' next jobs do."""

    async def later(turns: int) -> int:
        for _ in range(turns):
            await asyncio.sleep(0)
        return await submit(submitter)

    return await asyncio.gather(*(later(3 * n) for n in range(count)))


async def test_after_a_crowd_a_commit_gathers_as_many_jobs_before_it_goes(services, monkeypatch):
    """A crowd of clients whose next jobs come a few loop turns apart shares one commit (as
    many as the last one held); a lone request after a small commit waits for nobody."""
    monkeypatch.setattr(submitter_module, "GATHER", 30.0)  # waiting it out would fail the test
    monkeypatch.setattr(submitter_module, "DISPERSED", 30.0)  # however slow the machine
    async with submitter_in_process(services) as (submitter, _):
        sizes = recording(submitter)
        crowd = await asyncio.gather(*(submit(submitter) for _ in range(CROWD + 2)))
        assert sizes == [CROWD + 2]
        async with asyncio.timeout(10):
            trickled = await trickle(submitter, CROWD + 2)
        assert sizes == [CROWD + 2, CROWD + 2], "the trickle was not gathered into one commit"
        assert sorted(stored_jobs(services.store))[-2 * (CROWD + 2) :] == sorted(crowd + trickled)

        monkeypatch.setattr(submitter_module, "GATHER", 0.2)
        thinned = await trickle(submitter, 3)  # fewer come: they wait GATHER, then go together
        assert sizes[2:] == [3]
        monkeypatch.setattr(submitter_module, "GATHER", 30.0)
        async with asyncio.timeout(10):
            await trickle(submitter, 3)  # after a small commit nobody is waited for
        assert sizes[3] < 3, f"a commit waited for company after a small one: {sizes}"
        assert sorted(stored_jobs(services.store))[-6:-3] == sorted(thinned)


async def test_the_first_job_after_a_crowd_went_quiet_waits_for_nobody(services, monkeypatch):
    """A crowd's last commit does not make the next lone request, long after, wait for it."""
    monkeypatch.setattr(submitter_module, "GATHER", 30.0)  # waiting it out would fail the test
    monkeypatch.setattr(submitter_module, "DISPERSED", 0.05)
    async with submitter_in_process(services) as (submitter, _):
        sizes = recording(submitter)
        await asyncio.gather(*(submit(submitter) for _ in range(CROWD + 2)))
        await asyncio.sleep(0.2)  # the crowd went quiet
        async with asyncio.timeout(10):
            await submit(submitter)
        assert sizes == [CROWD + 2, 1]
