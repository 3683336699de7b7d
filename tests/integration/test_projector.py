"""The projector builds the read models from the log, survives kill -9, equals a replay."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

from taskengine_cli.ops import replay
from taskengine_contracts.events import (
    CallbackAttemptFailed,
    CallbackDelivered,
    ClientRegistered,
    ClientRevoked,
    Event,
    ExecutionLogged,
    FinishedJobsCleared,
    JobAdmitted,
    JobBroken,
    JobCancelled,
    JobEvent,
    JobExecuting,
    JobPaused,
    JobQueued,
    JobRetryScheduled,
    JobStarted,
    JobSubmitted,
    JobSucceeded,
    JobTimedOut,
    JobUpdated,
    LogLine,
    RunSpec,
    TaskCreated,
    TaskDefinition,
    TaskFired,
)
from taskengine_core.ids import (
    RETENTION_STREAM,
    callback_stream,
    client_stream,
    execution_stream,
    job_stream,
)
from taskengine_core.jobs import JobRef, advance
from taskengine_store.projections import KEYED_PLANS, project
from taskengine_store.store import EventStore, Position

from tests.support.factories import job_number, submitted
from tests.support.waiting import wait_until


def test_read_models_follow_the_log_through_a_kill_and_match_a_replay(services):
    jobs = [submitted(priority=p % 10 + 1) for p in range(400)]
    services.store.commit(jobs[:200])
    services.start("projector")
    services.store.commit(jobs[200:])
    now = datetime.now(UTC)
    # A clearing among them removes nothing: no job has finished.
    clearing = FinishedJobsCleared(
        id=RETENTION_STREAM, version=1, at=now, finished_before=now, retention_seconds=1
    )
    services.store.commit([clearing])
    services.kill("projector")
    services.store.commit(
        [
            advance(
                JobRef.of(j),
                JobAdmitted,
                workflow="noop",
                priority=j.priority,
                attempt=1,
                running=1,
                max_jobs=400,
            )
            for j in jobs
        ]
    )
    services.start("projector")

    def caught_up() -> bool:
        return services.store.tracked("projector") == services.store.max_position()

    wait_until(caught_up, what="the projector to catch up")
    rows = services.store.query("SELECT state, count(*) AS n FROM rm_jobs GROUP BY state")
    assert rows == [{"state": "admitted", "n": 400}]
    log = services.store.query(
        "SELECT progname, count(*) AS n FROM rm_job_log GROUP BY progname ORDER BY progname"
    )
    assert log == [{"progname": "api", "n": 400}, {"progname": "controller", "n": 400}]
    done = replay(services.store)
    assert done.replayed == done.live and done.position == services.store.max_position()


class _Job:
    """One job's stream in a dialect, built with the lifecycle's own `advance()`."""

    def __init__(self, dialect: str, at: datetime, n: int, task_id: UUID | None = None):
        number = job_number()
        attributes = {
            "taskengine": {},
            "drove": {"spec": {"app": "ci", "opSpec": {"timeout": "5m"}}, "n": n},
            "worktasks": {"type": "build", "project_id": f"p{n}", "priority": "HIGH"},
            "tasks": {"run_of": str(task_id)},
        }[dialect]
        self.last: JobEvent = JobSubmitted(
            id=job_stream(number),
            version=1,
            at=at,
            job_id=number,
            client="alice",
            workflow="noop",
            parameters={"n": n, "text": 'ünï "quoted" {a,b}', "password": "x"},
            priority=n % 10 + 1,
            run_at=at + timedelta(seconds=30 * (n // 4 % 4 == 2)),
            state="scheduled" if n // 4 % 4 == 2 else "queued",
            run=RunSpec(),
            dialect=dialect,
            task_id=task_id,
            attributes=attributes,
        )
        self.job_id, self.id = number, self.last.id

    def then(self, kind: type[JobEvent], at: datetime, **fields: Any) -> Any:
        self.last = advance(JobRef.of(self.last), kind, at=at, **fields)
        return self.last

    def life(self, at: datetime, n: int) -> list[Event]:
        """One of four lives, by `n`: succeeds with output and a callback; fails, retries and
        times out; is updated, paused and broken; is cancelled."""
        t = [at + timedelta(seconds=s) for s in range(12)]
        run = {"workflow": "noop"}
        if n % 4 == 0:
            line = LogLine(at=t[3], step=1, severity="INFO", text="token=abc 🚀 done\\n")
            return [
                self.then(JobAdmitted, t[1], **run, priority=5, attempt=1, running=1, max_jobs=9),
                self.then(JobStarted, t[2], **run, attempt=1, executor="local-1"),
                self.then(JobExecuting, t[2], attempt=1, by="worker-7"),
                ExecutionLogged(
                    id=execution_stream(self.job_id, 1),
                    version=1,
                    at=t[3],
                    job_id=self.job_id,
                    attempt=1,
                    lines=[line, line],
                ),
                self.then(JobSucceeded, t[4], **run, attempt=1),
                CallbackDelivered(
                    id=callback_stream(self.job_id, "succeeded", "h"),
                    version=1,
                    at=t[5],
                    job_id=self.job_id,
                    url="http://127.0.0.1/hook?key=s3cret",
                    event="succeeded",
                    status_code=200,
                    attempts=1,
                ),
            ]
        if n % 4 == 1:
            return [
                self.then(JobAdmitted, t[1], **run, priority=5, attempt=1, running=1, max_jobs=9),
                self.then(JobStarted, t[2], **run, attempt=1, executor="local-1"),
                self.then(
                    JobRetryScheduled,
                    t[3],
                    **run,
                    priority=5,
                    attempt=1,
                    retry_at=t[6],
                    reason="exit code 1",
                ),
                self.then(JobQueued, t[6], **run, priority=5, reason="retry", attempts=1),
                self.then(JobAdmitted, t[7], **run, priority=5, attempt=2, running=1, max_jobs=9),
                self.then(JobStarted, t[8], **run, attempt=2, executor="local-1"),
                self.then(JobTimedOut, t[9], **run, attempt=2, timeout=1.5),
                CallbackAttemptFailed(
                    id=callback_stream(self.job_id, "failed", "h"),
                    version=1,
                    at=t[10],
                    job_id=self.job_id,
                    url="http://127.0.0.1/hook",
                    event="failed",
                    attempt=3,
                    error="HTTP 500",
                    next_at=None,
                ),
            ]
        if n % 4 == 2:
            state = str(JobRef.of(self.last).state)
            return [
                self.then(
                    JobUpdated,
                    t[1],
                    state=state,
                    workflow="noop",
                    priority=9,
                    run_at=t[11],
                    persist=True,
                    changed=["priority", "persist"],
                ),
                self.then(JobPaused, t[2], by="bob"),
                self.then(JobBroken, t[3], by="bob", reason="stuck"),
            ]
        return [self.then(JobCancelled, t[1], reason="not needed", by="alice")]


def mixed_history() -> list[Event]:
    """Jobs of the four dialects living every kind of life, interleaved; a client registered
    and revoked; a scheduled task firing and skipping; a retention clearing in the middle."""
    now = datetime.now(UTC) - timedelta(hours=1)
    client = client_stream("alice")
    events: list[Event] = [
        ClientRegistered(
            id=client, version=1, at=now, name="alice", key_hash="h", key_lookup="l", key_hint="ab…"
        ),
    ]
    task = uuid4()
    definition = TaskDefinition(
        title="nightly",
        description="report",
        schedule_kind="cron",
        schedule_expr="0 3 * * *",
        payload={"workflow": "noop"},
        created_by=uuid4(),
    )
    events.append(TaskCreated(id=task, version=1, at=now, client="alice", definition=definition))
    lives = []
    for n in range(48):
        dialect = ("taskengine", "drove", "worktasks", "tasks")[n % 4]
        at = now + timedelta(seconds=n)
        job = _Job(dialect, at, n, task if dialect == "tasks" else None)
        if dialect == "tasks":
            fired = TaskFired(
                id=task,
                version=n // 4 + 2,
                at=at,
                client="alice",
                run_id=uuid4(),
                trigger="schedule",
                fire_at=at,
                job_id=job.job_id,
            )
            events.append(fired)
        events.append(job.last)
        lives.append(job.life(at, n // 4))
    # Each job's events after its submission, interleaved with the others' (round robin).
    for step in range(max(len(life) for life in lives)):
        events += [life[step] for life in lives if step < len(life)]
        if step == 4:  # clears the jobs finished so far; their later events leave no trace
            events.append(
                FinishedJobsCleared(
                    id=RETENTION_STREAM,
                    version=1,
                    at=now + timedelta(hours=1),
                    finished_before=now + timedelta(seconds=50),
                    retention_seconds=60,
                )
            )
    events.append(
        ClientRevoked(id=client, version=2, at=now + timedelta(hours=1), name="alice", by="admin")
    )
    return events


def test_a_replay_of_every_dialect_equals_what_the_live_projector_built(services):
    history = mixed_history()
    services.start("projector")
    sizes = itertools.cycle([1, 5, 2, 13, 3])
    while history:  # in commits of uneven sizes, while the projector follows
        size = next(sizes)
        services.store.commit(history[:size])
        history = history[size:]

    def caught_up() -> bool:
        return services.store.tracked("projector") == services.store.max_position()

    wait_until(caught_up, what="the projector to catch up")
    jobs = services.store.query("SELECT dialect, count(*) AS n FROM rm_jobs GROUP BY dialect")
    assert {row["dialect"] for row in jobs} == {"taskengine", "drove", "worktasks", "tasks"}
    assert 0 < sum(row["n"] for row in jobs) < 48  # the clearing removed some
    assert services.store.query("SELECT count(*) AS n FROM rm_task_runs") == [{"n": 12}]
    for batch in (1, 7, 20_000):  # pages that cut the live batches anywhere
        done = replay(services.store, batch=batch)
        assert done.replayed == done.live, f"replay in pages of {batch}"
        assert done.position == services.store.max_position()
    done = replay(services.store, page_bytes=1)  # cut by size: every event a page of its own
    assert done.replayed == done.live

    services.store.execute(
        [
            (
                "UPDATE rm_job_log SET message = message || '.' WHERE id = "
                "(SELECT max(id) FROM rm_job_log)",
                (),
            )
        ]
    )
    done = replay(services.store)
    assert done.replayed != done.live  # every row is compared


def test_a_batch_finds_its_jobs_by_key_not_by_scanning_the_job_list(database_url):
    """Each batch joins its rows to `rm_jobs` by key: with a few thousand jobs listed, the
    statements `project()` makes, sent after `KEYED_PLANS` as the projector sends them, look
    the jobs up in an index rather than read the whole table (once per batch)."""
    store = EventStore(database_url, create_tables=True)
    try:
        jobs = [submitted() for _ in range(5000)]
        store.execute(project([Position(n, job) for n, job in enumerate(jobs, start=1)]))
        store.execute([("ANALYZE rm_jobs", ())])
        moved = [
            advance(
                JobRef.of(job),
                JobAdmitted,
                workflow="noop",
                priority=5,
                attempt=1,
                running=1,
                max_jobs=200,
            )
            for job in jobs[-200:]
        ]
        batch = [Position(10_000 + n, event) for n, event in enumerate(moved)]
        with store.datastore.transaction(commit=False) as curs:
            curs.execute(*KEYED_PLANS)
            plans = []
            for query, params in project(batch):
                if query.startswith(("UPDATE rm_jobs", "INSERT INTO rm_job_log")):
                    curs.execute("EXPLAIN " + query, params)
                    plans.append("\n".join(row["QUERY PLAN"] for row in curs.fetchall()))
        assert len(plans) == 2
        for plan in plans:
            assert "Seq Scan on rm_jobs" not in plan, plan
    finally:
        store.close()
