"""The one way a job comes to be: every dialect submits its jobs through `job_submitted`.

A dialect turns its request into a `RunSpec` (what to execute, its retry policy), the job's
`workflow` and `parameters` (what every view shows) and the `attributes` its own views need;
this module makes the job's first event of them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from taskengine_contracts.events import JobSubmitted, RunSpec

from taskengine_core.ids import job_stream

DEFAULT_PRIORITY = 5


def job_submitted(
    job_id: int,
    client: str,
    at: datetime,
    *,
    workflow: str,
    parameters: dict[str, Any],
    run: RunSpec,
    dialect: str = "taskengine",
    priority: int = DEFAULT_PRIORITY,
    run_at: datetime | None = None,
    semaphore_url: str | None = None,
    callbacks: list[str] | None = None,
    task_id: UUID | None = None,
    concurrency_key: str | None = None,
    attributes: dict[str, Any] | None = None,
) -> JobSubmitted:
    """Job `job_id`'s submission at `at`: `scheduled` while `run_at` is ahead or a
    `semaphore_url` must open first, else `queued`."""
    run_at = run_at or at
    waits = semaphore_url is not None or run_at > at
    return JobSubmitted(
        id=job_stream(job_id),
        version=1,
        at=at,
        job_id=job_id,
        client=client,
        workflow=workflow,
        parameters=parameters,
        priority=priority,
        run_at=run_at,
        state="scheduled" if waits else "queued",
        run=run,
        callbacks=callbacks or [],
        dialect=dialect,
        semaphore_url=semaphore_url,
        task_id=task_id,
        concurrency_key=concurrency_key,
        attributes=attributes or {},
    )
