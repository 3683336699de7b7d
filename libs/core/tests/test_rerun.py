"""A rerun runs exactly what the original ran: its run spec and its dialect's attributes."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import uuid4

from taskengine_contracts.events import JobBroken, JobSubmitted, TaskDefinition
from taskengine_core.dialects import drove, scheduled
from taskengine_core.dialects.drove.submission import create_operation
from taskengine_core.dialects.drove.view import instance_view
from taskengine_core.dialects.scheduled.submission import run_submitted
from taskengine_core.dialects.taskengine.submission import plan_rerun
from taskengine_core.dialects.worktasks import DIALECT
from taskengine_core.dialects.worktasks.submission import submission
from taskengine_core.dialects.worktasks.view import view as work_task_view
from taskengine_core.jobs import Job

NOW = datetime(2030, 1, 1, tzinfo=UTC)
BODY = {
    "type": "ml_training",
    "project_id": "proj-1",
    "task_spec": {"parameters": {"epochs": 2}, "timeout": 90},
    "resource_requirements": {"cpu": "1", "memory": "2Gi"},
    "data_access": {"storage_credentials": "acme-s3"},
    "max_retries": 5,
}


def test_a_work_tasks_rerun_keeps_its_run_type_project_and_resources():
    original = Job.started(submission(BODY).submitted(7, "acme", NOW))
    rerun, broken = plan_rerun(original, 8, "acme", NOW, [])
    assert isinstance(rerun, JobSubmitted) and isinstance(broken, JobBroken)
    assert (rerun.job_id, rerun.dialect, rerun.state) == (8, DIALECT, "queued")
    assert rerun.run == original.run and rerun.run.kind == "worker"
    assert rerun.attributes == original.attributes
    view = work_task_view(Job.started(rerun))
    assert (view["type"], view["project_id"], view["max_retries"]) == ("ml_training", "proj-1", 5)
    assert view["resource_requirements"] == {"cpu": "1", "memory": "2Gi"}
    assert broken.rerun_as == 8


def test_a_drove_tasks_rerun_keeps_its_container_run_and_its_spec():
    volume = {"pathInContainer": "/data", "pathOnHost": "/mnt/acme", "mode": "READ_ONLY"}
    spec = {
        "sourceAppName": "TEST_APP",
        "taskId": "T0012",
        "executable": {
            "type": "DOCKER",
            "url": "ghcr.io/appform-io/test-task",
            "dockerPullTimeout": "100 seconds",
        },
        "resources": [{"type": "MEMORY", "sizeInMB": 128}, {"type": "CPU", "count": 1}],
        "env": {"ITERATIONS": "10"},
        "volumes": [volume],
    }
    operation = {"type": "CREATE", "spec": spec, "opSpec": {"timeout": "5m"}}
    original = Job.started(create_operation(operation).submitted(7, "acme", NOW))
    rerun, broken = plan_rerun(original, 8, "acme", NOW, [])
    assert isinstance(rerun, JobSubmitted) and isinstance(broken, JobBroken)
    assert (rerun.job_id, rerun.dialect, rerun.state) == (8, drove.DIALECT, "queued")
    assert rerun.run == original.run
    assert (rerun.run.kind, rerun.run.image) == ("container", "ghcr.io/appform-io/test-task")
    assert rerun.run.resources is not None and rerun.run.resources.memory == "128Mi"
    assert [v.host_path for v in rerun.run.volumes] == ["/mnt/acme"]
    assert rerun.run.start_timeout == original.run.start_timeout is not None
    assert rerun.run.retry.max_retries == 0
    assert rerun.attributes == original.attributes
    assert instance_view(Job.started(rerun), "host")["taskId"] == "T0012"


def test_a_scheduled_runs_rerun_stays_a_run_of_its_task_with_its_retry_policy():
    definition = TaskDefinition(
        title="nightly",
        description="",
        schedule_kind="once",
        schedule_expr=None,
        payload={"workflow": "echo", "parameters": {"content_id": "c-1"}},
        created_by=uuid4(),
        priority=3,
        max_retries=4,
        backoff_strategy="fixed",
        concurrency_key="nightly",
    )
    task_id = uuid4()
    original = Job.started(run_submitted(7, "acme", NOW, task_id, definition))
    rerun, _ = plan_rerun(original, 8, "acme", NOW, [])
    assert isinstance(rerun, JobSubmitted)
    assert (rerun.dialect, rerun.task_id, rerun.concurrency_key) == (
        scheduled.DIALECT,
        task_id,
        "nightly",
    )
    assert (rerun.workflow, rerun.parameters, rerun.priority) == ("echo", {"content_id": "c-1"}, 3)
    assert rerun.run == original.run and rerun.run.retry.max_retries == 4
