"""Scheduled tasks' read models (`rm_tasks`, `rm_task_runs`) built by `project()` on a real
PostgreSQL: each sequence of task and job events gives the right rows, whatever the batching,
applied twice or replayed."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import pytest
from eventsourcing.persistence import Tracking
from taskengine_cli.ops import replay
from taskengine_contracts.events import (
    Event,
    FinishedJobsCleared,
    JobAdmitted,
    JobCancelled,
    JobEvent,
    JobFailed,
    JobQueued,
    JobRetryScheduled,
    JobStarted,
    JobSubmitted,
    JobSucceeded,
    JobTimedOut,
    RunSpec,
    TaskCancelled,
    TaskCreated,
    TaskDefinition,
    TaskEvent,
    TaskFired,
    TaskPaused,
    TaskResumed,
    TaskRunSkipped,
    TaskSnoozed,
    TaskUpdated,
)
from taskengine_core.dialects.scheduled.lifecycle import Task as TaskFold
from taskengine_core.ids import RETENTION_STREAM, job_stream
from taskengine_core.jobs import JobRef, advance
from taskengine_store.projections import PROJECTOR, project
from taskengine_store.schema import READ_MODELS
from taskengine_store.store import EventStore, Position

from tests.support.factories import job_number
from tests.support.servers import drop_database, fresh_database, postgres_server

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
AUTHOR = UUID("0b6a4c1e-2f3d-4e5f-8a9b-0c1d2e3f4a5b")
FOLDED = (
    "client", "status", "version", "created_at", "updated_at", "next_fire_at", "last_fire_at",
    "snoozed_until", "snooze_reason", "runs",
)  # fmt: skip
"""`rm_tasks` columns that are also fields of the task folded from its stream."""
TABLES = (("rm_tasks", "task_uuid"), ("rm_task_runs", "run_id"), ("rm_jobs", "job_uuid"))


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    with postgres_server() as url:
        yield url


@pytest.fixture
def store(postgres: str) -> Iterator[EventStore]:
    url = fresh_database(postgres)
    store = EventStore(url, pool_size=1, create_tables=True)
    yield store
    store.close()
    drop_database(postgres, url)


# --- building histories ------------------------------------------------------------------


def definition(**changes: Any) -> TaskDefinition:
    fields: dict[str, Any] = {
        "title": "nightly report",
        "description": "mails the numbers",
        "schedule_kind": "cron",
        "schedule_expr": "0 3 * * *",
        "timezone": "Europe/Chisinau",
        "payload": {"workflow": "noop", "parameters": {"n": 1}},
        "created_by": AUTHOR,
        "dedupe_key": "report",
        "dedupe_window_seconds": 600,
    }
    return TaskDefinition(**{**fields, **changes})


class Task:
    """One task's stream: each call appends its next event."""

    def __init__(self, client: str = "alice"):
        self.id = uuid4()
        self.client = client
        self.version = 0

    def event(self, kind: type[TaskEvent], seconds: float, **fields: Any) -> Any:
        self.version += 1
        fields.setdefault("next_fire_at", at(seconds + 3600))
        return kind(id=self.id, version=self.version, at=at(seconds), client=self.client, **fields)

    def created(self, seconds: float, **changes: Any) -> TaskCreated:
        return self.event(TaskCreated, seconds, definition=definition(**changes))

    def fired(self, seconds: float, job: Run, trigger: str = "schedule") -> TaskFired:
        return self.event(
            TaskFired, seconds, run_id=uuid4(), trigger=trigger, fire_at=at(seconds - 1),
            job_id=job.job_id,
        )  # fmt: skip

    def skipped(self, seconds: float, duplicate_of: int) -> TaskRunSkipped:
        return self.event(
            TaskRunSkipped, seconds, run_id=uuid4(), trigger="schedule", fire_at=at(seconds - 1),
            reason="duplicate of a run 30 s ago", duplicate_of=duplicate_of,
        )  # fmt: skip


class Run:
    """A run's job (or, without a task, a plain job): its stream, built with the lifecycle's
    own `advance()`."""

    def __init__(self, task: Task | None, seconds: float, state: str = "queued"):
        number = job_number()
        self.job_id = number
        self.submitted = JobSubmitted(
            id=job_stream(number), version=1, at=at(seconds), job_id=number,
            client=task.client if task else "alice", workflow="noop", parameters={}, priority=5,
            run_at=at(seconds), state=state, run=RunSpec(), task_id=task.id if task else None,
        )  # fmt: skip
        self.last: JobEvent = self.submitted

    def then(self, kind: type[JobEvent], seconds: float, **fields: Any) -> Any:
        self.last = advance(JobRef.of(self.last), kind, at=at(seconds), **fields)
        return self.last

    def admitted(self, seconds: float, attempt: int) -> JobAdmitted:
        return self.then(
            JobAdmitted, seconds, workflow="noop", priority=5, attempt=attempt, running=1,
            max_jobs=4,
        )  # fmt: skip

    def started(self, seconds: float, attempt: int) -> JobStarted:
        return self.then(JobStarted, seconds, workflow="noop", attempt=attempt, executor="local-1")

    def retried(self, seconds: float, attempt: int) -> list[JobEvent]:
        return [
            self.then(
                JobRetryScheduled, seconds, workflow="noop", priority=5, attempt=attempt,
                retry_at=at(seconds + 5), reason="exit code 1", exit_code=1,
            ),
            self.then(JobQueued, seconds + 5, workflow="noop", priority=5, reason="retry",
                      attempts=attempt),
        ]  # fmt: skip

    def succeeded(self, seconds: float, attempt: int) -> JobSucceeded:
        return self.then(JobSucceeded, seconds, workflow="noop", attempt=attempt)

    def failed(self, seconds: float, attempt: int) -> JobFailed:
        return self.then(
            JobFailed,
            seconds,
            workflow="noop",
            attempt=attempt,
            reason="exit code 2",
            failure="other",
            exit_code=2,
        )


# --- applying them -----------------------------------------------------------------------


def positioned(events: Sequence[Event]) -> list[Position]:
    return [Position(n, event) for n, event in enumerate(events, start=1)]


def apply(store: EventStore, *batches: Sequence[Position]) -> None:
    for batch in batches:
        store.execute(project(batch))


def tables(store: EventStore) -> dict[str, list[dict]]:
    return {t: store.query(f"SELECT * FROM {t} ORDER BY {key}") for t, key in TABLES}


def task_row(store: EventStore, task: Task) -> dict[str, Any]:
    [row] = store.query("SELECT * FROM rm_tasks WHERE task_uuid = %s", (task.id,))
    return row


def run_rows(store: EventStore, task: Task) -> list[dict[str, Any]]:
    return store.query(
        "SELECT * FROM rm_task_runs WHERE task_uuid = %s ORDER BY fire_at", (task.id,)
    )


def life(task: Task, run: Run) -> list[Event]:
    """Created, fired (its job submitted in the same commit), retried once, succeeded."""
    return [
        task.created(0),
        task.fired(10, run),
        run.submitted,
        run.admitted(11, 1),
        run.started(12, 1),
        *run.retried(13, 1),
        run.admitted(19, 2),
        run.started(20, 2),
        run.succeeded(25, 2),
    ]


# --- rm_tasks ----------------------------------------------------------------------------


def test_a_created_task_is_listed_active_with_its_definition(store):
    task = Task()
    created = task.created(0)
    apply(store, positioned([created]))
    row = task_row(store, task)
    assert row == {
        "task_uuid": task.id,
        "client": "alice",
        "title": "nightly report",
        "description": "mails the numbers",
        "schedule_kind": "cron",
        "schedule_expr": "0 3 * * *",
        "timezone": "Europe/Chisinau",
        "payload": {"workflow": "noop", "parameters": {"n": 1}},
        "created_by": AUTHOR,
        "priority": 5,
        "max_retries": 3,
        "backoff_strategy": "exponential_jitter",
        "dedupe_key": "report",
        "dedupe_window_seconds": 600,
        "concurrency_key": None,
        "status": "active",
        "next_fire_at": at(3600),
        "last_fire_at": None,
        "runs": 0,
        "skipped": 0,
        "snoozed_until": None,
        "snooze_reason": None,
        "created_at": T0,
        "updated_at": T0,
        "version": 1,
    }


def test_an_update_replaces_the_whole_definition(store):
    task = Task()
    apply(store, positioned([task.created(0)]))
    new = definition(
        title="weekly", schedule_kind="event", schedule_expr=None, dedupe_key=None,
        dedupe_window_seconds=None, concurrency_key="mail", priority=2, payload={"steps": []},
    )  # fmt: skip
    updated = task.event(TaskUpdated, 5, definition=new, changed=["title"], next_fire_at=None)
    apply(store, [Position(2, updated)])
    row = task_row(store, task)
    assert (row["title"], row["schedule_kind"], row["schedule_expr"]) == ("weekly", "event", None)
    assert (row["dedupe_key"], row["dedupe_window_seconds"]) == (None, None)
    assert (row["concurrency_key"], row["priority"], row["payload"]) == ("mail", 2, {"steps": []})
    assert (row["next_fire_at"], row["updated_at"], row["version"]) == (None, at(5), 2)
    assert (row["status"], row["created_at"]) == ("active", T0)


@pytest.mark.parametrize("batching", ["one batch", "one event per batch"])
def test_pause_resume_and_cancel_set_the_status(store, batching):
    task = Task()
    events = [
        task.created(0),
        task.event(TaskPaused, 1, by="bob", next_fire_at=None),
        task.event(TaskResumed, 2, by="bob"),
    ]
    batch = positioned(events)
    apply(store, *([batch] if batching == "one batch" else [[p] for p in batch]))
    row = task_row(store, task)
    assert (row["status"], row["next_fire_at"], row["version"]) == ("active", at(3602), 3)

    cancelled = task.event(TaskCancelled, 3, by="bob", next_fire_at=None)
    apply(store, [Position(4, cancelled)])
    row = task_row(store, task)
    assert (row["status"], row["next_fire_at"], row["updated_at"]) == ("canceled", None, at(3))


@pytest.mark.parametrize("due", ["fired", "skipped"])
def test_a_snooze_holds_until_the_snoozed_run_comes_due(store, due):
    task = Task()
    snoozed = task.event(TaskSnoozed, 1, by="bob", delay_seconds=600, reason="maintenance")
    apply(store, positioned([task.created(0), snoozed]))
    row = task_row(store, task)
    assert (row["snoozed_until"], row["snooze_reason"]) == (at(3601), "maintenance")
    assert row["next_fire_at"] == at(3601)

    now = Run(task, 60)
    run_now = task.event(
        TaskFired, 60, run_id=uuid4(), trigger="run_now", fire_at=at(60), job_id=now.job_id,
        next_fire_at=at(3601),
    )  # fmt: skip
    apply(store, [Position(3, run_now), Position(4, now.submitted)])
    row = task_row(store, task)
    assert (row["snoozed_until"], row["runs"], row["last_fire_at"]) == (at(3601), 1, at(60))

    if due == "fired":
        run = Run(task, 3601)
        apply(store, [Position(5, task.fired(3601, run)), Position(6, run.submitted)])
    else:
        apply(store, [Position(5, task.skipped(3601, duplicate_of=now.job_id))])
    row = task_row(store, task)
    assert (row["snoozed_until"], row["snooze_reason"]) == (None, None)
    assert (row["runs"], row["skipped"]) == ((2, 0) if due == "fired" else (1, 1))


@pytest.mark.parametrize(
    "clearing",
    [
        lambda task: task.event(TaskResumed, 2, by="bob"),
        lambda task: task.event(TaskUpdated, 2, definition=definition(), changed=[]),
    ],
    ids=["resumed", "updated"],
)
def test_a_snooze_is_cleared_by_a_resume_or_an_update(store, clearing):
    task = Task()
    snoozed = task.event(TaskSnoozed, 1, by="bob", delay_seconds=60)
    apply(store, positioned([task.created(0), snoozed]))
    assert task_row(store, task)["snoozed_until"] == at(3601)
    apply(store, [Position(3, clearing(task))])
    row = task_row(store, task)
    assert (row["snoozed_until"], row["snooze_reason"], row["version"]) == (None, None, 3)


def test_fired_and_skipped_runs_are_counted(store):
    task = Task()
    first, second = Run(task, 10), Run(task, 20)
    created = task.created(0)
    batch = positioned(
        [
            created,
            task.fired(10, first),
            first.submitted,
            task.skipped(15, duplicate_of=first.job_id),
            task.fired(20, second, trigger="run_now"),
            second.submitted,
        ]
    )
    apply(store, batch[:3], batch[3:])
    row = task_row(store, task)
    assert (row["runs"], row["skipped"], row["last_fire_at"]) == (2, 1, at(19))
    assert (row["version"], row["updated_at"], row["next_fire_at"]) == (4, at(20), at(3620))

    runs = run_rows(store, task)
    assert [(r["trigger"], r["job_id"], r["status"]) for r in runs] == [
        ("schedule", first.job_id, "queued"),
        ("schedule", None, "skipped"),
        ("run_now", second.job_id, "queued"),
    ]
    skipped = runs[1]
    assert (skipped["reason"], skipped["duplicate_of"]) == (
        "duplicate of a run 30 s ago",
        first.job_id,
    )
    assert (skipped["attempts"], skipped["created_at"], skipped["updated_at"]) == (
        0,
        at(15),
        at(15),
    )
    assert all(r["client"] == "alice" for r in runs)


# --- rm_task_runs follow their jobs ------------------------------------------------------


def test_a_run_follows_its_job_through_a_retry_to_success(store):
    task = Task()
    run = Run(task, 10)
    events = life(task, run)
    apply(store, positioned(events))
    [row] = run_rows(store, task)
    assert row == {
        "run_id": events[1].run_id,
        "task_uuid": task.id,
        "client": "alice",
        "trigger": "schedule",
        "fire_at": at(9),
        "job_id": run.job_id,
        "status": "succeeded",
        "reason": "exit code 1",  # the last failure, retried
        "duplicate_of": None,
        "event_id": None,
        "attempts": 2,
        "created_at": at(10),
        "started_at": at(12),  # the first attempt's start
        "finished_at": at(25),
        "updated_at": at(25),
        "job_version": 8,
    }


def test_a_run_follows_each_event_of_its_job_in_its_own_batch(store):
    task = Task()
    run = Run(task, 10)
    batch = positioned(life(task, run))
    seen = []
    for item in batch:
        apply(store, [item])
        seen += [(r["status"], r["attempts"]) for r in run_rows(store, task)]
    assert seen == [
        ("queued", 0),  # fired, its job not yet projected
        ("queued", 0),
        ("admitted", 1),
        ("running", 1),
        ("retry_wait", 1),
        ("queued", 1),
        ("admitted", 2),
        ("running", 2),
        ("succeeded", 2),
    ]


@pytest.mark.parametrize(
    ("end", "status", "reason"),
    [
        (lambda run: run.failed(30, 2), "failed", "exit code 2"),
        (
            lambda run: run.then(JobTimedOut, 30, workflow="noop", attempt=2, timeout=2.5),
            "timed_out",
            "timed out after 2.5s",
        ),
    ],
    ids=["failed", "timed_out"],
)
def test_a_run_ends_with_its_job_and_keeps_the_reason(store, end, status, reason):
    task = Task()
    run = Run(task, 10)
    events = [
        task.created(0),
        task.fired(10, run),
        run.submitted,
        run.admitted(11, 1),
        run.started(12, 1),
        *run.retried(13, 1),
        run.admitted(19, 2),
        run.started(20, 2),
    ]
    batch = positioned([*events, end(run)])
    apply(store, batch[:-1], batch[-1:])
    [row] = run_rows(store, task)
    assert (row["status"], row["reason"], row["attempts"]) == (status, reason, 2)
    assert (row["started_at"], row["finished_at"]) == (at(12), at(30))


def test_a_run_whose_job_was_submitted_first_in_the_commit_starts_from_the_job(store):
    task = Task()
    run = Run(task, 10, state="scheduled")  # e.g. a semaphore must answer first
    created = task.created(0)
    events = [created, run.submitted, task.fired(10, run)]
    apply(store, positioned(events)[:2], positioned(events)[2:])
    split = tables(store)
    [row] = run_rows(store, task)
    assert (row["status"], row["job_version"], row["updated_at"]) == ("scheduled", 1, at(10))

    store.execute([(f"TRUNCATE {t}", ()) for t in READ_MODELS])
    apply(store, positioned(events))
    assert tables(store) == split


def test_a_stale_job_event_does_not_overwrite_a_newer_status(store):
    task = Task()
    run = Run(task, 10)
    batch = positioned(life(task, run))
    apply(store, batch)
    apply(store, batch[3:5])  # admitted and started again, as an old batch
    [row] = run_rows(store, task)
    assert (row["status"], row["attempts"], row["job_version"]) == ("succeeded", 2, 8)


def test_a_cancelled_run_is_finished_without_a_failure_reason(store):
    task = Task()
    run = Run(task, 10)
    cancel = run.then(JobCancelled, 11, reason="not needed", by="bob")
    apply(store, positioned([task.created(0), task.fired(10, run), run.submitted, cancel]))
    [row] = run_rows(store, task)
    assert (row["status"], row["reason"], row["finished_at"], row["started_at"]) == (
        "cancelled", None, at(11), None,
    )  # fmt: skip


def test_retention_clears_the_job_but_keeps_its_run(store):
    task = Task()
    run = Run(task, 10)
    clearing = FinishedJobsCleared(
        id=RETENTION_STREAM, version=1, at=at(100), finished_before=at(90), retention_seconds=10
    )
    apply(store, positioned([*life(task, run), clearing]))
    assert store.query("SELECT * FROM rm_jobs WHERE job_id = %s", (run.job_id,)) == []
    [row] = run_rows(store, task)
    assert (row["status"], row["finished_at"]) == ("succeeded", at(25))


# --- idempotent, and the same under any batching -----------------------------------------


def history() -> list[Event]:
    """Two tasks, runs that retry, succeed, fail and are skipped, a snooze, a pause, an update,
    a cancellation, a plain job and a clearing, interleaved as the services write them."""
    a, b = Task("alice"), Task("bob")
    first, second, third = Run(a, 10), Run(a, 40, state="scheduled"), Run(b, 12)
    plain = Run(None, 5)
    return [
        a.created(0),
        plain.submitted,
        a.fired(10, first),
        first.submitted,
        b.created(11, schedule_kind="once", schedule_expr=T0.isoformat()),
        first.admitted(11, 1),
        b.fired(12, third),
        third.submitted,
        first.started(12, 1),
        *first.retried(13, 1),
        a.event(TaskSnoozed, 14, by="carol", delay_seconds=60, reason="deploy"),
        third.admitted(15, 1),
        first.admitted(19, 2),
        b.event(TaskCancelled, 20, by="bob", next_fire_at=None),
        first.started(20, 2),
        first.succeeded(25, 2),
        a.skipped(30, duplicate_of=first.job_id),
        FinishedJobsCleared(
            id=RETENTION_STREAM,
            version=1,
            at=at(35),
            finished_before=at(30),
            retention_seconds=5,
        ),
        second.submitted,
        a.fired(40, second),
        a.event(TaskUpdated, 41, definition=definition(title="renamed"), changed=["title"]),
        second.then(JobQueued, 42, workflow="noop", priority=5, reason="due"),
        second.admitted(43, 1),
        a.event(TaskPaused, 44, by="carol", next_fire_at=None),
        second.failed(45, 1),
        third.started(46, 1),
    ]


history_events = history()


def test_the_history_gives_the_expected_rows(store):
    apply(store, positioned(history_events))
    found = tables(store)
    tasks = {r["client"]: r for r in found["rm_tasks"]}
    assert {c: (r["status"], r["runs"], r["skipped"], r["version"]) for c, r in tasks.items()} == {
        "alice": ("paused", 2, 1, 7),
        "bob": ("canceled", 1, 0, 3),
    }
    assert (tasks["alice"]["title"], tasks["alice"]["snoozed_until"]) == ("renamed", None)
    assert tasks["alice"]["last_fire_at"] == at(39)
    runs = sorted(found["rm_task_runs"], key=lambda r: r["created_at"])
    assert [(r["status"], r["attempts"], r["reason"]) for r in runs] == [
        ("succeeded", 2, "exit code 1"),
        ("running", 1, None),
        ("skipped", 0, "duplicate of a run 30 s ago"),
        ("failed", 1, "exit code 2"),
    ]
    # the first run's job was cleared by retention; the plain job is no run
    assert len(found["rm_jobs"]) == 3


def test_each_task_row_agrees_with_the_task_folded_from_its_stream(store):
    apply(store, positioned(history_events))
    for row in tables(store)["rm_tasks"]:
        events = [e for e in history_events if isinstance(e, TaskEvent)]
        task = TaskFold.fold(e for e in events if e.id == row["task_uuid"])
        assert task is not None
        assert row["title"] == task.definition.title
        assert row["payload"] == task.definition.payload
        found = {name: row[name] for name in FOLDED}
        assert found == {name: getattr(task, name) for name in FOLDED}


def test_the_same_batch_applied_twice_gives_the_same_tables(store):
    batch = positioned(history_events)
    apply(store, batch)
    once = tables(store)
    apply(store, batch)
    assert tables(store) == once


def cuts(n: int) -> Iterator[tuple[int, ...]]:
    """Every way to cut n events into at most three batches, then one event per batch."""
    for k in (1, 2):
        yield from itertools.combinations(range(1, n), k)
    yield tuple(range(1, n))


def built(store: EventStore, batches: Sequence[Sequence[Position]]) -> dict[str, list[dict]]:
    """The tables the batches build from empty ones, in a transaction rolled back after."""
    with store.datastore.transaction(commit=False) as curs:
        for batch in batches:
            for query, params in project(batch):
                curs.execute(query, params)
        found = {}
        for table, key in TABLES:
            curs.execute(f"SELECT * FROM {table} ORDER BY {key}")
            found[table] = curs.fetchall()
        return found


def test_the_history_cut_into_batches_anywhere_gives_the_same_tables(store):
    batch = positioned(history_events)
    apply(store, batch)
    whole = tables(store)
    store.execute([(f"TRUNCATE {t}", ()) for t in READ_MODELS])
    for cut in cuts(len(batch)):
        bounds = [0, *cut, len(batch)]
        batches = [batch[start:end] for start, end in itertools.pairwise(bounds)]
        assert built(store, batches) == whole, cut


def test_replay_rebuilds_the_task_tables_as_the_projector_built_them(store):
    assert {"rm_tasks", "rm_task_runs"} <= set(READ_MODELS)
    store.commit(history_events)
    items = store.events_after(0, 1000)
    for start in range(0, len(items), 4):  # the live projector's way, in small batches
        chunk = items[start : start + 4]
        store.commit(tracking=Tracking(PROJECTOR, chunk[-1].position), statements=project(chunk))
    assert len(store.query("SELECT * FROM rm_task_runs")) == 4

    done = replay(store, batch=7)
    assert done.replayed == done.live and done.position == store.max_position()

    store.execute([("UPDATE rm_task_runs SET attempts = attempts + 1", ())])
    done = replay(store, batch=7)
    assert done.replayed != done.live  # the runs are part of the comparison
