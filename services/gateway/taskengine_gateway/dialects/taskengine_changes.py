"""What a Task Engine `PATCH /jobs/<id>` does to a job, as lifecycle events (a pure function;
its fields' refusals are worded as the gateway's `BadRequest`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from taskengine_contracts.events import (
    JobBroken,
    JobEvent,
    JobPaused,
    JobQueued,
    JobScheduled,
    JobUpdated,
)
from taskengine_core.errors import IllegalTransition
from taskengine_core.jobs import Job, JobRef, JobState, advance

from taskengine_gateway.dialects.taskengine_errors import UPDATABLE
from taskengine_gateway.dialects.taskengine_fields import (
    SEMAPHORE_FIELDS,
    parse_priority,
    parse_run_at,
    parse_semaphore,
)
from taskengine_gateway.errors import BadRequest

S = JobState
WAITING = (S.SCHEDULED, S.QUEUED, S.PAUSED, S.RETRY_WAIT)


def plan_patch(
    job: Job, data: dict[str, Any], by: str, now: datetime
) -> tuple[list[JobEvent], list[str]]:
    """The events that apply `data` (the fields of a `JobUpdate` sent) to `job`, in order,
    and the `field=value` summary.

    Raises BadRequest for a bad field and IllegalTransition for a move the lifecycle forbids.
    """
    if data.get("client", job.client) != job.client:
        raise BadRequest(f"job {job.job_id} does not belong to client {data['client']!r}")
    events: list[JobEvent] = []
    done: list[str] = []
    ref = job.ref

    def add(event: JobEvent) -> None:
        nonlocal ref
        events.append(event)
        ref = JobRef.of(event)

    def wait_for_run_at() -> None:
        add(
            advance(
                ref,
                JobScheduled,
                at=now,
                workflow=job.workflow,
                priority=priority,
                run_at=run_at,
                attempts=job.attempt,
                semaphore_url=semaphore,
                concurrency_key=job.concurrency_key,
            )
        )

    def queue(reason: str) -> None:
        add(
            advance(
                ref,
                JobQueued,
                at=now,
                workflow=job.workflow,
                priority=priority,
                reason=reason,
                attempts=job.attempt,
                concurrency_key=job.concurrency_key,
            )
        )

    priority, persist, run_at, semaphore = job.priority, job.persist, job.run_at, job.semaphore_url
    changed = []
    if "priority" in data:
        priority = parse_priority(data["priority"])
        if job.state not in WAITING:
            raise IllegalTransition(
                f"job {job.job_id} is {job.state}: its priority no longer matters"
            )
        changed.append("priority")
        done.append(f"priority={priority}")
    if "persist" in data:
        if not isinstance(data["persist"], bool):
            raise BadRequest("persist must be true or false")
        if job.state in (S.ADMITTED, S.RUNNING):
            raise IllegalTransition(f"job {job.job_id} is {job.state}: set persist when it ends")
        persist = data["persist"]
        changed.append("persist")
        done.append(f"persist={str(persist).lower()}")
    if "run_at" in data:
        run_at = parse_run_at(data["run_at"])
        if job.state not in (S.SCHEDULED, S.QUEUED, S.PAUSED):
            raise IllegalTransition(f"job {job.job_id} is {job.state}: run_at can no longer change")
        done.append(f"run_at={data['run_at']}")
    gate_added = False
    if set(SEMAPHORE_FIELDS) & set(data):
        semaphore = parse_semaphore(data)
        if job.state not in (S.SCHEDULED, S.QUEUED, S.PAUSED):
            raise IllegalTransition(
                f"job {job.job_id} is {job.state}: its semaphore_url no longer matters"
            )
        gate_added = semaphore is not None and job.semaphore_url is None
        changed.append("semaphore_url")
        done.append(f"semaphore_url={semaphore or 'none'}")
    future = run_at > now

    def update(new_run_at: datetime, fields: list[str]) -> None:
        add(
            advance(
                ref,
                JobUpdated,
                at=now,
                workflow=job.workflow,
                priority=priority,
                run_at=new_run_at,
                persist=persist,
                changed=fields,
                semaphore_url=semaphore,
            )
        )

    if job.state != S.PAUSED and (
        ("run_at" in data and future) or (gate_added and job.state == S.QUEUED)
    ):
        if changed:
            update(job.run_at, changed)
        wait_for_run_at()  # for its time, or for its new semaphore to open
    elif changed or "run_at" in data:
        update(run_at, changed + ["run_at"] * ("run_at" in data))
        if "run_at" in data and ref.state == S.SCHEDULED and not semaphore:
            queue("due")  # its time has already come
    if "queue_state" in data:
        target = data["queue_state"]
        if target == "paused":
            add(advance(ref, JobPaused, at=now, by=by))
        elif target == "broken":
            add(advance(ref, JobBroken, at=now, by=by, reason=f"broken by {by}"))
        elif target == "queued":
            if ref.state != S.PAUSED:
                raise IllegalTransition(
                    f"job {job.job_id} is {ref.state}: only a paused job can be queued again"
                )  # noqa: E501
            if future or semaphore:
                wait_for_run_at()
            else:
                queue("resumed")
        else:
            raise BadRequest("queue_state must be paused, broken or queued")
        done.append(f"queue_state={target}")
    if not done:
        raise BadRequest(f"nothing to update: send any of {UPDATABLE}")
    return events, done
