"""Counted quotas per client in this gateway process: open WebSockets, and a gate that makes a
client's scheduled-task creations count what the read model has not projected yet.

Both are kept in memory: with several gateway replicas, the socket cap holds per replica and two
creations through different replicas at the same instant may overshoot the task cap by one each
(the read model catches up within the projector's lag).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from uuid import UUID

from taskengine_core.config import EngineSettings
from taskengine_core.quotas import priority_allowed
from taskengine_runtime import Runtime


class QuotaExceeded(Exception):
    """One more would exceed a client's quota; the message says which and how to free one."""


@dataclass
class SocketQuota:
    """Open WebSockets per client."""

    open: dict[str, int] = field(default_factory=dict)

    def take(self, client: str, most: int) -> bool:
        """Counts one more socket of `client`, unless it holds `most` already (then False)."""
        if self.open.get(client, 0) >= most:
            return False
        self.open[client] = self.open.get(client, 0) + 1
        return True

    def give_back(self, client: str) -> None:
        self.open[client] -= 1
        if not self.open[client]:
            del self.open[client]


@dataclass
class TaskQuota:
    """Serializes a client's task creations in this process and remembers the tasks created
    here until the read model shows them, so a burst cannot outrun the projector."""

    locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    unprojected: dict[str, set[UUID]] = field(default_factory=dict)
    searches: dict[str, asyncio.Lock] = field(default_factory=dict)

    @asynccontextmanager
    async def searching(self, client: str) -> AsyncIterator[None]:
        """One schedule search at a time per client: the search threads are shared, so a client
        flooding costly rules waits for its own searches and holds at most one thread."""
        async with self.searches.setdefault(client, asyncio.Lock()):
            yield

    @asynccontextmanager
    async def creating(self, client: str) -> AsyncIterator[set[UUID]]:
        """Inside, the caller counts, creates and adds the new task's id to the set given."""
        # One lock per authenticated client name: as many as there are clients.
        async with self.locks.setdefault(client, asyncio.Lock()):
            pending = self.unprojected.setdefault(client, set())
            try:
                yield pending
            finally:
                if not pending:
                    del self.unprojected[client]


ACTIVE_TASKS = (
    "SELECT (SELECT count(*) FROM rm_tasks WHERE client = %s AND status IN ('active', 'paused'))"
    " AS live, ARRAY(SELECT task_uuid FROM rm_tasks WHERE task_uuid = ANY(%s)) AS seen"
)


async def refuse_over_task_quota(
    runtime: Runtime, client: str, pending: set[UUID], most: int
) -> None:
    """Raises QuotaExceeded when `client` has `most` tasks active or paused: those of the read
    model plus those created here that it does not show yet (`pending`, pruned here)."""
    [row] = await runtime.call(runtime.store.query, ACTIVE_TASKS, (client, list(pending)))
    pending.difference_update(row["seen"])
    if row["live"] + len(pending) >= most:
        raise QuotaExceeded(
            f"quota exceeded: at most {most} scheduled tasks active or paused per client;"
            " cancel one first"
        )


def priority_reserved(priority: int, admin: bool, config: EngineSettings) -> bool:
    """Whether engine `priority` is more urgent than a client (not an admin) may use."""
    return not priority_allowed(priority, config.top_priority, admin)
