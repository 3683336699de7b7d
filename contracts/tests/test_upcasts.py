"""Stored `job.submitted` events of the shape before the run spec decode with the `run` the
dispatcher derived from them when it started the job; a stored `job.failed` without its
failure kind decodes with the kind its reason named."""

from __future__ import annotations

import json

import msgspec
import pytest
from taskengine_contracts.events import (
    JobFailed,
    JobQueued,
    JobSubmitted,
    Limit,
    Resources,
    RetryPolicy,
    RunSpec,
    Volume,
    decode,
)
from taskengine_contracts.upcasts import upcast

BASE = {
    "type": "job.submitted",
    "id": "11111111-2222-4333-8444-555555555555",
    "version": 1,
    "at": "2024-05-01T12:00:00Z",
    "job_id": 42,
    "client": "acme",
    "priority": 5,
    "run_at": "2024-05-01T12:00:00Z",
    "state": "queued",
    "callbacks": [],
    "semaphore_url": None,
    "task_id": None,
    "concurrency_key": None,
}

TASKENGINE = {
    **BASE,
    "workflow": "echo",
    "parameters": {"greeting": "hi", "timeout": 30},
    "timeout": 30.0,
    "dialect": "taskengine",
    "retry": None,
    "attributes": {},
}
WORK_TASK = {
    **BASE,
    "workflow": "ml_training",
    "parameters": {"epochs": 3},
    "timeout": 600.0,
    "dialect": "worktasks",
    "retry": {"max_retries": 2, "backoff": "exponential_jitter", "transient_only": True},
    "attributes": {
        "type": "ml_training",
        "project_id": "p1",
        "task_spec": {"parameters": {"epochs": 3}, "timeout": 600},
        "resource_requirements": {"cpu": 0.5, "memory": "1Gi", "gpu": True},
        "data_access": {"storage_credentials": "acme-s3", "bucket": "in"},
        "priority": 1,
    },
}
DOCKER = {
    **BASE,
    "workflow": "docker",
    "parameters": {"image": "ghcr.io/org/task:2", "args": ["--fast"], "env": {"N": "1"}},
    "timeout": None,
    "dialect": "drove",
    "retry": {"max_retries": 0, "backoff": "fixed", "transient_only": False},
    "attributes": {
        "sourceAppName": "APP",
        "taskId": "T1",
        "executable": {"type": "DOCKER", "url": "ghcr.io/org/task:2"},
        "resources": [{"type": "CPU", "count": 2}, {"type": "MEMORY", "sizeInMB": 300}],
        "volumes": [
            {"pathInContainer": "/data", "pathOnHost": "/mnt/acme/in", "mode": "READ_ONLY"}
        ],
        "configs": [],
        "env": {"N": "1"},
        "args": ["--fast"],
        "opSpec": {"timeout": "300 seconds", "parallelism": 1, "failureStrategy": "STOP"},
        "instanceId": "TI-1",
    },
}
DROVE_WORKFLOW = {
    **DOCKER,
    "workflow": "echo",
    "parameters": {"greeting": "hi"},
    "attributes": {**DOCKER["attributes"], "volumes": [], "args": [], "env": {"ITERATIONS": "10"}},
}


OP_TIMEOUT = Limit(seconds=300, name="opSpec.timeout", given="300 seconds")


def stored(payload: dict) -> bytes:
    return json.dumps(payload).encode()


@pytest.mark.parametrize(
    ("payload", "run"),
    [
        (TASKENGINE, RunSpec(timeout=30.0)),
        (
            WORK_TASK,
            RunSpec(
                kind="worker",
                resources=Resources(cpu="0.5", memory="1Gi", gpu=1),
                secret="acme-s3",
                timeout=600.0,
                retry=RetryPolicy(max_retries=2, backoff="exponential_jitter", transient_only=True),
            ),
        ),
        (
            DOCKER,
            RunSpec(
                kind="container",
                image="ghcr.io/org/task:2",
                args=["--fast"],
                env={"N": "1"},
                resources=Resources(cpu="2", memory="300Mi"),
                volumes=[Volume(host_path="/mnt/acme/in", container_path="/data")],
                retry=RetryPolicy(max_retries=0),
                start_timeout=OP_TIMEOUT,
            ),
        ),
        (
            DROVE_WORKFLOW,
            RunSpec(
                env={"ITERATIONS": "10"}, retry=RetryPolicy(max_retries=0), start_timeout=OP_TIMEOUT
            ),
        ),
    ],
    ids=["taskengine", "work task", "drove docker", "drove workflow"],
)
def test_an_old_submission_decodes_with_the_run_it_was_started_with(payload, run):
    event = decode(stored(payload))
    assert isinstance(event, JobSubmitted)
    assert event.run == run
    assert (event.workflow, event.parameters, event.attributes) == (
        payload["workflow"],
        payload["parameters"],
        payload["attributes"],
    )


def test_a_work_task_without_storage_credentials_or_gpu_asks_for_neither():
    attributes = {
        **WORK_TASK["attributes"],
        "resource_requirements": {"cpu": "2", "gpu": False},
        "data_access": {},
    }
    event = decode(stored({**WORK_TASK, "attributes": attributes}))
    assert isinstance(event, JobSubmitted)
    assert (event.run.resources, event.run.secret) == (Resources(cpu="2"), None)


def test_a_drove_tasks_limits_and_configs_reach_its_run():
    attributes = {
        **DOCKER["attributes"],
        "executable": {**DOCKER["attributes"]["executable"], "dockerPullTimeout": "2 minutes"},
        "configs": [{"type": "INLINE", "localFilename": "/etc/x", "data": "eA=="}],
        "opSpec": {"timeout": "5m", "parallelism": 1, "failureStrategy": "STOP"},
    }
    event = decode(stored({**DOCKER, "attributes": attributes}))
    assert isinstance(event, JobSubmitted)
    assert event.run.start_timeout == Limit(seconds=300, name="opSpec.timeout", given="5m")
    assert event.run.pull_timeout == Limit(seconds=120, name="dockerPullTimeout", given="2 minutes")
    assert event.run.unstartable is not None and "spec.configs" in event.run.unstartable


def test_the_upcast_event_encodes_in_the_current_shape():
    event = decode(stored(WORK_TASK))
    again = json.loads(msgspec.json.encode(event))
    assert "timeout" not in again and "retry" not in again
    assert again["run"]["kind"] == "worker"
    assert decode(msgspec.json.encode(event)) == event


def test_only_an_old_submission_is_upcast():
    assert upcast({**TASKENGINE, "run": {}}) is None
    assert upcast({"type": "job.queued"}) is None
    assert upcast([1, 2]) is None
    with pytest.raises(msgspec.ValidationError):
        decode(stored({**TASKENGINE, "priority": "high"}))
    queued = {
        **{k: BASE[k] for k in ("type", "id", "version", "at", "job_id", "client", "priority")},
        "type": "job.queued",
        "workflow": "echo",
        "reason": "due",
    }
    assert isinstance(decode(stored(queued)), JobQueued)


@pytest.mark.parametrize(
    ("reason", "failure"),
    [
        ("lost: the dispatcher stopped", "lost"),
        ("provisioning failed: the image was not pulled", "unstartable"),
        ("step 1 exited with 3", "other"),
        ("the pod was lost", "other"),
    ],
)
def test_an_old_failure_decodes_with_the_kind_its_reason_named(reason, failure):
    old = {
        **{k: BASE[k] for k in ("id", "version", "at", "job_id", "client", "priority")},
        "type": "job.failed",
        "workflow": "echo",
        "attempt": 2,
        "reason": reason,
    }
    event = decode(stored(old))
    assert isinstance(event, JobFailed)
    assert (event.failure, event.reason) == (failure, reason)
    with pytest.raises(msgspec.ValidationError):
        decode(stored({**old, "failure": "unheard-of"}))
