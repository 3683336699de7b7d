"""How an attempt ends: the event the dispatcher appends for an attempt's outcome (a failure
is decided by the core's one retry rule, `retries.after_failure`)."""

from __future__ import annotations

from taskengine_contracts.events import JobEvent, JobSucceeded, RunSpec
from taskengine_core.jobs import Job, JobRef, advance
from taskengine_core.retries import RetrySettings, after_failure
from taskengine_core.settings import RuntimeSettings
from taskengine_core.steps import Outcome


def ended(
    ref: JobRef,
    workflow_name: str,
    priority: int,
    attempt: int,
    callbacks: list[str],
    outcome: Outcome,
    settings: RuntimeSettings,
    custom_data: object = None,
    run: RunSpec | None = None,
    concurrency_key: str | None = None,
    max_memory: str = "16Gi",
    memory: str | None = None,
    metadata: dict[str, object] | None = None,
) -> JobEvent:
    """The event ending an attempt: success, or what the retry rule makes of a failure or
    timeout under the job's run spec (its retry policy, its memory)."""
    if outcome.status == "succeeded":
        final = {"callbacks": callbacks, "custom_data": custom_data}
        return advance(ref, JobSucceeded, workflow=workflow_name, attempt=attempt, **final)
    return after_failure(
        ref,
        outcome,
        run or RunSpec(),
        RetrySettings.of(settings, max_memory),
        workflow=workflow_name,
        priority=priority,
        attempt=attempt,
        concurrency_key=concurrency_key,
        memory=memory,
        callbacks=callbacks,
        custom_data=custom_data,
        metadata=metadata,
    )


def ended_now(
    job: Job,
    outcome: Outcome,
    settings: RuntimeSettings,
    callbacks: list[str],
    custom_data: object = None,
    max_memory: str = "16Gi",
) -> JobEvent:
    """The event ending the job's current attempt, decided on the job as it now stands (its
    worker vanished or timed out, its dispatcher restarted). A remote worker's attempt ends as
    its report would have: the exit code in the metadata it reports."""
    worker = job.run.kind == "worker" and outcome.exit_code is not None
    return ended(
        job.ref,
        job.workflow,
        job.priority,
        job.attempt,
        callbacks,
        outcome,
        settings,
        custom_data,
        job.run,
        job.concurrency_key,
        max_memory,
        job.memory,
        {"exit_code": outcome.exit_code} if worker else None,
    )
