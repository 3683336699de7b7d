"""A scheduled task's lifecycle: folded from its events, and the moves a client may make."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import UUID

import pytest
from taskengine_contracts.events import (
    JobCancelled,
    JobEvent,
    JobSubmitted,
    TaskDefinition,
    TaskFired,
)
from taskengine_core.dialects.scheduled.lifecycle import Task, created, first_fire
from taskengine_core.dialects.scheduled.runs import OPEN_STATES, cancel_runs
from taskengine_core.dialects.scheduled.submission import run_submitted
from taskengine_core.errors import IllegalTransition
from taskengine_core.jobs import Job, advance

NOW = datetime(2025, 3, 1, 10, 17, 30, tzinfo=UTC)


def definition(kind: str = "cron", expr: str | None = "0 3 * * *", **fields) -> TaskDefinition:  # type: ignore[no-untyped-def]
    return TaskDefinition(
        title="t",
        description="",
        schedule_kind=kind,  # type: ignore[arg-type]
        schedule_expr=expr,
        payload={"workflow": "noop"},
        created_by=UUID(int=1),
        **fields,
    )


def new_task(**fields) -> Task:  # type: ignore[no-untyped-def]
    task = Task.fold([created(UUID(int=9), "alice", definition(**fields), NOW)])
    assert task is not None
    return task


def moved(task: Task, event) -> Task:  # type: ignore[no-untyped-def]
    task.apply(event)
    return task


def test_a_new_task_fires_next_by_its_schedule_in_its_timezone():
    assert new_task().next_fire_at == datetime(2025, 3, 2, 3, tzinfo=UTC)
    berlin = new_task(timezone="Europe/Berlin")
    assert berlin.next_fire_at == datetime(2025, 3, 2, 2, tzinfo=UTC)
    assert new_task(kind="event", expr="files.new").next_fire_at is None
    assert new_task(kind="event", expr=None).next_fire_at is None


def test_a_once_instant_in_the_past_fires_at_once_and_only_once():
    past = definition("once", "2025-01-01T00:00:00Z")
    assert first_fire(past, NOW, NOW) == datetime(2025, 1, 1, tzinfo=UTC)
    task = new_task(kind="once", expr="2025-01-01T00:00:00Z")
    fire = TaskFired(
        id=task.id,
        version=2,
        at=NOW,
        client="alice",
        run_id=UUID(int=3),
        trigger="schedule",
        fire_at=task.next_fire_at,  # type: ignore[arg-type]
        job_id=1,
        next_fire_at=None,
    )
    task = moved(task, fire)
    task = moved(task, task.pause("alice", NOW))
    assert moved(task, task.resume("alice", NOW)).next_fire_at is None


def test_pause_resume_cancel_and_what_they_forbid():
    task = new_task()
    paused = moved(task, task.pause("alice", NOW))
    assert (paused.status, paused.next_fire_at) == ("paused", None)
    with pytest.raises(IllegalTransition, match="already paused"):
        paused.pause("alice", NOW)
    with pytest.raises(IllegalTransition, match="resume it first"):
        paused.snooze(60, None, "alice", NOW)
    later = NOW + timedelta(days=3)
    resumed = moved(paused, paused.resume("alice", later))
    assert resumed.next_fire_at == datetime(2025, 3, 5, 3, tzinfo=UTC)  # missed days skipped
    canceled = moved(resumed, resumed.cancel("alice", later))
    assert canceled.status == "canceled" and canceled.next_fire_at is None
    for move in (
        lambda t: t.resume("alice", NOW),
        lambda t: t.pause("alice", NOW),
        lambda t: t.cancel("alice", NOW),
        lambda t: t.run_now("alice", NOW),
        lambda t: t.update(definition(), ["title"], NOW),
    ):
        with pytest.raises(IllegalTransition, match="canceled"):
            move(canceled)


def test_snooze_moves_the_pending_run_by_the_delay_and_records_the_reason():
    task = new_task()
    snoozed = moved(task, task.snooze(3600, "db down", "alice", NOW))
    assert snoozed.next_fire_at == datetime(2025, 3, 2, 4, tzinfo=UTC)
    assert (snoozed.snoozed_until, snoozed.snooze_reason) == (snoozed.next_fire_at, "db down")
    overdue = new_task()
    overdue.next_fire_at = NOW - timedelta(minutes=5)  # due, not fired yet
    assert overdue.snooze(60, None, "a", NOW).next_fire_at == NOW + timedelta(seconds=60)
    with pytest.raises(IllegalTransition, match="no pending run"):
        new_task(kind="event", expr="x").snooze(60, None, "alice", NOW)


def test_an_update_recomputes_the_next_fire_only_when_the_schedule_changes():
    task = new_task()
    same = task.update(definition(priority=1), ["priority"], NOW)
    assert same.next_fire_at == task.next_fire_at
    hourly = task.update(definition(expr="0 * * * *"), ["schedule_expr"], NOW)
    assert hourly.next_fire_at == datetime(2025, 3, 1, 11, tzinfo=UTC)
    paused = moved(task, task.pause("alice", NOW))
    assert paused.update(definition(expr="0 * * * *"), ["schedule_expr"], NOW).next_fire_at is None


def test_run_now_keeps_the_schedule_and_gives_each_request_its_own_run():
    task = new_task()
    first, second = task.run_now("alice", NOW), task.run_now("alice", NOW)
    assert first.next_fire_at == task.next_fire_at and first.run_id != second.run_id


def test_a_stream_must_begin_with_the_creation():
    task = new_task()
    with pytest.raises(IllegalTransition):
        Task.fold([task.pause("alice", NOW)])


def test_cancelling_a_task_cancels_each_run_that_has_not_ended():
    task = new_task()
    for version, job_id in ((2, 41), (3, 42)):
        fire = TaskFired(
            id=task.id,
            version=version,
            at=NOW,
            client="alice",
            run_id=UUID(int=version),
            trigger="run_now",
            fire_at=NOW,
            job_id=job_id,
        )
        task = moved(task, fire)
    assert task.fired_jobs == [41, 42]
    runs = [
        Job.fold([submitted_run(41)]),
        Job.fold([submitted_run(42), *ended_run(42)]),
    ]
    [stopped] = cancel_runs([r for r in runs if r], "alice", NOW)
    assert (stopped.job_id, stopped.version, stopped.by) == (41, 2, "alice")
    assert stopped.reason == "its scheduled task was canceled"
    assert set(OPEN_STATES) == {
        "scheduled",
        "queued",
        "admitted",
        "running",
        "retry_wait",
        "paused",
    }


def submitted_run(job_id: int) -> JobSubmitted:
    return run_submitted(job_id, "alice", NOW, UUID(int=9), definition())


def ended_run(job_id: int) -> list[JobEvent]:
    job = Job.fold([submitted_run(job_id)])
    assert job is not None
    return [advance(job.ref, JobCancelled, at=NOW, reason="by hand", by="alice")]
