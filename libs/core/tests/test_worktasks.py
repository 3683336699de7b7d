"""Work tasks (seed 000) as jobs: submissions, priorities, workers' reports and their
transient failures, worker tokens, the seed's view and the WebSocket's updates."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from taskengine_contracts.events import (
    JobAdmitted,
    JobCancelled,
    JobExecuting,
    JobFailed,
    JobQueued,
    JobRetryScheduled,
    JobStarted,
    JobSubmitted,
    JobSucceeded,
    JobTimedOut,
    JobUpdated,
    RunSpec,
)
from taskengine_core.attempts import TOKEN_PREFIX, token_fits, worker_token
from taskengine_core.dialects.worktasks import DIALECT
from taskengine_core.dialects.worktasks.reports import (
    MESSAGE_SCAN,
    ReportRefused,
    plan_report,
    transient_reason,
)
from taskengine_core.dialects.worktasks.status import status_of
from taskengine_core.dialects.worktasks.submission import (
    HIGHEST_PRIORITY,
    LOWEST_PRIORITY,
    InvalidWorkTask,
    dialect_priority,
    engine_priority,
    memory_bytes,
    submission,
)
from taskengine_core.dialects.worktasks.view import update, view
from taskengine_core.jobs import Job, JobState, advance
from taskengine_core.quotas import LEAST_URGENT
from taskengine_core.retries import raised_memory

T0 = datetime(2024, 1, 15, 10, 30, tzinfo=UTC)
KEY = "signing-key-0123456789"
BODY: dict[str, Any] = {
    "type": "pipeline_execution",
    "priority": 1,
    "project_id": "proj-123",
    "task_spec": {"pipeline_id": "pipe-456", "parameters": {}},
    "resource_requirements": {"cpu": "1", "memory": "2Gi", "gpu": False},
    "data_access": {
        "input_datasets": ["dataset-1"],
        "output_location": "s3://output/",
        "storage_credentials": "creds-secret",
    },
}


def submitted(max_retries: int = 3, **body: Any) -> Job:
    task = submission({**BODY, **body})
    return Job.started(replace(task, max_retries=max_retries).submitted(7, "acme", T0))


def running(job: Job, attempt: int = 1, at: datetime = T0) -> Job:
    """`job` (queued, or waiting to retry) admitted and started as `attempt`."""
    if job.state == JobState.RETRY_WAIT:
        job.apply(
            advance(job.ref, JobQueued, at=at, workflow=job.workflow, priority=5, reason="retry")
        )
    job.apply(
        advance(
            job.ref,
            JobAdmitted,
            at=at,
            workflow=job.workflow,
            priority=5,
            attempt=attempt,
            running=1,
            max_jobs=2,
        )
    )
    return job.apply(
        advance(
            job.ref,
            JobStarted,
            at=at + timedelta(seconds=1),
            workflow=job.workflow,
            attempt=attempt,
            executor="k8s",
            job_name=f"wt-7-{attempt}",
            cluster="eu-1",
        )
    )


def reported(job: Job, status: str, **fields: Any) -> tuple[Job, str]:
    events, answer = plan_report(job, status, by="worker", now=T0 + timedelta(minutes=1), **fields)
    for event in events:
        job.apply(event)
    return job, answer


# --- submissions ------------------------------------------------------------------------------


def test_the_seeds_body_is_a_submission_with_the_defaults():
    task = submission({k: v for k, v in BODY.items() if k != "priority"})
    assert (task.workflow, task.parameters, task.max_retries, task.timeout) == (
        "pipe-456",
        {},
        3,
        None,
    )
    assert task.priority == engine_priority(1) == 10
    assert task.attributes["priority"] == 1 and task.attributes["type"] == "pipeline_execution"


def test_without_a_pipeline_the_type_is_the_workflow():
    task = submission({**BODY, "type": "ml_training", "task_spec": {"timeout": 60}})
    assert (task.workflow, task.parameters, task.timeout) == ("ml_training", {}, 60.0)


@pytest.mark.parametrize(
    "change",
    [
        {"type": "batch"},
        {"type": None},
        {"project_id": ""},
        {"project_id": 5},
        {"task_spec": []},
        {"task_spec": {"pipeline_id": ""}},
        {"task_spec": {"parameters": "x"}},
        {"task_spec": {"timeout": 0}},
        {"task_spec": {"timeout": True}},
        {"resource_requirements": "big"},
        {"resource_requirements": {"memory": "2 gigs"}},
        {"data_access": None},
        {"data_access": {"storage_credentials": "user:pa55word"}},
        {"data_access": {"storage_credentials": {"key": "x"}}},
        {"priority": "1"},
        {"priority": float("nan")},
        {"priority": 0},
        {"priority": 11},
        {"priority": 2.5},
        {"max_retries": 101},
        {"max_retries": 1.5},
        {"extra": 1},
    ],
)
def test_an_invalid_submission_names_what_is_wrong(change):
    with pytest.raises(InvalidWorkTask):
        submission({**BODY, **change})


def test_every_documented_priority_keeps_its_own_rank_on_the_engines_scale():
    documented = range(LOWEST_PRIORITY, HIGHEST_PRIORITY + 1)
    engine = [engine_priority(p) for p in documented]
    assert all(more > less for less, more in zip(engine[1:], engine, strict=False))
    assert (min(engine), max(engine)) == (1, LEAST_URGENT)  # all within the engine's scale
    assert [dialect_priority(e) for e in engine] == list(documented)
    assert engine_priority(7.0) == engine_priority(7) == 4


# --- tokens and memory ------------------------------------------------------------------------


def test_a_worker_token_fits_its_attempt_only():
    token = worker_token(KEY, 7, 2)
    assert token.startswith(TOKEN_PREFIX)
    assert token_fits(token, KEY, 7, 2)
    assert not token_fits(token, KEY, 7, 1) and not token_fits(token, KEY, 8, 2)
    assert not token_fits(token, "", 7, 2) and not token_fits(token, "other-key", 7, 2)


def test_memory_quantities_and_the_raised_limit():
    assert memory_bytes("512Mi") == 512 * 2**20 and memory_bytes("1G") == 10**9
    assert raised_memory("2Gi", "16Gi") == "3072Mi"
    assert raised_memory("12Gi", "16Gi") == "16384Mi"
    with pytest.raises(InvalidWorkTask):
        memory_bytes("-1Gi")


@pytest.mark.parametrize(
    ("metadata", "message", "reason"),
    [
        ({"reason": "OOMKilled"}, None, "OOMKilled"),
        ({}, " Evicted ", "Evicted"),
        ({"reason": "Crashed"}, "DeadlineExceeded", "DeadlineExceeded"),
        ({}, "the pod was OOMKilled", "OOMKilled"),
        ({}, "Pod OOMKilled (137)", "OOMKilled"),
        ({}, "exit 2: OOMKilled?", "OOMKilled"),
        ({}, "node pressure; pod Evicted, then DeadlineExceeded", "Evicted"),
        ({"reason": "Evicted"}, "Pod OOMKilled", "Evicted"),
        ({}, "NotOOMKilledX", None),
        ({}, "OOMKilledX and preEvicted and DeadlineExceeded_2", None),
        ({}, "the pod was oomkilled", None),
        ({}, "OOMKILLED", None),
        ({}, "step 2 crashed", None),
        ({"reason": "oomkilled"}, None, None),
    ],
)
def test_a_transient_failure_is_named_by_metadata_or_a_whole_word(metadata, message, reason):
    assert transient_reason(metadata, message) == reason


# --- reports ----------------------------------------------------------------------------------


def test_executing_then_completed_is_stored_with_what_the_worker_reported():
    job, answer = reported(running(submitted()), "executing", metadata={"node": "n1"})
    assert answer == "updated" and job.executing and status_of(job) == "executing"
    assert plan_report(job, "executing", by="worker", now=T0) == ([], "updated")
    job, answer = reported(
        job, "completed", output_location="s3://output/result.json", metadata={"records": 1000}
    )
    assert answer == "updated" and job.state == JobState.SUCCEEDED
    assert (job.output_location, job.metadata) == ("s3://output/result.json", {"records": 1000})


def test_an_oom_kill_is_retried_with_more_memory_until_retries_run_out():
    job, answer = reported(
        running(submitted(max_retries=1)), "failed", metadata={"reason": "OOMKilled"}
    )
    assert answer == "requeued_for_retry" and job.state == JobState.RETRY_WAIT
    assert (job.retries, job.retry_reason, job.memory) == (1, "OOMKilled", "3072Mi")
    assert T0 + timedelta(minutes=1) <= job.run_at <= T0 + timedelta(minutes=1, seconds=5)
    job, answer = reported(running(job, attempt=2), "failed", error_message="OOMKilled")
    assert answer == "updated" and job.state == JobState.FAILED
    assert job.failure == "OOMKilled" and job.retry_reason == "OOMKilled"
    assert job.memory == "3072Mi"  # raised for a retry only


def test_the_retry_delay_follows_the_settings():
    job, _ = reported(
        running(submitted()), "failed", error_message="Evicted", retry_delay=0, retry_max_delay=0
    )
    assert job.run_at == T0 + timedelta(minutes=1) and job.memory is None


def test_a_deadline_exceeded_without_retries_left_ends_timed_out():
    job, answer = reported(
        running(submitted(max_retries=0)), "failed", metadata={"reason": "DeadlineExceeded"}
    )
    assert answer == "updated" and status_of(job) == "timeout"


def test_only_the_head_of_a_long_message_is_searched_and_never_a_cut_word():
    filler = "x " * (MESSAGE_SCAN // 2)
    assert transient_reason({}, filler + "OOMKilled") is None
    assert transient_reason({}, filler[:-2] + " OOMKilled") is None
    cut = " " * (MESSAGE_SCAN - len("Evicted")) + "Evicted" + "z"  # "Evictedz" at the cut
    assert transient_reason({}, cut) is None
    assert transient_reason({}, cut[:-1] + " z") == "Evicted"


def test_a_transient_word_in_the_message_is_retried_with_more_memory():
    job, answer = reported(running(submitted()), "failed", error_message="Pod OOMKilled (137)")
    assert answer == "requeued_for_retry" and job.state == JobState.RETRY_WAIT
    assert (job.retries, job.retry_reason, job.memory) == (1, "OOMKilled", "3072Mi")


def test_a_failure_that_is_not_transient_ends_failed_at_once():
    job, answer = reported(running(submitted()), "failed", error_message="exit 2: NotOOMKilledX")
    assert answer == "updated" and job.state == JobState.FAILED
    assert (job.retries, job.failure) == (0, "exit 2: NotOOMKilledX")
    job, _ = reported(running(submitted()), "timeout")
    assert job.state == JobState.TIMED_OUT


def test_a_report_the_lifecycle_forbids_is_refused():
    job, _ = reported(running(submitted()), "cancelled")
    assert job.state == JobState.CANCELLED
    with pytest.raises(ReportRefused, match="already cancelled"):
        plan_report(job, "completed", by="worker", now=T0)
    with pytest.raises(ReportRefused, match="no worker runs it"):
        plan_report(submitted(), "completed", by="worker", now=T0)


def test_a_report_from_an_attempt_that_is_over_is_refused():
    job, _ = reported(running(submitted()), "failed", error_message="Evicted")
    with pytest.raises(ReportRefused, match="attempt 1"):
        plan_report(job, "completed", by="worker", now=T0, attempt=1)
    job = running(job, attempt=2)
    with pytest.raises(ReportRefused, match="attempt 1"):
        plan_report(job, "cancelled", by="worker", now=T0, attempt=1)
    assert plan_report(job, "completed", by="worker", now=T0, attempt=2)[1] == "updated"


# --- the view and the updates -----------------------------------------------------------------


def test_the_view_has_every_field_of_the_seed_in_utc():
    job = running(submitted())
    task = view(job)
    assert {
        "worktask_id",
        "type",
        "status",
        "priority",
        "submitted_at",
        "started_at",
        "completed_at",
        "project_id",
        "task_spec",
        "resource_requirements",
        "data_access",
        "error_message",
        "kubernetes_job_name",
        "cluster_name",
        "retry_count",
        "max_retries",
        "retry_reason",
    } <= set(task)
    assert (task["worktask_id"], task["status"], task["priority"]) == ("7", "spawned", 1)
    assert task["submitted_at"] == "2024-01-15T10:30:00Z"
    assert task["started_at"] == "2024-01-15T10:30:01Z" and task["completed_at"] is None
    assert (task["kubernetes_job_name"], task["cluster_name"]) == ("wt-7-1", "eu-1")
    assert task["data_access"] == BODY["data_access"]


def test_the_view_masks_secret_looking_values_but_shows_the_secrets_name():
    job = submitted(
        task_spec={"pipeline_id": "echo", "parameters": {"password": "hunter2-hunter2"}},
        data_access={"storage_credentials": "creds-secret", "token": "abc123abc123abc"},
    )
    task = view(job)
    assert "hunter2-hunter2" not in str(task) and "abc123abc123abc" not in str(task)
    assert task["data_access"]["storage_credentials"] == "creds-secret"
    as_submitted = view(job, masked=False)  # for the task's own worker
    assert as_submitted["task_spec"]["parameters"]["password"] == "hunter2-hunter2"
    assert as_submitted["data_access"]["token"] == "abc123abc123abc"


def test_updates_say_the_status_and_the_fields_an_event_sets():
    job = submitted()
    submitted_event = JobSubmitted(
        id=job.id,
        version=1,
        at=T0,
        job_id=7,
        client="acme",
        workflow="pipe-456",
        parameters={},
        priority=5,
        run_at=T0,
        state="queued",
        run=RunSpec(kind="worker"),
        dialect=DIALECT,
    )
    assert update(submitted_event) == {"status": "queued", "submitted_at": "2024-01-15T10:30:00Z"}
    job = running(job)
    ref = job.ref
    executing = advance(ref, JobExecuting, at=T0, attempt=1, by="worker")
    assert update(executing) == {"status": "executing"}
    retry = advance(
        ref,
        JobRetryScheduled,
        at=T0,
        workflow="pipe-456",
        priority=5,
        attempt=1,
        retry_at=T0,
        reason="OOMKilled",
        transient="OOMKilled",
    )
    assert update(retry) == {
        "status": "queued",
        "retry_count": 1,
        "retry_reason": "OOMKilled",
        "error_message": "OOMKilled",
    }
    done = advance(ref, JobSucceeded, at=T0, workflow="pipe-456", attempt=1)
    assert update(done) == {"status": "completed", "completed_at": "2024-01-15T10:30:00Z"}
    failed = advance(
        ref, JobFailed, at=T0, workflow="pipe-456", attempt=1, reason="exit 1", failure="other"
    )
    assert update(failed)["error_message"] == "exit 1"  # type: ignore[index]
    timed_out = advance(ref, JobTimedOut, at=T0, workflow="pipe-456", attempt=1, timeout=30)
    assert update(timed_out)["status"] == "timeout"  # type: ignore[index]
    cancelled = advance(ref, JobCancelled, at=T0, reason="stop", by="acme")
    assert update(cancelled)["status"] == "cancelled"  # type: ignore[index]
    second = JobStarted(  # a second attempt's start keeps the first one's started_at
        id=job.id,
        version=job.version + 1,
        at=T0,
        job_id=7,
        client="acme",
        workflow="pipe-456",
        attempt=2,
        executor="local",
    )
    assert update(second) == {"status": "spawned"}
    queued_job = submitted()
    edit = advance(
        queued_job.ref,
        JobUpdated,
        at=T0,
        workflow="pipe-456",
        priority=5,
        run_at=T0,
        persist=True,
        changed=["persist"],
    )
    assert update(edit) is None
