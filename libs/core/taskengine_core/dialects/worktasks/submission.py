"""A work task's submission: `POST /api/worktasks` checked into the job it submits.

`submission` checks a request (every field of the seed, plus `max_retries`) and names the first
field that does not validate; `Submission.submitted` makes its job through the one factory
(`job_submitted`): run kind `worker` with the requested resources and the storage Secret, a
retry policy for transient failures only. `check_resources` holds a request to the operator's
limits.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from taskengine_contracts.events import JobSubmitted, Resources, RetryPolicy, RunSpec

from taskengine_core import quotas
from taskengine_core.dialects.worktasks import DIALECT
from taskengine_core.errors import DomainError
from taskengine_core.quotas import ResourceLimits, cpu_cores, gpu_count
from taskengine_core.submission import job_submitted

TYPES = ("pipeline_execution", "ml_training", "ml_inference", "digital_twin_update")
DEFAULT_MAX_RETRIES = 3
MAX_MAX_RETRIES = 100
DEFAULT_PRIORITY = 1
LOWEST_PRIORITY = 1
HIGHEST_PRIORITY = 10
MAX_TIMEOUT = 7 * 24 * 3600
FIELDS = (
    "type",
    "priority",
    "project_id",
    "task_spec",
    "resource_requirements",
    "data_access",
    "max_retries",
)
REQUIRED = ("type", "project_id", "task_spec", "resource_requirements", "data_access")


class InvalidWorkTask(DomainError):
    """A request this dialect refuses (400)."""


def engine_priority(priority: object) -> int:
    """This dialect's priority (an integer from `LOWEST_PRIORITY` 1 to `HIGHEST_PRIORITY` 10,
    higher = more urgent, default 1) on the engine's scale (1 = most urgent … 10): `11 − p`,
    so each of the ten keeps its own rank and its order. Anything else is refused rather than
    clamped onto a neighbour's rank."""
    if isinstance(priority, bool) or not isinstance(priority, (int, float)):
        raise InvalidWorkTask("priority must be a number (higher = more urgent)")
    if not math.isfinite(priority) or priority != int(priority):
        raise InvalidWorkTask("priority must be a whole number")
    if not LOWEST_PRIORITY <= priority <= HIGHEST_PRIORITY:
        raise InvalidWorkTask(
            f"priority must be from {LOWEST_PRIORITY} to {HIGHEST_PRIORITY} (higher = more urgent)"
        )
    return quotas.LEAST_URGENT + LOWEST_PRIORITY - int(priority)


def dialect_priority(engine: int) -> int:
    """The inverse of `engine_priority`: the work-task priority of an engine priority."""
    return quotas.LEAST_URGENT + LOWEST_PRIORITY - engine


# --- memory quantities ------------------------------------------------------------------------


def memory_bytes(quantity: str) -> int:
    """A memory quantity of a request (`512Mi`, `2Gi`) in bytes; `InvalidWorkTask` if it is
    not one."""
    try:
        return quotas.memory_bytes(quantity)
    except ValueError as error:
        raise InvalidWorkTask(str(error)) from None


# --- submissions ------------------------------------------------------------------------------

_SECRET_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


@dataclass(frozen=True)
class Submission:
    """A validated `POST /api/worktasks`: what the work task's `JobSubmitted` carries."""

    workflow: str
    parameters: dict[str, Any]
    priority: int
    """On the engine's scale (see `engine_priority`)."""
    max_retries: int
    timeout: float | None
    attributes: dict[str, Any]

    def submitted(self, job_id: int, client: str, at: datetime) -> JobSubmitted:
        """The work task's job: a remote worker runs its workflow with its resources and
        storage credentials; it retries transient failures only, after a jittered backoff."""
        access = self.attributes["data_access"]
        return job_submitted(
            job_id,
            client,
            at,
            workflow=self.workflow,
            parameters=self.parameters,
            run=RunSpec(
                kind="worker",
                resources=requested(self.attributes["resource_requirements"]),
                secret=access.get("storage_credentials") or None,
                timeout=self.timeout,
                retry=RetryPolicy(
                    max_retries=self.max_retries,
                    backoff="exponential_jitter",
                    transient_only=True,
                ),
            ),
            dialect=DIALECT,
            priority=self.priority,
            attributes=self.attributes,
        )


def requested(resources: dict[str, Any]) -> Resources:
    """`resource_requirements` (as `submission` checked them) as the worker's Job asks for
    them: `gpu` true is one GPU."""
    cpu, memory, gpu = resources.get("cpu"), resources.get("memory"), resources.get("gpu")
    return Resources(
        cpu=None if cpu is None or isinstance(cpu, bool) else str(cpu),
        memory=None if memory is None else str(memory),
        gpu=1 if gpu is True else gpu if isinstance(gpu, int) and gpu > 0 else 0,
    )


def submission(data: dict[str, Any]) -> Submission:
    """Checks a submission (every field of the seed, plus `max_retries`); `InvalidWorkTask`
    names the first field that does not validate. The workflow run is `task_spec.pipeline_id`
    if given, else the type's name; `task_spec.parameters` are its parameters."""
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise InvalidWorkTask(f"unknown field {unknown[0]!r}")
    for field in REQUIRED:
        if data.get(field) is None:
            raise InvalidWorkTask(f"{field} is required")
    if data["type"] not in TYPES:
        raise InvalidWorkTask(f"type must be one of {', '.join(TYPES)}")
    project = data["project_id"]
    if not isinstance(project, str) or not project.strip() or len(project) > 200:
        raise InvalidWorkTask("project_id must be a non-empty string of at most 200 characters")
    spec, resources, access = (
        _object(data, name) for name in ("task_spec", "resource_requirements", "data_access")
    )
    pipeline = spec.get("pipeline_id")
    if pipeline is not None and (not isinstance(pipeline, str) or not pipeline.strip()):
        raise InvalidWorkTask("task_spec.pipeline_id must be a workflow name")
    parameters = spec.get("parameters", {})
    if not isinstance(parameters, dict):
        raise InvalidWorkTask("task_spec.parameters must be an object")
    if resources.get("memory") is not None:
        memory_bytes(resources["memory"])
    for name, parse in (("cpu", cpu_cores), ("gpu", gpu_count)):
        if resources.get(name) is not None:
            try:
                parse(resources[name])
            except ValueError as error:
                raise InvalidWorkTask(f"resource_requirements.{error}") from None
    credentials = access.get("storage_credentials")
    if credentials is not None and not (
        isinstance(credentials, str)
        and len(credentials) <= 253
        and _SECRET_NAME.fullmatch(credentials)
    ):
        raise InvalidWorkTask(
            "data_access.storage_credentials must name a Kubernetes Secret (lower-case letters,"
            " digits, '-' and '.'), never hold credentials"
        )
    priority = data.get("priority", DEFAULT_PRIORITY)
    engine = engine_priority(priority)
    max_retries = data.get("max_retries", DEFAULT_MAX_RETRIES)
    if (
        isinstance(max_retries, bool)
        or not isinstance(max_retries, int)
        or not 0 <= max_retries <= MAX_MAX_RETRIES
    ):
        raise InvalidWorkTask(f"max_retries must be an integer from 0 to {MAX_MAX_RETRIES}")
    return Submission(
        workflow=pipeline if pipeline is not None else data["type"],
        parameters=parameters,
        priority=engine,
        max_retries=max_retries,
        timeout=_timeout(spec.get("timeout")),
        attributes={
            "type": data["type"],
            "project_id": project,
            "task_spec": spec,
            "resource_requirements": resources,
            "data_access": access,
            "priority": priority,
        },
    )


def check_resources(resources: dict[str, Any], limits: ResourceLimits) -> None:
    """Refuses `resource_requirements` (as `submission` checked them) above the limits."""
    problem = limits.problem(
        cpu=cpu_cores(resources["cpu"]) if resources.get("cpu") is not None else 0,
        memory_bytes=memory_bytes(resources["memory"]) if resources.get("memory") else 0,
        gpu=gpu_count(resources["gpu"]) if resources.get("gpu") is not None else 0,
    )
    if problem:
        raise InvalidWorkTask(f"resource_requirements.{problem}")


def _object(data: dict[str, Any], field: str) -> dict[str, Any]:
    value = data[field]
    if not isinstance(value, dict):
        raise InvalidWorkTask(f"{field} must be an object")
    return value


def _timeout(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidWorkTask("task_spec.timeout must be a number of seconds")
    if not 0 < value <= MAX_TIMEOUT:
        raise InvalidWorkTask(f"task_spec.timeout must be from 0 to {MAX_TIMEOUT} seconds")
    return float(value)
