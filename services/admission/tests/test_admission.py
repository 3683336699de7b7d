"""The controller's decisions over a batch, on an in-memory stand-in for the store.

What it must tell the log: every `JobAdmitted` names the position of the last event applied
when the job was chosen, also when a job moved meanwhile and had to be re-read.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from uuid import UUID

from eventsourcing.persistence import Tracking
from taskengine_admission.admission import CONSUMED, Admission, filter_subjects
from taskengine_contracts import subjects
from taskengine_contracts.events import (
    Event,
    JobAdmitted,
    JobPaused,
    JobQueued,
    JobStarted,
    JobSubmitted,
    JobSucceeded,
    RunSpec,
    SettingChanged,
)
from taskengine_core.ids import SETTINGS_STREAM, job_stream
from taskengine_runtime import Delivered, Runtime
from taskengine_store.store import Conflict, Position

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


class Store:
    """Streams with optimistic version checks, as `EventStore.commit` has them."""

    def __init__(self) -> None:
        self.events: dict[UUID, list[Event]] = {}
        self.commits: list[tuple[list[Event], Tracking | None]] = []
        self.statements: list[list] = []
        """Each commit's statements (the queue's rows)."""
        self.rests: dict[int, list[Position]] = {}
        """The events committed with a position but after it (`rest_of_commit`)."""

    def append(self, *events: Event) -> None:
        for event in events:
            self.events.setdefault(event.id, []).append(event)

    def commit(
        self, events: Sequence[Event], tracking=None, statements=(), durable=True
    ) -> list[int]:  # type: ignore[no-untyped-def]
        stale = {e.id for e in events if len(self.events.get(e.id, [])) != e.version - 1}
        if stale:
            raise Conflict(stale)
        self.append(*events)
        self.commits.append((list(events), tracking))
        self.statements.append(list(statements))
        return []

    def tracked(self, name: str) -> int:
        return max((t.notification_id for _, t in self.commits if t), default=0)

    def rest_of_commit(self, position: int) -> list[Position]:
        return self.rests.get(position, [])

    def streams(self, ids) -> dict[UUID, list[Event]]:  # type: ignore[no-untyped-def]
        return {i: list(self.events.get(i, [])) for i in ids}


class Calls(Runtime):
    async def call(self, fn, *args, **kwargs):  # type: ignore[no-untyped-def]
        return fn(*args, **kwargs)


def controller() -> tuple[Admission, Store]:
    store = Store()
    runtime = Calls("admission", None, store, None, None)  # type: ignore[arg-type]
    return Admission(runtime, {}), store


def submitted(number: int, priority: int = 5, at: float = 0) -> JobSubmitted:
    return JobSubmitted(
        id=job_stream(number),
        version=1,
        at=T0 + timedelta(seconds=at),
        job_id=number,
        client="c",
        workflow="noop",
        parameters={},
        priority=priority,
        run_at=T0,
        state="queued",
        run=RunSpec(),
    )


def setting(version: int, name: str, value: int) -> SettingChanged:
    return SettingChanged(id=SETTINGS_STREAM, version=version, at=T0, name=name, value=str(value))


def batch(*events: tuple[int, Event]) -> list[Delivered]:
    return [Delivered(position, event) for position, event in events]


def admissions(store: Store) -> list[JobAdmitted]:
    return [e for events, _ in store.commits for e in events if isinstance(e, JobAdmitted)]


async def test_admissions_name_the_last_position_applied_and_commit_it_as_tracked():
    admission, store = controller()
    jobs = [submitted(1, 5), submitted(2, 3)]
    store.append(*jobs)
    await admission.on_job_events(batch((10, jobs[0]), (11, setting(1, "max_jobs", 1))))
    await admission.on_job_events(batch((12, jobs[1])))
    [first] = admissions(store)
    assert (first.job_id, first.position) == (1, 11)
    assert store.commits[-1][1] == Tracking("admission", 11)
    assert admission.position == 12  # job 2 waits: its row and position are recorded lazily
    assert admission.unsaved == {jobs[1].id}


async def test_a_settings_change_admits_with_the_position_of_the_change():
    admission, store = controller()
    jobs = [submitted(n, 5, at=n) for n in (1, 2, 3)]
    store.append(*jobs)
    await admission.on_job_events(batch(*((n, job) for n, job in enumerate(jobs, 1))))
    await admission.on_job_events(batch((9, setting(1, "max_jobs", 3))))
    assert [(e.job_id, e.position) for e in admissions(store)] == [(1, 3), (2, 3), (3, 9)]


async def test_a_job_that_moved_meanwhile_is_reread_and_keeps_its_place_by_its_queueing():
    admission, store = controller()
    job = submitted(1)
    paused = JobPaused(id=job.id, version=2, at=T0, job_id=1, client="c", by="c")
    resumed = JobQueued(
        id=job.id,
        version=3,
        at=T0 + timedelta(seconds=30),
        job_id=1,
        client="c",
        workflow="noop",
        priority=2,
        reason="resumed",
    )
    store.append(job, paused, resumed)  # the bus has delivered only the submission so far
    await admission.on_job_events(batch((4, setting(1, "max_jobs", 1)), (5, job)))

    [admitted] = admissions(store)
    assert (admitted.version, admitted.priority, admitted.position) == (4, 2, 5)
    entry = admission.entries[job.id]
    assert entry.admitted and entry.queued_at == resumed.at

    # The events it re-read arrive later: old news, the job still holds the only slot.
    urgent = submitted(2, priority=1)
    store.append(urgent)
    await admission.on_job_events(batch((6, paused), (7, resumed), (8, urgent)))
    assert admission.entries[job.id].admitted
    assert len(admissions(store)) == 1


async def test_a_batch_ending_inside_a_commit_is_decided_with_the_whole_commit():
    admission, store = controller()
    jobs = [submitted(n, p, at=n) for n, p in ((1, 5), (2, 3), (3, 5), (4, 1), (5, 9))]
    store.append(*jobs)
    # One commit at positions 2..7 (its last event is none of admission's); the bus has
    # delivered it only up to job 2 so far.
    other = JobStarted(
        id=job_stream(99),
        version=3,
        at=T0,
        job_id=99,
        client="c",
        workflow="noop",
        attempt=1,
        executor="test",
    )
    store.rests[3] = [Position(n, job) for n, job in enumerate(jobs[2:], 4)] + [Position(7, other)]
    await admission.on_job_events(batch((1, setting(1, "max_jobs", 2)), (2, jobs[0]), (3, jobs[1])))

    assert [(e.job_id, e.position) for e in admissions(store)] == [(4, 7), (2, 7)]
    assert store.commits[-1][1] == Tracking("admission", 7)

    # Job 4 ends; then the bus delivers the rest of the commit: already applied, so job 4
    # is not queued again and the freed slot goes to job 1 (priority 5, first come).
    [first, _] = admissions(store)
    started = JobStarted(
        id=first.id,
        version=3,
        at=T0,
        job_id=4,
        client="c",
        workflow="noop",
        attempt=1,
        executor="test",
    )
    done = JobSucceeded(
        id=first.id, version=4, at=T0, job_id=4, client="c", workflow="noop", attempt=1
    )
    store.append(started, done)
    rest = [(n, job) for n, job in enumerate(jobs[2:], 4)]
    await admission.on_job_events(batch(*rest, (9, done)))
    assert [e.job_id for e in admissions(store)] == [4, 2, 1]
    assert 4 not in {e.job_id for e in admission.entries.values()}


def test_it_does_not_read_its_own_admissions_back_from_the_bus():
    """Only admission writes `JobAdmitted`, and applies each as its commit succeeds: read back
    from the bus, they would cost a batch a job and change nothing."""
    assert JobAdmitted not in CONSUMED
    assert subjects.subject_for(JobAdmitted) not in filter_subjects()
    assert subjects.subject_for(JobSubmitted) in filter_subjects()


async def test_a_slot_is_held_from_the_commit_that_admits_the_job():
    """With no `JobAdmitted` coming back, the commit itself marks the entry admitted: the
    slot stays taken for the next batch, until an event frees it."""
    admission, store = controller()
    first, second = submitted(1), submitted(2)
    store.append(first, second)
    assert await admission.on_job_events(batch((1, setting(1, "max_jobs", 1)), (2, first)))
    entry = admission.entries[first.id]
    assert entry.admitted and entry.version == 2 and entry.attempt == 1
    assert not await admission.on_job_events(batch((3, second)))  # nothing to commit
    assert [e.job_id for e in admissions(store)] == [1]  # the only slot is taken
    commits = len(store.commits)
    ids = {"id": first.id, "at": T0, "job_id": 1, "client": "c", "workflow": "noop", "attempt": 1}
    store.append(JobStarted(version=3, executor="noop", **ids))
    done = JobSucceeded(version=4, **ids)
    assert await admission.on_job_events(batch((5, done)))  # the slot freed: job 2 takes it
    assert [e.job_id for e in admissions(store)] == [1, 2]
    assert len(store.commits) == commits + 1


async def test_a_batch_heard_to_end_its_commit_is_decided_without_reading_the_rest():
    admission, store = controller()
    job, other = submitted(1), submitted(2, priority=1)
    store.append(job, other)
    store.rests[1] = [Position(2, other)]  # what a read of the store would add
    admission.runtime._heard("1")  # the commit's NOTIFY said: position 1 ends it
    assert await admission.on_job_events(batch((1, job)))
    assert [e.job_id for e in admissions(store)] == [1]


def queue_rows(statements: list) -> tuple[set[int], set[UUID]]:
    """The job numbers a commit's statements upsert into the queue, and the jobs they delete."""
    upserted: set[int] = set()
    deleted: set[UUID] = set()
    for query, params in statements:
        if query.startswith("INSERT INTO admission_queue"):
            upserted |= set(params[1])
        elif query.startswith("DELETE FROM admission_queue"):
            deleted |= set(params[0])
    return upserted, deleted


async def test_a_batch_that_admits_nothing_leaves_its_rows_for_the_next_commit():
    """A job that stops and frees a slot no one waits for changes only the queue's mirror:
    it goes with the next commit, an admission's here."""
    admission, store = controller()
    first, second = submitted(1), submitted(2)
    store.append(first, second)
    await admission.on_job_events(batch((1, setting(1, "max_jobs", 1)), (2, first)))
    commits = len(store.commits)
    ids = {"id": first.id, "at": T0, "job_id": 1, "client": "c", "workflow": "noop", "attempt": 1}
    store.append(JobStarted(version=3, executor="noop", **ids))
    assert not await admission.on_job_events(batch((4, JobSucceeded(version=4, **ids))))
    assert len(store.commits) == commits and admission.unsaved == {first.id}
    assert queue_rows(admission.rows()) == (set(), {first.id})
    await admission.on_job_events(batch((5, second)))  # admitted: the commit takes both rows
    assert [e.job_id for e in admissions(store)] == [1, 2]
    assert store.commits[-1][1] == Tracking("admission", 5)
    assert queue_rows(store.statements[-1]) == ({2}, {first.id})
    assert admission.unsaved == set()


async def test_the_lazy_record_of_the_position_writes_what_was_left_unsaved():
    admission, store = controller()
    job = submitted(1)
    store.append(job)
    await admission.on_job_events(batch((1, setting(1, "max_jobs", 0)), (2, job)))
    assert not store.commits and admission.unsaved == {job.id}  # queued, not admitted
    await admission.runtime.tracker("admission", unsaved=admission)(2)
    assert store.commits == [([], Tracking("admission", 2))]
    assert queue_rows(store.statements[-1]) == ({1}, set())
    assert admission.unsaved == set()
    assert admission.rows() == []


async def test_a_message_set_aside_with_its_position_writes_what_was_left_unsaved():
    admission, store = controller()
    job = submitted(1)
    store.append(job)
    await admission.on_job_events(batch((1, setting(1, "max_jobs", 0)), (2, job)))
    await admission.runtime.rejecter("admission", unsaved=admission)([], 3)
    assert store.commits == [([], Tracking("admission", 3))]
    assert queue_rows(store.statements[-1]) == ({1}, set())
    assert admission.unsaved == set()
