"""One attempt's Kubernetes Job: its name, its manifest, and how it ended as its status says.

Pure functions on the API's JSON shapes (camelCase dicts, as the API server sends them), so
the executor's decisions are tested without a cluster.
"""

from __future__ import annotations

import copy
import math
from typing import Any

from taskengine_contracts.events import Resources
from taskengine_core.attempts import LOST
from taskengine_core.steps import Outcome

Obj = dict[str, Any]
"""A Kubernetes object (or part of one) as JSON."""

TASK_LABEL = "taskengine.io/task-id"
ATTEMPT_LABEL = "taskengine.io/attempt"
SELECTOR = TASK_LABEL
"""What the executor lists and watches: every Job and pod with a task id, whatever its value."""
CONTAINER = "worker"
TASK_CONTAINER = "task"
"""The container of a DOCKER task's Job (kube_containers.py): the task's own image."""
COMMAND = ["taskengine", "worker"]
"""The container's arguments: the image's entry point (tini) runs `taskengine worker`."""
DEADLINE_GRACE = 60
"""Seconds past the job's timeout before Kubernetes ends the Job (`DeadlineExceeded`): time for
the pod to be scheduled and its image pulled, and for the worker to report its own timeout."""
GPU = "nvidia.com/gpu"
FINISHED = ("Complete", "SuccessCriteriaMet", "Failed", "FailureTarget")
"""Job conditions that end it (the `...Target` ones come first, while its pods terminate)."""
CLIENT_LABEL = "taskengine.io/client"
"""The label a `storage_credentials` Secret must carry, naming the client whose tasks use it."""
TASK_UID = 10001
"""The uid (and gid) every task pod runs as: the engine image's own user. DOCKER tasks' images
run as it too, never as root (the task namespace enforces Pod Security `restricted`)."""
POD_SECURITY: Obj = {
    "runAsNonRoot": True,
    "runAsUser": TASK_UID,
    "runAsGroup": TASK_UID,
    "seccompProfile": {"type": "RuntimeDefault"},
}
CONTAINER_SECURITY: Obj = {
    "allowPrivilegeEscalation": False,
    "privileged": False,
    "capabilities": {"drop": ["ALL"]},
}
"""What a task pod may do: Pod Security `restricted`, whatever image a client names."""


def job_name(job_id: int, attempt: int) -> str:
    """The Job of one attempt: derived, so creating it twice is AlreadyExists, never two Jobs."""
    return f"te-{job_id}-{attempt}"


def attempt_selector(job_id: int, attempt: int) -> str:
    """The label selector of one attempt's Job and pod."""
    return f"{TASK_LABEL}={job_id},{ATTEMPT_LABEL}={attempt}"


def attempt_of(obj: Obj) -> tuple[int, int] | None:
    """(job number, attempt) a Job or pod carries in its labels; None: not one of ours."""
    labels = (obj.get("metadata") or {}).get("labels") or {}
    try:
        return int(labels[TASK_LABEL]), int(labels[ATTEMPT_LABEL])
    except (KeyError, TypeError, ValueError):
        return None


def resources(requirements: Resources, memory: str | None = None) -> Obj:
    """Requests and limits (equal) from the run's resources: `cpu`, `memory` (`memory` given:
    the attempt's own, raised after an OOM kill) and `gpu` (that many GPUs)."""
    amounts: dict[str, str] = {}
    if requirements.cpu is not None:
        amounts["cpu"] = requirements.cpu
    memory = memory if memory is not None else requirements.memory
    if memory is not None:
        amounts["memory"] = memory
    if requirements.gpu > 0:
        amounts[GPU] = str(requirements.gpu)
    return {"requests": amounts, "limits": dict(amounts)} if amounts else {}


def secret_env(secret: str | None, keys: list[str]) -> list[Obj]:
    """The worker's variables from the `storage_credentials` Secret, by reference: the Job names
    the Secret and its keys, never a value."""
    if not secret:
        return []
    return [
        {"name": key, "valueFrom": {"secretKeyRef": {"name": secret, "key": key, "optional": True}}}
        for key in keys
    ]


def secret_refusal(name: str, labels: dict[str, str] | None, client: str) -> str | None:
    """Why a work task of `client` may not use the `storage_credentials` Secret `name` with
    these labels (None: it may): only Secrets labelled as the client's own."""
    if (labels or {}).get(CLIENT_LABEL) == client:
        return None
    # Whose it is instead is not said: that would name another client.
    return (
        f"storage_credentials: the Secret {name!r} is not labelled {CLIENT_LABEL}={client}:"
        " a task may only use its own client's Secrets"
    )


def manifest(
    *,
    name: str,
    job_id: int,
    attempt: int,
    image: str,
    env: dict[str, str],
    requirements: Resources,
    memory: str | None,
    secret: str | None,
    secret_keys: list[str],
    timeout: float,
    ttl: int,
) -> Obj:
    """The batch/v1 Job running one attempt's worker: never restarted or retried by Kubernetes
    (the engine retries, as a new attempt and Job), ended by Kubernetes DEADLINE_GRACE past the
    job's timeout, deleted `ttl` seconds after it finished."""
    container: Obj = {
        "name": CONTAINER,
        "image": image,
        "args": COMMAND,
        "env": [{"name": k, "value": v} for k, v in env.items()] + secret_env(secret, secret_keys),
    }
    if amounts := resources(requirements, memory):
        container["resources"] = amounts
    return batch_job(name, job_id, attempt, "taskengine-worker", container, timeout, ttl)


def batch_job(
    name: str,
    job_id: int,
    attempt: int,
    app: str,
    container: Obj,
    timeout: float,
    ttl: int,
    volumes: list[Obj] | None = None,
) -> Obj:
    """The batch/v1 Job of one attempt running `container` once, labelled as the attempt's."""
    labels = {
        TASK_LABEL: str(job_id),
        ATTEMPT_LABEL: str(attempt),
        "app.kubernetes.io/name": app,
        "app.kubernetes.io/managed-by": "taskengine",
    }
    pod: Obj = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,  # neither a worker nor a task uses the API
        "enableServiceLinks": False,
        "hostNetwork": False,
        "hostPID": False,
        "hostIPC": False,
        "securityContext": copy.deepcopy(POD_SECURITY),
        "containers": [{**container, "securityContext": copy.deepcopy(CONTAINER_SECURITY)}],
    }
    if volumes:
        pod["volumes"] = volumes
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": math.ceil(timeout) + DEADLINE_GRACE,
            "ttlSecondsAfterFinished": ttl,
            "template": {"metadata": {"labels": labels}, "spec": pod},
        },
    }


# --- how it ended ---------------------------------------------------------------------------


def finished(job: Obj | None) -> Obj | None:
    """The condition that ended the Job (from its `status`), or None while it runs."""
    for condition in (job or {}).get("conditions") or []:
        if condition.get("type") in FINISHED and condition.get("status") == "True":
            return condition
    return None


def container_state(pod: Obj | None) -> Obj:
    """The `state` of the pod's container (the worker, or a DOCKER task's), from its `status`."""
    for status in (pod or {}).get("containerStatuses") or []:
        if status.get("name") in (CONTAINER, TASK_CONTAINER):
            return status.get("state") or {}
    return {}


def terminated(pod: Obj | None) -> Obj:
    """The container's `state.terminated` (from a pod's `status`), or {}."""
    return container_state(pod).get("terminated") or {}


def settled(pod: Obj | None) -> bool:
    """Whether a pod's status says how its worker ended (else it is worth reading again)."""
    return bool(terminated(pod)) or (pod or {}).get("reason") == "Evicted"


def verdict(job: Obj | None, pod: Obj | None, *, gone: bool = False) -> Outcome | None:
    """How an attempt ended, from its Job's and pod's `status` (`gone`: the Job vanished); None
    while it runs. Structured reasons only: the container's `OOMKilled`, the pod's `Evicted`,
    the Job's `DeadlineExceeded`, else the worker's exit code. A worker that ended without its
    final report (which would have moved the job first) lost its attempt."""
    ended = terminated(pod)
    code = ended.get("exitCode")
    if ended.get("reason") == "OOMKilled":
        why = "OOMKilled: the worker's container ran out of memory"
        return Outcome("failed", why, code, transient="OOMKilled")
    if (evicted := pod or {}).get("reason") == "Evicted":
        why = f"Evicted: {evicted.get('message') or 'the pod was evicted from its node'}"
        return Outcome("failed", why, code, transient="Evicted")
    if gone:
        return Outcome("failed", "lost: its Job vanished", code, transient=LOST)
    condition = finished(job)
    if condition is None:
        return None
    if condition.get("reason") == "DeadlineExceeded":
        why = f"DeadlineExceeded: {condition.get('message') or 'the Job ran past its deadline'}"
        return Outcome("failed", why, transient="DeadlineExceeded")
    if code is None:
        done = condition["type"] in ("Complete", "SuccessCriteriaMet")
        what = "completed" if done else f"failed ({condition.get('reason') or 'no reason given'})"
        return Outcome("failed", f"lost: its Job {what} without a final report", transient=LOST)
    why = f"lost: the worker exited (code {code}) without a final report"
    return Outcome("failed", why, code, transient=LOST)
