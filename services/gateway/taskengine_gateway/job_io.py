"""Reading and changing jobs (and tasks) for every dialect's controller: a job folded from its
stream (read-your-writes), and a change committed with a retry when it raced another writer.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from taskengine_contracts.events import Event, JobEvent
from taskengine_core.ids import job_stream
from taskengine_core.jobs import Job
from taskengine_store.store import Conflict

from taskengine_gateway.state import GatewayState

JOB_NUMBER = re.compile(r"[0-9]{1,18}")
ATTEMPTS = 3
"""Tries of a change that raced another (e.g. the dispatcher's or the scheduler's)."""

S = TypeVar("S")
R = TypeVar("R")


async def job_numbered(gateway: GatewayState, job_id: str) -> Job | None:
    """The job `job_id` (its number, as text) names, or None: no such job, or not a number."""
    if not JOB_NUMBER.fullmatch(job_id):
        return None
    events = await gateway.runtime.call(gateway.runtime.store.stream, job_stream(int(job_id)))
    return Job.fold(e for e in events if isinstance(e, JobEvent))


async def jobs_numbered(gateway: GatewayState, numbers: Sequence[int]) -> list[Job | None]:
    """The jobs `numbers` name, in their order (None where there is none)."""
    streams = [job_stream(number) for number in numbers]
    found = await gateway.runtime.call(gateway.runtime.store.streams, streams)
    return [Job.fold(e for e in found[s] if isinstance(e, JobEvent)) for s in streams]


async def commit(
    gateway: GatewayState, events: Sequence[Event], statements: Sequence[Any] = ()
) -> None:
    """Stores `events` (and `statements`) in one transaction; raises `Conflict` if a stream
    moved meanwhile."""
    await gateway.runtime.call(gateway.runtime.store.commit, events, None, statements)


@dataclass
class Planned(Generic[R]):
    """What a change commits, and what the request answers once it did."""

    events: Sequence[Event]
    answer: R
    statements: Sequence[Any] = field(default_factory=tuple)


async def change(
    gateway: GatewayState,
    load: Callable[[], Awaitable[S]],
    plan: Callable[[S], Awaitable[Planned[R]]],
    kept_changing: Exception,
) -> R:
    """Loads, plans and commits; when something else changed the subject meanwhile, loads and
    plans again (`ATTEMPTS` tries, then `kept_changing` is raised)."""
    for _ in range(ATTEMPTS):
        planned = await plan(await load())
        try:
            await commit(gateway, planned.events, planned.statements)
        except Conflict:
            continue
        return planned.answer
    raise kept_changing
