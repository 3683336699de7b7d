"""A rerun runs exactly what the original ran: its run spec and its dialect's attributes."""

from __future__ import annotations

from datetime import UTC, datetime

from taskengine_contracts.events import JobBroken, JobSubmitted
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
