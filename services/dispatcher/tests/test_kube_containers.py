"""A DOCKER task's Job: its manifest from the Drove spec, how its status ends the task (no
worker reports: the container's exit is the result), when its image failed to pull, and its
log as output lines."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from taskengine_core.dialects.drove.submission import create_operation
from taskengine_core.startable import PROVISIONING
from taskengine_dispatcher.executors import kube_containers, kube_jobs
from taskengine_dispatcher.executors.kube_containers import (
    container_run,
    manifest,
    pull_failure,
    verdict,
)

NOW = datetime(2030, 1, 1, tzinfo=UTC)
VOLUME = {"pathInContainer": "/data", "pathOnHost": "/mnt/acme/in", "mode": "READ_ONLY"}


def submitted(**executable):  # type: ignore[no-untyped-def]
    spec = {
        "sourceAppName": "APP",
        "taskId": "T1",
        "executable": {"type": "DOCKER", "url": "ghcr.io/org/task:2", **executable},
        "resources": [{"type": "CPU", "count": 2}, {"type": "MEMORY", "sizeInMB": 300}],
        "env": {"ITERATIONS": "10"},
        "args": ["--fast"],
        "volumes": [VOLUME],
    }
    return create_operation({"type": "CREATE", "spec": spec}).submitted(42, "acme", NOW)


def test_the_job_runs_the_tasks_image_with_its_args_env_resources_and_volumes():
    job = manifest(name="te-42-1", job_id=42, run=submitted().run, attempt=1, timeout=100, ttl=600)
    assert kube_jobs.attempt_of(job) == (42, 1)
    assert job["metadata"]["labels"]["app.kubernetes.io/name"] == "taskengine-task"
    spec = job["spec"]
    assert (spec["backoffLimit"], spec["ttlSecondsAfterFinished"]) == (0, 600)
    assert spec["activeDeadlineSeconds"] == 100 + kube_jobs.DEADLINE_GRACE
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and pod["automountServiceAccountToken"] is False
    assert pod["volumes"] == [
        {"name": "volume-0", "hostPath": {"path": "/mnt/acme/in", "type": "Directory"}}
    ]
    amounts = {"cpu": "2", "memory": "300Mi"}
    assert pod["containers"] == [
        {
            "name": "task",
            "image": "ghcr.io/org/task:2",
            "args": ["--fast"],
            "env": [{"name": "ITERATIONS", "value": "10"}],
            "resources": {"requests": amounts, "limits": amounts},
            "volumeMounts": [{"name": "volume-0", "mountPath": "/data", "readOnly": True}],
            "securityContext": kube_jobs.CONTAINER_SECURITY,
        }
    ]


def test_the_pull_timeout_is_the_tasks_or_a_default():
    run = container_run(submitted(dockerPullTimeout="2 minutes").run, 50)
    assert run is not None and (run.pull_timeout.seconds, run.pull_timeout.given) == (
        120,
        "2 minutes",
    )
    run = container_run(submitted().run, 50)
    assert run is not None and run.pull_timeout == kube_containers.DEFAULT_PULL_TIMEOUT
    workflow = {"type": "WORKFLOW", "name": "echo"}
    spec = {"sourceAppName": "A", "taskId": "T", "executable": workflow, "resources": []}
    spec["resources"] = [{"type": "CPU", "count": 1}, {"type": "MEMORY", "sizeInMB": 1}]
    other = create_operation({"type": "CREATE", "spec": spec}).submitted(1, "acme", NOW)
    assert container_run(other.run, 50) is None


def condition(kind: str, reason: str, message: str = "") -> dict:
    return {"type": kind, "status": "True", "reason": reason, "message": message}


def pod(state: dict, **status) -> dict:  # type: ignore[no-untyped-def]
    return {"containerStatuses": [{"name": "task", "state": state}], **status}


def ended(code: int, why: str = "Error") -> dict:
    return pod({"terminated": {"exitCode": code, "reason": why}})


RUNNING = pod({"running": {"startedAt": "now"}})
COMPLETE = {"conditions": [condition("Complete", "CompletionsReached")]}
FAILED = {"conditions": [condition("Failed", "BackoffLimitExceeded")]}
DEADLINE = {"conditions": [condition("Failed", "DeadlineExceeded", "active too long")]}


@pytest.mark.parametrize(
    ("job", "pod_status", "gone", "status", "exit_code", "reason"),
    [
        ({"active": 1}, RUNNING, False, None, None, None),
        (COMPLETE, ended(0, "Completed"), False, "succeeded", 0, ""),
        (COMPLETE, None, False, "succeeded", 0, ""),
        (FAILED, ended(3), False, "failed", 3, "the container exited with code 3"),
        (FAILED, None, False, "failed", None, "its Job failed (BackoffLimitExceeded)"),
        (DEADLINE, ended(143), False, "timed_out", None, "DeadlineExceeded: active too long"),
        ({"active": 1}, ended(137, "OOMKilled"), False, "failed", 137, "OOMKilled"),
        (None, RUNNING, True, "failed", None, "lost: its Job vanished"),
    ],
)
def test_the_containers_end_is_the_tasks(job, pod_status, gone, status, exit_code, reason):
    outcome = verdict(job, pod_status, 60.0, gone=gone)
    if status is None:
        assert outcome is None
        return
    assert outcome is not None
    assert (outcome.status, outcome.exit_code) == (status, exit_code)
    assert outcome.reason.startswith(reason), outcome.reason
    assert outcome.transient == ("lost" if gone else None)
    if status == "timed_out":
        assert outcome.timeout == 60.0


def test_an_image_that_fails_to_pull_ends_provisioning_failed():
    waiting = pod({"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling"}})
    assert pull_failure(waiting) == "ImagePullBackOff: Back-off pulling"
    assert pull_failure(pod({"waiting": {"reason": "ContainerCreating"}})) is None
    assert pull_failure(RUNNING) is None and pull_failure(None) is None
    assert kube_containers.running(RUNNING) and not kube_containers.running(waiting)
    run = container_run(submitted(dockerPullTimeout="1 second").run, 50)
    assert run is not None
    outcome = kube_containers.pull_failed(run, "ErrImagePull: not found")
    assert outcome.reason.startswith(PROVISIONING)
    assert "(1 second): ErrImagePull: not found" in outcome.reason


def test_the_pods_log_becomes_output_events_the_projection_keeps_whole():
    text = "".join(f"line {n}\n" for n in range(2500))
    events = kube_containers.output(42, 1, text)
    assert [e.version for e in events] == [1, 2, 3]
    assert [len(e.lines) for e in events] == [1000, 1000, 500]
    assert {line.step for e in events for line in e.lines} == {1}
    assert events[2].lines[-1].text == "line 2499" and events[0].attempt == 1
    assert kube_containers.output(42, 1, "") == []
