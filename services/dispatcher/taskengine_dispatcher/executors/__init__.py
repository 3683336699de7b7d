"""Executors: where an attempt runs, behind one interface.

An `Executor` turns an admitted attempt (`Start`) into an `Attempt`: `run` starts it and
returns how it ended, `stop` cancels it (its job was cancelled or broken), `after_end` runs
once its end is recorded. Which executor runs an attempt is the run spec's kind and the
configured executor's choice (`Dispatcher.executor_for`):

- `local.py`: the steps run in-process on the dispatcher (any kind on the local executor,
  and kind `steps` everywhere); their output goes to the attempt's `Sink`.
- `process.py`: a `taskengine worker` subprocess per attempt, which reports to the gateway.
- `kubernetes.py`: a batch/v1 Job per attempt, a worker's or a container's; Jobs outlive the
  dispatcher, so a restarted one `adopt`s those of attempts still running.

A remote attempt (`reports`) may be ended by its worker's reports first: its outcome ends it
only unless its job moved on. A local one's outcome is the attempt's end.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from taskengine_contracts.events import JobSubmitted, LogLine
from taskengine_core.jobs import Job, JobRef
from taskengine_core.steps import Outcome, StepEvent
from taskengine_core.workflows import Step, workflow


@dataclass(frozen=True)
class Start:
    """One admitted attempt to start: the job (its ref as admitted), the attempt's number,
    the job's submission, the memory limit it runs with (raised after an OOM kill) and how
    long it may take."""

    ref: JobRef
    attempt: int
    submitted: JobSubmitted
    memory: str | None
    timeout: float

    def steps(self) -> list[Step]:
        """The steps of the job's workflow for this attempt (ValueError or DomainError: they
        cannot run); a container has none, its image runs instead."""
        if self.submitted.run.kind == "container":
            return []
        return workflow(self.submitted.workflow).steps(self.submitted.parameters, self.attempt)


@dataclass(frozen=True)
class Placement:
    """Where an attempt runs, as its JobStarted records it."""

    executor: str
    memory: str | None = None
    cluster: str | None = None
    job_name: str | None = None


class Sink(Protocol):
    """Where an attempt's output goes until the dispatcher stores it."""

    def emit(self, line: LogLine) -> None: ...

    def on_step(self, step: StepEvent) -> None: ...


class Attempt(Protocol):
    placement: Placement
    reports: bool
    """Its worker reports to the gateway, which may end the attempt first."""

    async def run(self) -> Outcome | None:
        """Starts the attempt and waits until it ended; how (None: it was stopped). Cancelled
        (the dispatcher stops), a process is killed, a Kubernetes Job kept."""
        ...

    def stop(self) -> None:
        """Cancels it: its job was cancelled or broken."""
        ...

    async def after_end(self) -> None:
        """Once its end is recorded (e.g. a worker past its timeout is killed now)."""
        ...


class Executor(Protocol):
    name: str
    """What JobStarted records as the attempt's `executor`."""
    runs_as: str
    """What its attempts run as, for the log: `Kubernetes Job(s)`."""

    def attempt(self, start: Start, sink: Sink) -> Attempt | None:
        """The attempt to `run` (nothing happens before); None: it has nothing to run, so it
        succeeds as it starts. Raises ValueError or DomainError when it cannot start."""
        ...

    def adopt(self, job: Job, attempt: int) -> Attempt | None:
        """The attempt a restarted dispatcher finds still running (the store says so) to
        supervise again; None: it died with the dispatcher."""
        ...

    async def close(self) -> None: ...
