"""How an attempt ends: the event the dispatcher appends for an attempt's outcome (a failure
is decided by the core's one retry rule, `retries.after_failure`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from taskengine_contracts.events import JobEvent, JobSucceeded, RunSpec
from taskengine_core.jobs import Job, JobRef, advance
from taskengine_core.retries import RetrySettings, after_failure
from taskengine_core.steps import Outcome


@dataclass(kw_only=True)
class Running:
    """A job's running attempt, as what ends it carries: the job's ref (as the attempt's start
    left it), its workflow, priority, callbacks, custom data, run spec and concurrency key, and
    the memory limit it runs with when raised after an OOM kill."""

    ref: JobRef
    workflow: str
    priority: int
    attempt: int
    callbacks: list[str] = field(default_factory=list)
    custom_data: object = None
    run: RunSpec = field(default_factory=RunSpec)
    concurrency_key: str | None = None
    memory: str | None = None

    @classmethod
    def of(cls, job: Job, callbacks: list[str], custom_data: object = None) -> Running:
        """The job's current attempt, as the job now stands."""
        return cls(
            ref=job.ref,
            workflow=job.workflow,
            priority=job.priority,
            attempt=job.attempt,
            callbacks=callbacks,
            custom_data=custom_data,
            run=job.run,
            concurrency_key=job.concurrency_key,
            memory=job.memory,
        )


def ended(
    running: Running,
    outcome: Outcome,
    settings: RetrySettings,
    metadata: dict[str, object] | None = None,
) -> JobEvent:
    """The event ending an attempt: success, or what the retry rule makes of a failure or
    timeout under the job's run spec (its retry policy, its memory)."""
    if outcome.status == "succeeded":
        return advance(
            running.ref,
            JobSucceeded,
            workflow=running.workflow,
            attempt=running.attempt,
            callbacks=running.callbacks,
            custom_data=running.custom_data,
        )
    return after_failure(
        running.ref,
        outcome,
        running.run,
        settings,
        workflow=running.workflow,
        priority=running.priority,
        attempt=running.attempt,
        concurrency_key=running.concurrency_key,
        memory=running.memory,
        callbacks=running.callbacks,
        custom_data=running.custom_data,
        metadata=metadata,
    )


def ended_now(
    job: Job,
    outcome: Outcome,
    settings: RetrySettings,
    callbacks: list[str],
    custom_data: object = None,
) -> JobEvent:
    """The event ending the job's current attempt, decided on the job as it now stands (its
    worker vanished or timed out, its dispatcher restarted). A remote worker's attempt ends as
    its report would have: the exit code in the metadata it reports."""
    worker = job.run.kind == "worker" and outcome.exit_code is not None
    metadata: dict[str, object] | None = {"exit_code": outcome.exit_code} if worker else None
    return ended(Running.of(job, callbacks, custom_data), outcome, settings, metadata)
