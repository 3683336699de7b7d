"""Events as the services would write them, with unique job numbers per test."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime, timedelta
from typing import Literal

from taskengine_contracts.events import JobStarted, JobSubmitted, RunSpec, SettingChanged
from taskengine_core.ids import SETTINGS_STREAM, job_stream

_numbers = itertools.count(random.randrange(10**6, 10**9, 10**5))


def job_number() -> int:
    return next(_numbers)


def submitted(
    workflow: str = "noop",
    priority: int = 5,
    delay: float = 0.0,
    parameters: dict | None = None,
    callbacks: list[str] | None = None,
    timeout: float | None = None,
    client: str = "tester",
    job_id: int | None = None,
    kind: Literal["steps", "worker", "container"] = "steps",
) -> JobSubmitted:
    number = job_id or job_number()
    now = datetime.now(UTC)
    return JobSubmitted(
        id=job_stream(number),
        version=1,
        at=now,
        job_id=number,
        client=client,
        workflow=workflow,
        parameters=parameters or {},
        priority=priority,
        run_at=now + timedelta(seconds=delay),
        state="scheduled" if delay > 0 else "queued",
        run=RunSpec(kind=kind, timeout=timeout),
        callbacks=callbacks or [],
    )


def started(job: JobSubmitted, callbacks: list[str], version: int = 3) -> JobStarted:
    """`job` started (its first attempt), after its admission (version 2)."""
    return JobStarted(
        id=job.id,
        version=version,
        at=job.at,
        job_id=job.job_id,
        client=job.client,
        workflow=job.workflow,
        attempt=1,
        executor="test",
        callbacks=callbacks,
    )


def settings(store, **values: int) -> None:  # type: ignore[no-untyped-def]
    """Appends settings changes the way POST /settings does."""
    version = len(store.stream(SETTINGS_STREAM))
    events = []
    for name, value in values.items():
        version += 1
        events.append(
            SettingChanged(
                id=SETTINGS_STREAM,
                version=version,
                at=datetime.now(UTC),
                name=name,
                value=str(value),
            )
        )
    store.commit(events)
