"""Whether an admitted job's attempt may start, from its run spec alone: within the run's
start timeout, on an executor that runs its kind, mounting only host paths the operator
allows for its client. A refusal (`NotStartable`) ends the job failed before it started,
its reason beginning as `PROVISIONING` says when the attempt was never provisioned."""

from __future__ import annotations

from datetime import datetime, timedelta

from taskengine_contracts.events import RunSpec, Volume

from taskengine_core.config import KUBERNETES
from taskengine_core.errors import DomainError

PROVISIONING = "provisioning failed: "
"""How the reason of a started attempt that never ran begins (e.g. its image was not pulled)."""


class NotStartable(DomainError):
    """An attempt that cannot (or may no longer) start; its job ends failed."""


def check_startable(
    run: RunSpec,
    client: str,
    submitted_at: datetime,
    executor: str,
    now: datetime,
    host_paths: tuple[str, ...] = (),
) -> None:
    """Refuses (`NotStartable`) an attempt past the run's start timeout, a container on an
    executor other than Kubernetes, a run that says why it cannot start, or volumes outside
    `host_paths`; other runs pass."""
    limit = run.start_timeout
    if limit and now > submitted_at + timedelta(seconds=limit.seconds):
        raise NotStartable(
            f"provisioning timed out: the task did not start within its {limit.name}"
            f" ({limit.given})"
        )
    if run.kind == "container" and executor != KUBERNETES:
        raise NotStartable(
            "DOCKER executables need the Kubernetes executor: set TASKENGINE_EXECUTOR=kubernetes"
            f" (this task reached the {executor} executor)"
        )
    if run.unstartable:
        raise NotStartable(run.unstartable)
    check_volumes(run.volumes, host_paths, client, NotStartable)


def check_volumes(
    volumes: list[Volume],
    allowed: tuple[str, ...],
    client: str,
    error: type[DomainError],
    field: str = "spec.volumes",
) -> None:
    """Refuses (`error`) a volume that is not read-only, or whose host path is not within
    the client's own subdirectory (`<prefix>/<client>`) of one of the operator's `allowed`
    prefixes (TASKENGINE_KUBE_HOST_PATHS; none: every volume is refused). No task writes to
    a host path, so none can plant a symlink that another task's mount would follow."""
    for n, volume in enumerate(volumes):
        if not volume.read_only:
            raise error(f"{field}[{n}].mode must be READ_ONLY: host paths are mounted read-only")
        if not host_path_allowed(volume.host_path, allowed, client):
            shown = ", ".join(f"{p.rstrip('/')}/{client}" for p in allowed)
            shown = shown or "none: set TASKENGINE_KUBE_HOST_PATHS to allow some"
            raise error(
                f"{field}[{n}].pathOnHost {volume.host_path[:200]!r} is not a host path"
                f" this engine mounts for this client (allowed: {shown})"
            )


def host_path_allowed(path: str, allowed: tuple[str, ...], client: str) -> bool:
    """Whether `path` is `<prefix>/<client>` or below it, for an allowed prefix: written
    plainly (absolute, no `.` or `..` or empty parts to normalize away)."""
    parts = path.rstrip("/").split("/")
    if not path.startswith("/") or any(p in ("", ".", "..") for p in parts[1:]):
        return False
    if not client or "/" in client or client in (".", ".."):
        return False
    return any(
        path.rstrip("/") + "/" == (own := f"{p.rstrip('/')}/{client}/") or path.startswith(own)
        for p in allowed
    )
