"""The dispatcher's memory of consumed submissions stays within its bounds, whatever a client
submits: many jobs with the largest parameters a request may carry."""

from __future__ import annotations

from datetime import UTC, datetime

from taskengine_contracts.events import JobSubmitted, JobSucceeded, RunSpec
from taskengine_core.ids import job_stream
from taskengine_core.submission import job_submitted
from taskengine_dispatcher.submissions import Submissions

AT = datetime(2026, 1, 1, tzinfo=UTC)
BIG = {"x": "a" * 500_000}  # about the largest a request may carry (512 KiB bodies)


def submitted(number: int, parameters: dict) -> JobSubmitted:
    return job_submitted(number, "a", AT, workflow="noop", parameters=parameters, run=RunSpec())


def test_large_submissions_are_kept_within_the_byte_budget_and_the_rest_read_back():
    memory = Submissions(limit=1000, budget=2_000_000)
    events = [submitted(n, BIG) for n in range(1, 201)]
    for event in events:
        memory.apply(event)
    assert memory.bytes <= 2_000_000 and len(memory.kept) == 3
    found, missing = memory.known([e.id for e in events])
    assert set(found) == {e.id for e in events[-3:]}  # the most recent
    assert len(missing) == 197  # read from the store when admitted


def test_an_ended_job_is_forgotten_and_its_bytes_returned():
    memory = Submissions(limit=10, budget=10_000_000)
    event = submitted(1, BIG)
    memory.apply(event)
    assert memory.bytes > 500_000
    memory.apply(
        JobSucceeded(
            id=job_stream(1), version=5, at=AT, job_id=1, client="a", workflow="noop", attempt=1
        )
    )
    assert memory.bytes == 0 and not memory.kept


def test_a_submission_larger_than_the_budget_is_not_kept():
    memory = Submissions(limit=10, budget=1000)
    event = submitted(1, BIG)
    memory.apply(event)
    assert memory.known([event.id]) == ({}, [event.id])
    assert memory.bytes == 0
