"""A client's schedule searches go one at a time; other clients' do not wait for them."""

from __future__ import annotations

import asyncio

from taskengine_gateway.quotas import TaskQuota


async def test_a_clients_searches_wait_for_each_other_but_not_for_other_clients():
    quota = TaskQuota()
    inside: list[str] = []
    hostile_may_leave = asyncio.Event()

    async def search(client: str, release: asyncio.Event | None = None) -> None:
        async with quota.searching(client):
            inside.append(client)
            if release is not None:
                await release.wait()
            inside.remove(client)

    first = asyncio.create_task(search("hostile", hostile_may_leave))
    await asyncio.sleep(0)
    second = asyncio.create_task(search("hostile"))
    await asyncio.sleep(0.05)
    assert inside == ["hostile"]  # the second search of the same client waits

    await asyncio.wait_for(search("other"), timeout=1)  # another client goes straight through

    hostile_may_leave.set()
    await asyncio.wait_for(asyncio.gather(first, second), timeout=1)
    assert inside == []
