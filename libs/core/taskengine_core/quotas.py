"""Per-client quotas: how much one task may ask for, and which priorities a client may use.

The limits are settings (`TASKENGINE_MAX_TASK_CPU`, `TASKENGINE_MAX_MEMORY`,
`TASKENGINE_MAX_TASK_GPU`, `TASKENGINE_TOP_PRIORITY`); each dialect states a refusal in its own
terms and error shape. Priorities here are on the engine's scale: 1 is the most urgent, 10 the
least.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from taskengine_core.config import EngineSettings

LEAST_URGENT = 10
_CPU = re.compile(r"([0-9]+(?:\.[0-9]+)?)(m?)")


@dataclass(frozen=True)
class ResourceLimits:
    """The most one task may request."""

    cpu: float
    """Cores."""
    memory_bytes: int
    gpu: int

    @classmethod
    def of(cls, config: EngineSettings) -> ResourceLimits:
        return cls(config.max_task_cpu, memory_bytes(config.max_memory), config.max_task_gpu)

    def problem(self, cpu: float = 0, memory_bytes: int = 0, gpu: int = 0) -> str | None:
        """Why a request of `cpu` cores, `memory_bytes` and `gpu` GPUs is too large, or None."""
        if cpu > self.cpu:
            return f"cpu {cpu:g} is more than the {self.cpu:g} cores a task may request"
        if memory_bytes > self.memory_bytes:
            return (
                f"memory of {memory_bytes / 2**20:.0f}Mi is more than the"
                f" {math.floor(self.memory_bytes / 2**20)}Mi a task may request"
            )
        if gpu > self.gpu:
            return f"gpu {gpu} is more than the {self.gpu} GPUs a task may request"
        return None


_MEMORY_UNITS = {
    "": 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}
_QUANTITY = re.compile(r"([0-9]+(?:\.[0-9]+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?")


def memory_bytes(quantity: str) -> int:
    """A Kubernetes memory quantity (`512Mi`, `2Gi`, `1G`, `1048576`) in bytes."""
    match = _QUANTITY.fullmatch(str(quantity).strip())
    if not match:
        raise ValueError(f"memory {quantity!r} is not a quantity like 512Mi or 2Gi")
    return int(float(match.group(1)) * _MEMORY_UNITS[match.group(2) or ""])


def cpu_cores(value: object) -> float:
    """A CPU amount (a number of cores, or a Kubernetes quantity such as "2", "0.5", "500m")
    in cores; ValueError if it is not one or is not positive."""
    if isinstance(value, bool):
        raise ValueError('cpu must be a number of cores such as 2, 0.5 or "500m"')
    if isinstance(value, (int, float)):
        cores = float(value)
    else:
        match = _CPU.fullmatch(str(value).strip()) if isinstance(value, str) else None
        if not match:
            raise ValueError('cpu must be a number of cores such as 2, 0.5 or "500m"')
        cores = float(match.group(1)) / (1000 if match.group(2) else 1)
    if not math.isfinite(cores) or cores <= 0:
        raise ValueError("cpu must be a positive number of cores")
    return cores


def gpu_count(value: object) -> int:
    """GPUs asked for: `true` is one, `false` none, else a whole number from 0."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int) and value >= 0:
        return value
    raise ValueError("gpu must be true, false or a whole number of GPUs")


def priority_allowed(priority: int, top_priority: int, admin: bool) -> bool:
    """Whether a client may use engine `priority`: admins any, others `top_priority` or less
    urgent (a larger number)."""
    return admin or priority >= top_priority
