"""A Task Engine job's submission: `POST /job` (its fields checked by the controller) and a
rerun of a job, both through the one factory (`job_submitted`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from taskengine_contracts.events import JobBroken, JobEvent, JobSubmitted, RunSpec

from taskengine_core.dialects.taskengine import DIALECT
from taskengine_core.jobs import Job, JobState, advance
from taskengine_core.submission import job_submitted


def submitted(
    job_id: int,
    client: str,
    at: datetime,
    *,
    workflow: str,
    parameters: dict[str, Any],
    priority: int,
    run_at: datetime | None,
    semaphore_url: str | None,
    callbacks: list[str],
    timeout: float | None,
) -> JobSubmitted:
    """The job `POST /job` submits: its workflow with its parameters, within `timeout`."""
    return job_submitted(
        job_id,
        client,
        at,
        workflow=workflow,
        parameters=parameters,
        run=RunSpec(timeout=timeout),
        dialect=DIALECT,
        priority=priority,
        run_at=run_at,
        semaphore_url=semaphore_url,
        callbacks=callbacks,
    )


def plan_rerun(
    job: Job,
    number: int,
    by: str,
    now: datetime,
    callbacks: list[str],
    attributes: dict[str, Any] | None = None,
) -> list[JobEvent]:
    """A new job running exactly what the original ran (its run spec, parameters and its
    dialect's attributes, or `attributes` where its dialect gives a rerun its own, e.g. a
    Drove instance id); the original becomes broken."""
    rerun = job_submitted(
        number,
        job.client,
        now,
        workflow=job.workflow,
        parameters=job.parameters,
        run=job.run,
        dialect=job.dialect,
        priority=job.priority,
        semaphore_url=job.semaphore_url,
        callbacks=callbacks,
        task_id=job.task_id,
        concurrency_key=job.concurrency_key,
        attributes=job.attributes if attributes is None else attributes,
    )
    if job.state == JobState.BROKEN:
        return [rerun]
    return [rerun, advance(job.ref, JobBroken, at=now, by=by, reason="rerun", rerun_as=number)]
