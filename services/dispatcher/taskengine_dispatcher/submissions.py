"""What the dispatcher knows of the jobs it may start, from the events it consumed: each
job's submission (its run spec, workflow, parameters, callbacks) and the memory limit a
retry after an OOM kill raised.

The dispatcher consumes `job.submitted` and `job.retry_scheduled` for this, so starting an
admitted job reads nothing back. What it keeps is bounded, in jobs (`LIMIT`) and in bytes of
parameters (`BUDGET`, so one client's many large submissions cannot fill the dispatcher's
memory): the least recently used is forgotten first, an ended job at once. A job it does not
know (submitted before its last restart, or forgotten) is read from the store with the rest of
its batch.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from uuid import UUID

import msgspec
from taskengine_contracts.events import (
    TERMINAL_JOB_EVENTS,
    Event,
    JobEvent,
    JobRetryScheduled,
    JobSubmitted,
)
from taskengine_core.jobs import Job
from taskengine_store.store import EventStore

LIMIT = 20_000
BUDGET = 64 * 1024 * 1024
"""Bytes of parameters (as JSON) kept at most."""


@dataclass
class Submission:
    """A job as the dispatcher starts it: its submission and its next attempt's memory."""

    submitted: JobSubmitted
    memory: str | None = None
    size: int = 0
    """What keeping it costs: its parameters' size as JSON."""
    """The memory limit of the next attempt when raised after OOMKilled (see Job.memory)."""

    @property
    def attempt_memory(self) -> str | None:
        """The memory limit the job's next attempt runs with: raised, else its run's."""
        return self.memory or self.submitted.run.resources.memory


class Submissions:
    def __init__(self, limit: int = LIMIT, budget: int = BUDGET):
        self.limit = limit
        self.budget = budget
        self.bytes = 0
        self.kept: OrderedDict[UUID, Submission] = OrderedDict()

    def apply(self, event: Event) -> None:
        """Keeps what a consumed (or appended) job event says of what the job runs."""
        if isinstance(event, JobSubmitted):
            self._forget(event.id)
            size = len(msgspec.json.encode(event.parameters))
            if size > self.budget:
                return  # read back when admitted
            self.kept[event.id] = Submission(event, size=size)
            self.bytes += size
            while len(self.kept) > self.limit or self.bytes > self.budget:
                self.bytes -= self.kept.popitem(last=False)[1].size
        elif isinstance(event, JobRetryScheduled) and event.memory:
            if (known := self.kept.get(event.id)) is not None:
                known.memory = event.memory
        elif isinstance(event, TERMINAL_JOB_EVENTS):
            self._forget(event.id)

    def _forget(self, job: UUID) -> None:
        if (known := self.kept.pop(job, None)) is not None:
            self.bytes -= known.size

    def known(self, jobs: list[UUID]) -> tuple[dict[UUID, Submission], list[UUID]]:
        """The submissions of `jobs` it keeps, and the jobs it does not know."""
        found, missing = {}, []
        for job in jobs:
            if (submission := self.kept.get(job)) is not None:
                self.kept.move_to_end(job)
                found[job] = submission
            else:
                missing.append(job)
        return found, missing


def read(store: EventStore, jobs: list[UUID]) -> dict[UUID, Submission]:
    """The submissions of jobs the dispatcher does not know, from their streams (blocking)."""
    found = {}
    for job_uuid, events in store.streams(jobs).items():
        job = Job.fold(e for e in events if isinstance(e, JobEvent))
        if job is not None and isinstance(events[0], JobSubmitted):
            found[job_uuid] = Submission(events[0], job.memory)
    return found
