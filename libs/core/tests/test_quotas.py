"""Quotas per client: resource amounts parsed and held to the limits in each dialect's terms,
and the priorities a client may use."""

from __future__ import annotations

from typing import Any

import pytest
from taskengine_core.config import EngineSettings
from taskengine_core.dialects.drove import submission as drove
from taskengine_core.dialects.worktasks import submission as worktasks
from taskengine_core.quotas import ResourceLimits, cpu_cores, gpu_count, priority_allowed

LIMITS = ResourceLimits(cpu=8, memory_bytes=4 * 2**30, gpu=2)


@pytest.mark.parametrize(
    ("given", "cores"), [(2, 2.0), (0.5, 0.5), ("2", 2.0), ("0.25", 0.25), ("500m", 0.5)]
)
def test_cpu_is_a_number_of_cores_or_a_kubernetes_quantity(given, cores):
    assert cpu_cores(given) == cores


@pytest.mark.parametrize("given", [True, "lots", "-1", 0, -2, "0m", float("inf"), [1], "1e3"])
def test_a_cpu_that_is_not_a_positive_amount_is_refused(given):
    with pytest.raises(ValueError, match="cpu"):
        cpu_cores(given)


@pytest.mark.parametrize(("given", "count"), [(True, 1), (False, 0), (0, 0), (3, 3)])
def test_gpu_is_a_flag_or_a_count(given, count):
    assert gpu_count(given) == count


@pytest.mark.parametrize("given", [-1, 1.5, "2", None])
def test_a_gpu_that_is_not_a_count_is_refused(given):
    with pytest.raises(ValueError, match="gpu"):
        gpu_count(given)


def test_the_limits_name_what_is_too_much():
    assert LIMITS.problem(cpu=8, memory_bytes=4 * 2**30, gpu=2) is None
    assert "cpu 1024 is more than the 8 cores" in (LIMITS.problem(cpu=1024) or "")
    assert "more than the 4096Mi" in (LIMITS.problem(memory_bytes=5 * 2**30) or "")
    assert "gpu 3 is more than the 2 GPUs" in (LIMITS.problem(gpu=3) or "")


def test_the_defaults_come_from_the_settings():
    limits = ResourceLimits.of(EngineSettings(max_task_cpu=16, max_memory="2Gi", max_task_gpu=1))
    assert limits == ResourceLimits(cpu=16, memory_bytes=2 * 2**30, gpu=1)
    defaults = EngineSettings()
    assert (defaults.max_task_cpu, defaults.max_memory, defaults.max_task_gpu) == (64, "16Gi", 8)
    assert (defaults.top_priority, defaults.max_sockets_per_client) == (3, 10)
    assert defaults.max_active_tasks_per_client == 1000


def _worktask(**resources: Any) -> dict[str, Any]:
    return {
        "type": "ml_inference",
        "project_id": "p",
        "task_spec": {"pipeline_id": "echo"},
        "resource_requirements": resources,
        "data_access": {},
    }


@pytest.mark.parametrize(
    ("resources", "problem"),
    [
        ({"cpu": 1024}, "resource_requirements.cpu 1024 is more than the 8 cores"),
        ({"cpu": "9000m"}, "resource_requirements.cpu 9 is more than the 8 cores"),
        ({"memory": "5Gi"}, "resource_requirements.memory of 5120Mi is more than the 4096Mi"),
        ({"gpu": 3}, "resource_requirements.gpu 3 is more than the 2 GPUs"),
    ],
)
def test_a_work_task_asking_too_much_is_refused(resources, problem):
    task = worktasks.submission(_worktask(**resources))
    with pytest.raises(worktasks.InvalidWorkTask, match=problem):
        worktasks.check_resources(task.attributes["resource_requirements"], LIMITS)


def test_a_work_task_within_the_limits_passes():
    task = worktasks.submission(_worktask(cpu="8", memory="4Gi", gpu=True))
    worktasks.check_resources(task.attributes["resource_requirements"], LIMITS)


@pytest.mark.parametrize("resources", [{"cpu": "lots"}, {"gpu": "many"}, {"cpu": False}])
def test_a_work_task_resource_that_is_not_an_amount_is_refused(resources):
    with pytest.raises(worktasks.InvalidWorkTask, match="resource_requirements"):
        worktasks.submission(_worktask(**resources))


def _drove(cores: int, megabytes: int) -> dict[str, Any]:
    return {
        "type": "CREATE",
        "spec": {
            "sourceAppName": "app",
            "taskId": "t1",
            "executable": {"type": "WORKFLOW", "name": "sleep", "parameters": {"seconds": 1}},
            "resources": [
                {"type": "CPU", "count": cores},
                {"type": "MEMORY", "sizeInMB": megabytes},
            ],
        },
    }


def test_a_drove_task_asking_too_much_is_refused():
    fits = drove.create_operation(_drove(8, 4096))
    drove.check_resources(fits.attributes["resources"], LIMITS)
    for cores, megabytes, problem in [(1024, 1, "cpu 1024"), (1, 4097, "memory of 4097Mi")]:
        over = drove.create_operation(_drove(cores, megabytes))
        with pytest.raises(drove.InvalidTask, match=f"spec.resources: {problem} is more than"):
            drove.check_resources(over.attributes["resources"], LIMITS)


@pytest.mark.parametrize(
    ("priority", "admin", "allowed"),
    [(3, False, True), (10, False, True), (2, False, False), (1, False, False), (1, True, True)],
)
def test_a_client_may_use_the_top_priority_only_when_admin(priority, admin, allowed):
    assert priority_allowed(priority, 3, admin) is allowed
