"""A Drove task as Drove shows it: a task instance (`instance_view`), its allocated resources
in Drove's shape, its times in epoch milliseconds."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import uuid5

from taskengine_core.clients import mask_values
from taskengine_core.dialects.drove.status import task_status
from taskengine_core.ids import NAMESPACE
from taskengine_core.jobs import Job


def millis(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def instance_view(job: Job, hostname: str) -> dict[str, Any]:
    """A task instance in the seed's shape (`taskResult` once it ran to an end); a task that
    ran on no cluster reports `hostname` as its host."""
    attributes: dict[str, Any] = job.attributes
    status = task_status(job)
    host = (job.cluster or hostname) if job.started_at else ""
    executor = str(uuid5(NAMESPACE, f"executor:{host}:{job.executor}")) if host else ""
    executable = dict(attributes["executable"])
    if executable.get("type") == "WORKFLOW":  # Drove tools print `url (type)`
        executable = {"type": "WORKFLOW", "url": f"workflow://{executable['name']}", **executable}
        executable["parameters"] = mask_values(executable.get("parameters", {}))
    view: dict[str, Any] = {
        "sourceAppName": attributes["sourceAppName"],
        "taskId": attributes["taskId"],
        "instanceId": attributes["instanceId"],
        "executorId": executor,
        "hostname": host,
        "executable": executable,
        "resources": allocated(attributes["resources"]),
        "volumes": attributes.get("volumes", []),
        "env": mask_values(attributes.get("env", {})),
        "state": str(status.state),
        "metadata": {str(k): str(v) for k, v in job.metadata.items()},
    }
    if status.result is not None:
        view["taskResult"] = status.result
    view["errorMessage"] = status.error_message
    view["created"], view["updated"] = millis(job.created_at), millis(job.updated_at)
    return view


def allocated(resources: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Resources as Drove reports an allocation: CPU cores and memory by NUMA node (one node
    here; cores are numbered, not pinned)."""
    views = []
    for resource in resources:
        if resource["type"] == "CPU":
            views.append({"type": "CPU", "cores": {"0": list(range(resource["count"]))}})
        else:
            views.append({"type": "MEMORY", "memoryInMB": {"0": resource["sizeInMB"]}})
    return views
