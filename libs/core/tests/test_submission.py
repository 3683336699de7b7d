"""Every dialect's job comes from one factory, and a submission stored before the run spec
replays to the same job: the upcaster derives the run its dialect's factory gives it now."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import msgspec
import pytest
from taskengine_contracts.events import JobSubmitted, RetryPolicy, RunSpec, decode, encode
from taskengine_core.dialects.drove import submission as drove
from taskengine_core.dialects.worktasks import submission as worktasks
from taskengine_core.jobs import Job
from taskengine_core.submission import job_submitted

NOW = datetime(2030, 1, 1, tzinfo=UTC)
WORK_TASK = {
    "type": "ml_training",
    "priority": 3,
    "project_id": "proj-1",
    "task_spec": {"parameters": {"epochs": 2}, "timeout": 90},
    "resource_requirements": {"cpu": 0.5, "memory": "2Gi", "gpu": True},
    "data_access": {"storage_credentials": "acme-s3", "bucket": "in"},
    "max_retries": 4,
}
DOCKER = {
    "sourceAppName": "APP",
    "taskId": "T1",
    "executable": {"type": "DOCKER", "url": "ghcr.io/org/task:2", "dockerPullTimeout": "2m"},
    "resources": [{"type": "CPU", "count": 2}, {"type": "MEMORY", "sizeInMB": 300}],
    "env": {"ITERATIONS": "10"},
    "args": ["--fast"],
    "volumes": [{"pathInContainer": "/data", "pathOnHost": "/mnt/acme/in", "mode": "READ_ONLY"}],
}
WORKFLOW = {
    "sourceAppName": "APP",
    "taskId": "T2",
    "executable": {"type": "WORKFLOW", "name": "sleep", "parameters": {"seconds": 1}},
    "resources": [{"type": "CPU", "count": 1}, {"type": "MEMORY", "sizeInMB": 128}],
    "env": {"ITERATIONS": "10"},
}


def old_shape(event: JobSubmitted) -> bytes:
    """The event as it was stored before `run`: its timeout and retry at the top level."""
    data = json.loads(encode(event))
    run = data.pop("run")
    data["timeout"], data["retry"] = run["timeout"], run["retry"]
    return json.dumps(data).encode()


SUBMISSIONS = {
    "taskengine": job_submitted(
        7,
        "acme",
        NOW,
        workflow="echo",
        parameters={"timeout": 30},
        run=RunSpec(timeout=30.0),
        run_at=NOW + timedelta(minutes=1),
        callbacks=["http://hook.local/"],
    ),
    "tasks": job_submitted(
        7,
        "acme",
        NOW,
        workflow="echo",
        parameters={},
        run=RunSpec(retry=RetryPolicy(max_retries=2, backoff="linear")),
        dialect="tasks",
    ),
    "work task": worktasks.submission(WORK_TASK).submitted(7, "acme", NOW),
    "drove docker": drove.create_operation({"type": "CREATE", "spec": DOCKER}).submitted(
        7, "acme", NOW
    ),
    "drove workflow": drove.create_operation({"type": "CREATE", "spec": WORKFLOW}).submitted(
        7, "acme", NOW
    ),
}


@pytest.mark.parametrize("name", SUBMISSIONS)
def test_an_old_stored_submission_replays_to_the_job_the_factory_makes_now(name):
    event = SUBMISSIONS[name]
    old = decode(old_shape(event))
    assert old == event
    assert msgspec.structs.asdict(Job.started(old)) == msgspec.structs.asdict(Job.started(event))


def test_the_factory_queues_a_job_unless_it_waits_for_its_time_or_a_semaphore():
    def state(**fields):  # type: ignore[no-untyped-def]
        return job_submitted(1, "a", NOW, workflow="w", parameters={}, run=RunSpec(), **fields)

    assert state().state == "queued" and state().run_at == NOW
    assert state(run_at=NOW - timedelta(seconds=1)).state == "queued"
    assert state(run_at=NOW + timedelta(seconds=1)).state == "scheduled"
    assert state(semaphore_url="http://gate.local/").state == "scheduled"


def test_a_work_task_runs_as_a_worker_with_its_resources_secret_and_transient_only_retries():
    run = SUBMISSIONS["work task"].run
    assert (run.kind, run.secret, run.timeout) == ("worker", "acme-s3", 90.0)
    assert (run.resources.cpu, run.resources.memory, run.resources.gpu) == ("0.5", "2Gi", 1)
    assert run.retry == RetryPolicy(
        max_retries=4, backoff="exponential_jitter", transient_only=True
    )


def test_a_docker_task_runs_its_image_as_a_container_once():
    run = SUBMISSIONS["drove docker"].run
    assert (run.kind, run.image, run.args, run.env) == (
        "container",
        "ghcr.io/org/task:2",
        ["--fast"],
        {"ITERATIONS": "10"},
    )
    assert (run.resources.cpu, run.resources.memory) == ("2", "300Mi")
    assert [(v.host_path, v.container_path, v.read_only) for v in run.volumes] == [
        ("/mnt/acme/in", "/data", True)
    ]
    assert run.retry == RetryPolicy(max_retries=0)
