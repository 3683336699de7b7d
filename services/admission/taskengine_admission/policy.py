"""Which waiting jobs get a slot: priority order (1 highest), then first come first served.

At most `max_jobs` run at once; `priority_slots` of them are reserved for jobs whose priority
is at or above `priority_threshold` (numerically <=). Priority jobs use reserved slots first,
so ordinary jobs are never kept waiting by a priority job that could have used a reserved one.
A job with a `concurrency_key` waits while another job of its client with that key holds a
slot (it keeps its place; jobs behind it that may run are not held up).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID


@dataclass(slots=True)
class Entry:
    job_uuid: UUID
    job_id: int
    client: str
    workflow: str
    priority: int
    version: int
    queued_at: datetime
    admitted: bool = False
    attempt: int = 0
    concurrency_key: str | None = None

    @property
    def exclusive(self) -> tuple[str, str] | None:
        """What at most one admitted job may hold at a time: the client's concurrency key."""
        return None if self.concurrency_key is None else (self.client, self.concurrency_key)

    @property
    def order(self) -> tuple[int, datetime, int]:
        return (self.priority, self.queued_at, self.job_id)


@dataclass(frozen=True)
class Limits:
    max_jobs: int
    priority_slots: int
    priority_threshold: int

    def is_priority(self, entry: Entry) -> bool:
        return entry.priority <= self.priority_threshold


def choose(entries: Iterable[Entry], limits: Limits) -> list[Entry]:
    """The waiting entries to admit now, in admission order."""
    reserved = min(limits.priority_slots, limits.max_jobs)
    running_priority = running_ordinary = 0
    waiting = []
    held: set[tuple[str, str]] = set()
    for entry in entries:
        if entry.admitted:
            if entry.exclusive:
                held.add(entry.exclusive)
            if limits.is_priority(entry):
                running_priority += 1
            else:
                running_ordinary += 1
        else:
            waiting.append(entry)
    chosen = []
    for entry in sorted(waiting, key=lambda e: e.order):
        if running_priority + running_ordinary >= limits.max_jobs:
            break
        if entry.exclusive in held:
            continue
        # Ordinary jobs share the unreserved slots with priority jobs that overflowed theirs.
        overflow = max(0, running_priority - reserved)
        if limits.is_priority(entry):
            running_priority += 1
        elif running_ordinary + overflow < limits.max_jobs - reserved:
            running_ordinary += 1
        else:
            continue
        if entry.exclusive:
            held.add(entry.exclusive)
        chosen.append(entry)
    return chosen
