"""An attempt's Kubernetes Job: its manifest, and how its status classifies the attempt's end
(structured reasons only: the container's OOMKilled, the pod's Evicted, the Job's
DeadlineExceeded, the worker's exit code)."""

from __future__ import annotations

import pytest
from taskengine_core.dialects.worktasks.submission import requested
from taskengine_dispatcher.executors import kube_jobs
from taskengine_dispatcher.executors.kube_jobs import manifest, resources, verdict


def job_manifest(**changes):  # type: ignore[no-untyped-def]
    given = {
        "name": "te-42-2",
        "job_id": 42,
        "attempt": 2,
        "image": "registry.example/taskengine:1",
        "env": {"TASKENGINE_JOB_ID": "42", "TASKENGINE_ATTEMPT": "2"},
        "requirements": requested({"cpu": "2", "memory": "1Gi", "gpu": False}),
        "memory": None,
        "secret": None,
        "secret_keys": ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"],
        "timeout": 90.5,
        "ttl": 600,
    }
    return manifest(**(given | changes))


def test_a_job_runs_the_worker_once_with_its_labels_deadline_and_ttl():
    job = job_manifest()
    labels = {"taskengine.io/task-id": "42", "taskengine.io/attempt": "2"}
    assert job["metadata"]["name"] == "te-42-2" == kube_jobs.job_name(42, 2)
    assert labels.items() <= job["metadata"]["labels"].items()
    spec = job["spec"]
    assert (spec["backoffLimit"], spec["ttlSecondsAfterFinished"]) == (0, 600)
    assert spec["activeDeadlineSeconds"] == 91 + kube_jobs.DEADLINE_GRACE
    assert labels.items() <= spec["template"]["metadata"]["labels"].items()
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and pod["automountServiceAccountToken"] is False
    [container] = pod["containers"]
    assert container["args"] == ["taskengine", "worker"]
    assert container["env"] == [
        {"name": "TASKENGINE_JOB_ID", "value": "42"},
        {"name": "TASKENGINE_ATTEMPT", "value": "2"},
    ]
    assert kube_jobs.attempt_of(job) == (42, 2)
    assert kube_jobs.attempt_of({"metadata": {"labels": {"app": "other"}}}) is None


@pytest.mark.parametrize(
    ("requirements", "memory", "expected"),
    [
        ({"cpu": "2", "memory": "1Gi", "gpu": False}, None, {"cpu": "2", "memory": "1Gi"}),
        ({"cpu": 0.5, "memory": "1Gi"}, "1536Mi", {"cpu": "0.5", "memory": "1536Mi"}),
        ({"gpu": True}, None, {"nvidia.com/gpu": "1"}),
        ({"memory": "4Gi", "gpu": 2}, None, {"memory": "4Gi", "nvidia.com/gpu": "2"}),
        ({}, None, None),
        (None, None, None),
    ],
)
def test_requests_and_limits_come_from_the_resource_requirements(requirements, memory, expected):
    requirements = requested(requirements or {})  # as a work task's run asks for them
    if expected is None:
        assert resources(requirements, memory) == {}
        assert (
            "resources"
            not in job_manifest(requirements=requirements)["spec"]["template"]["spec"][
                "containers"
            ][0]
        )
    else:
        assert resources(requirements, memory) == {"requests": expected, "limits": expected}


def test_the_storage_secret_is_referenced_by_name_never_copied():
    [container] = job_manifest(secret="creds-secret")["spec"]["template"]["spec"]["containers"]
    refs = [e for e in container["env"] if "valueFrom" in e]
    assert refs == [
        {
            "name": key,
            "valueFrom": {"secretKeyRef": {"name": "creds-secret", "key": key, "optional": True}},
        }
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    ]


def condition(kind: str, reason: str, message: str = "") -> dict:
    return {"type": kind, "status": "True", "reason": reason, "message": message}


def failed_job(reason: str, message: str = "") -> dict:
    return {
        "conditions": [condition("FailureTarget", reason, message), condition("Failed", reason)]
    }


def pod(exit_code: int, why: str = "Error", phase: str = "Failed", **status) -> dict:  # type: ignore[no-untyped-def]
    """A pod's status with the worker container terminated (`why`: its reason)."""
    terminated = {"exitCode": exit_code, "reason": why}
    state = {"name": "worker", "state": {"terminated": terminated}}
    return {"phase": phase, "containerStatuses": [state], **status}


RUNNING_POD = {
    "phase": "Running",
    "containerStatuses": [{"name": "worker", "state": {"running": {"startedAt": "now"}}}],
}
RUNNING_JOB = {"active": 1}
COMPLETE_JOB = {"conditions": [condition("Complete", "CompletionsReached")]}
FAILED_JOB = failed_job("BackoffLimitExceeded")
SUCCEEDED_POD = pod(0, "Completed", "Succeeded")


@pytest.mark.parametrize(
    ("job", "pod_status", "gone", "status", "transient", "exit_code", "reason"),
    [
        (RUNNING_JOB, RUNNING_POD, False, None, None, None, None),
        (RUNNING_JOB, None, False, None, None, None, None),
        # the container's own reason, before the Job says anything
        (RUNNING_JOB, pod(137, "OOMKilled"), False, "failed", "OOMKilled", 137, "OOMKilled: "),
        (
            failed_job("BackoffLimitExceeded"),
            pod(137, reason="Evicted", message="low memory"),
            False,
            "failed",
            "Evicted",
            137,
            "Evicted: low memory",
        ),
        (
            failed_job("DeadlineExceeded", "Job was active longer than specified deadline"),
            pod(143),
            False,
            "failed",
            "DeadlineExceeded",
            None,
            "DeadlineExceeded: Job was active longer",
        ),
        (FAILED_JOB, pod(1), False, "failed", "lost", 1, "lost: the worker exited (code 1)"),
        (FAILED_JOB, None, False, "failed", "lost", None, "lost: its Job failed (BackoffLimit"),
        (COMPLETE_JOB, None, False, "failed", "lost", None, "lost: its Job completed without"),
        (
            COMPLETE_JOB,
            SUCCEEDED_POD,
            False,
            "failed",
            "lost",
            0,
            "lost: the worker exited (code 0)",
        ),
        (None, RUNNING_POD, True, "failed", "lost", None, "lost: its Job vanished"),
        (None, pod(137, "OOMKilled"), True, "failed", "OOMKilled", 137, "OOMKilled"),
        (None, None, False, None, None, None, None),
    ],
)
def test_how_an_attempt_ended_is_read_from_structured_status(
    job, pod_status, gone, status, transient, exit_code, reason
):
    outcome = verdict(job, pod_status, gone=gone)
    if status is None:
        assert outcome is None
        return
    assert outcome is not None
    assert (outcome.status, outcome.transient, outcome.exit_code) == (status, transient, exit_code)
    assert outcome.reason.startswith(reason), outcome.reason


def test_a_message_naming_oom_is_not_an_oom_kill():
    """Reasons are read from their fields, never searched for in text."""
    status = pod(1, "Error", message="OOMKilled Evicted DeadlineExceeded")
    outcome = verdict(failed_job("BackoffLimitExceeded", "OOMKilled"), status)
    assert outcome is not None and outcome.transient == "lost"


def test_a_pod_status_is_settled_once_it_says_how_the_worker_ended():
    assert not kube_jobs.settled(None) and not kube_jobs.settled(RUNNING_POD)
    assert kube_jobs.settled(pod(0, "Completed", "Succeeded"))
    assert kube_jobs.settled({"phase": "Failed", "reason": "Evicted"})


def test_a_worker_pod_runs_unprivileged_as_the_engines_user():
    pod = job_manifest()["spec"]["template"]["spec"]
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert (pod["hostNetwork"], pod["hostPID"], pod["hostIPC"]) == (False, False, False)
    [container] = pod["containers"]
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
    }
    other = job_manifest()["spec"]["template"]["spec"]
    other["securityContext"]["runAsUser"] = 0
    assert pod["securityContext"]["runAsUser"] == 10001  # each Job its own copy


@pytest.mark.parametrize(
    ("labels", "refused"),
    [
        ({"taskengine.io/client": "acme"}, False),
        ({"taskengine.io/client": "acme", "team": "x"}, False),
        ({"taskengine.io/client": "other"}, True),
        ({"taskengine.io/client": "acme2"}, True),
        ({"team": "acme"}, True),
        ({}, True),
        (None, True),  # no labels, or no such Secret
    ],
)
def test_a_storage_secret_must_be_labelled_as_the_clients_own(labels, refused):
    why = kube_jobs.secret_refusal("creds", labels, "acme")
    assert (why is not None) == refused
    if refused:
        assert why == (
            "storage_credentials: the Secret 'creds' is not labelled taskengine.io/client=acme:"
            " a task may only use its own client's Secrets"
        )
        assert "other" not in why  # another client's name is never shown
