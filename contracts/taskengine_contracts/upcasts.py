"""Stored events of older shapes, brought to the current one as they are decoded.

A `job.submitted` stored before the run spec had no `run`: what to execute was read from its
`workflow`, `timeout`, `retry`, `dialect` and `attributes` when the job started. `upcast`
derives the same `run` from them, so replaying an old store gives the same jobs (a Drove
task's limits, `opSpec.timeout` and `dockerPullTimeout`, parsed as Drove's dialect does).
"""

from __future__ import annotations

from typing import Any

from taskengine_contracts.durations import duration_seconds

WORK_TASKS = "worktasks"
DROVE = "drove"
DOCKER = "docker"
"""A Drove task with this workflow ran its image as a container."""
DEFAULT_OP_TIMEOUT = "300 seconds"
CONFIGS_UNSUPPORTED = (
    "spec.configs (files put in the container) are not supported by the Kubernetes"
    " executor: bake them into the image or pass them in env"
)
"""Why a DOCKER task with configs never starts (the same words as Drove's dialect)."""


LOST_REASON = "lost"
UNPROVISIONED_REASON = "provisioning failed: "
"""How the reason of a `job.failed` stored without its `failure` kind began for those kinds."""


def upcast(raw: Any) -> dict[str, Any] | None:
    """The current shape of an old event (a JSON object); None when it is not one."""
    if isinstance(raw, dict) and raw.get("type") == "job.failed" and "failure" not in raw:
        return _failed(raw)
    if not isinstance(raw, dict) or raw.get("type") != "job.submitted" or "run" in raw:
        return None
    event = dict(raw)
    timeout, retry = event.pop("timeout", None), event.pop("retry", None)
    attributes = event.get("attributes") or {}
    run: dict[str, Any] = {"timeout": timeout, "retry": retry}
    dialect = event.get("dialect", "taskengine")
    if dialect == WORK_TASKS:
        run.update(kind="worker", resources=_worker_resources(attributes))
        access = attributes.get("data_access")
        secret = access.get("storage_credentials") if isinstance(access, dict) else None
        if isinstance(secret, str) and secret:
            run["secret"] = secret
    if dialect == DROVE:
        op_spec = attributes.get("opSpec") or {}
        run["start_timeout"] = _limit("opSpec.timeout", op_spec.get("timeout", DEFAULT_OP_TIMEOUT))
        env = attributes.get("env")
        run["env"] = {
            name: value
            for name, value in (env.items() if isinstance(env, dict) else ())
            if isinstance(name, str) and isinstance(value, str)
        }
        if event.get("workflow") == DOCKER:
            parameters = event.get("parameters") or {}
            run.update(
                kind="container",
                image=str(parameters.get("image")),
                args=list(parameters.get("args") or []),
                resources=_drove_resources(attributes.get("resources") or []),
                volumes=[
                    {
                        "host_path": volume["pathOnHost"],
                        "container_path": volume["pathInContainer"],
                        "read_only": volume.get("mode", "READ_ONLY") == "READ_ONLY",
                    }
                    for volume in attributes.get("volumes") or []
                ],
            )
            executable = attributes.get("executable") or {}
            if "dockerPullTimeout" in executable:
                run["pull_timeout"] = _limit("dockerPullTimeout", executable["dockerPullTimeout"])
            if attributes.get("configs"):
                run["unstartable"] = CONFIGS_UNSUPPORTED
    event["run"] = run
    return event


def _worker_resources(attributes: dict[str, Any]) -> dict[str, Any]:
    """A work task's `resource_requirements` as the worker's Job asked for them."""
    given = attributes.get("resource_requirements")
    given = given if isinstance(given, dict) else {}
    resources: dict[str, Any] = {}
    cpu, memory, gpu = given.get("cpu"), given.get("memory"), given.get("gpu")
    if cpu is not None and not isinstance(cpu, bool):
        resources["cpu"] = str(cpu)
    if memory is not None:
        resources["memory"] = str(memory)
    if gpu is True:
        resources["gpu"] = 1
    elif isinstance(gpu, int) and not isinstance(gpu, bool) and gpu > 0:
        resources["gpu"] = gpu
    return resources


def _drove_resources(given: list[dict[str, Any]]) -> dict[str, Any]:
    """A Drove task's `[{"type": "CPU", "count"}, {"type": "MEMORY", "sizeInMB"}]`."""
    resources: dict[str, Any] = {}
    for item in given:
        if item.get("type") == "CPU":
            resources["cpu"] = str(item["count"])
        elif item.get("type") == "MEMORY":
            resources["memory"] = f"{item['sizeInMB']}Mi"
    return resources


def _limit(name: str, given: str) -> dict[str, Any]:
    """A Drove (Dropwizard) duration as the run's limit: `5m`, `30s`, `100 seconds`."""
    seconds = duration_seconds(given)
    assert seconds is not None, f"{name} {given!r} was checked when the task was created"
    return {"seconds": seconds, "name": name, "given": given}


def _failed(raw: dict[str, Any]) -> dict[str, Any]:
    """A `job.failed` stored before it carried its kind: the kind its reason's words gave
    (a vanished runner, an attempt never provisioned, one that never started), else `other`."""
    reason = str(raw.get("reason", ""))
    if reason.startswith(LOST_REASON):
        failure = "lost"
    elif reason.startswith(UNPROVISIONED_REASON):
        failure = "unstartable"
    else:
        failure = "other"
    return {**raw, "failure": failure}
