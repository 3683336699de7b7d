"""A container run (a Drove DOCKER task) as a plain Kubernetes Job: its image, args and env, its
CPU and memory, its volumes (host paths the operator allows); no worker, so the Job's and
pod's status alone say how it ended (`verdict`), and its output is the pod's log.

Pure functions on the API's JSON shapes, like kube_jobs.py, and the two records the
dispatcher makes for such a task: that it runs, and its output.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from taskengine_contracts.events import ExecutionLogged, JobExecuting, Limit, LogLine, RunSpec
from taskengine_core.attempts import LOST
from taskengine_core.ids import execution_stream, job_stream
from taskengine_core.jobs import JobState, advance
from taskengine_core.startable import PROVISIONING
from taskengine_core.steps import MAX_LINE, Outcome
from taskengine_store.store import EventStore

from taskengine_dispatcher.executors import kube_jobs
from taskengine_dispatcher.executors.kube_jobs import Obj

APP = "taskengine-task"
DEFAULT_PULL_TIMEOUT = Limit(seconds=300.0, name="pull timeout", given="300 seconds")
"""How long a pod may fail to pull its image when the run gives no `pull_timeout`."""
PULL_FAILURES = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName"})
"""Container waiting reasons that say its image is not being pulled."""
OUTPUT_LINES = 10_000
OUTPUT_BYTES = 4 * 1024 * 1024
"""How much of the end of a task's log is kept as its output."""
LINES_PER_EVENT, BYTES_PER_EVENT = 1000, 128 * 1024
"""An ExecutionLogged's share: the projection keeps 1000 lines of one; NATS takes 1 MB (escaped)."""


@dataclass(frozen=True)
class ContainerRun:
    """What watching a container run's Job needs to know of it."""

    image: str
    pull_timeout: Limit
    timeout: float


def container_run(run: RunSpec, timeout: float) -> ContainerRun | None:
    """The container's run, or None when the job does not run a container."""
    if run.kind != "container":
        return None
    return ContainerRun(str(run.image), run.pull_timeout or DEFAULT_PULL_TIMEOUT, timeout)


def volumes(run: RunSpec) -> tuple[list[Obj], list[Obj]]:
    """(pod volumes, container mounts) of the task's host paths (checked at CREATE and again
    before it starts: READ_ONLY, in the client's subdirectory of TASKENGINE_KUBE_HOST_PATHS).
    Always mounted read-only, and only an existing directory (never created, as root, by the
    kubelet)."""
    found, mounts = [], []
    for n, volume in enumerate(run.volumes):
        name = f"volume-{n}"
        found.append({"name": name, "hostPath": {"path": volume.host_path, "type": "Directory"}})
        mounts.append({"name": name, "mountPath": volume.container_path, "readOnly": True})
    return found, mounts


def manifest(
    *, name: str, job_id: int, run: RunSpec, attempt: int, timeout: float, ttl: int
) -> Obj:
    """The batch/v1 Job running a container once: its image with its args and env (no
    command: the image's entry point), ended by Kubernetes DEADLINE_GRACE past the timeout."""
    container: Obj = {
        "name": kube_jobs.TASK_CONTAINER,
        "image": run.image,
        "args": list(run.args),
        "env": [{"name": k, "value": v} for k, v in run.env.items()],
    }
    if amounts := kube_jobs.resources(run.resources):
        container["resources"] = amounts
    pod_volumes, mounts = volumes(run)
    if mounts:
        container["volumeMounts"] = mounts
    return kube_jobs.batch_job(name, job_id, attempt, APP, container, timeout, ttl, pod_volumes)


# --- how it ended -------------------------------------------------------------------------------


def running(pod: Obj | None) -> bool:
    """Whether the task's container started (it runs, or ran)."""
    state = kube_jobs.container_state(pod)
    return "running" in state or "terminated" in state


def pull_failure(pod: Obj | None) -> str | None:
    """Why the container's image is not being pulled (`ErrImagePull: ...`), or None."""
    waiting = kube_jobs.container_state(pod).get("waiting") or {}
    reason = waiting.get("reason")
    if reason not in PULL_FAILURES:
        return None
    message = str(waiting.get("message") or "").strip()
    return f"{reason}: {message[:300]}" if message else str(reason)


def pull_failed(run: ContainerRun, problem: str) -> Outcome:
    limit = run.pull_timeout
    why = (
        f"{PROVISIONING}the image {run.image} was not pulled within its {limit.name}"
        f" ({limit.given}): {problem}"
    )
    return Outcome("failed", why, unstartable=True)


def verdict(
    job: Obj | None, pod: Obj | None, timeout: float, *, gone: bool = False
) -> Outcome | None:
    """How a DOCKER task's attempt ended, from its Job's and pod's `status` (`gone`: the Job
    vanished); None while it runs. The container's exit code is the task's result."""
    ended = kube_jobs.terminated(pod)
    code = ended.get("exitCode")
    if ended.get("reason") == "OOMKilled":
        return Outcome("failed", "OOMKilled: the container ran out of memory", code)
    if (evicted := pod or {}).get("reason") == "Evicted":
        why = f"Evicted: {evicted.get('message') or 'the pod was evicted from its node'}"
        return Outcome("failed", why, code)
    if gone:
        return Outcome("failed", "lost: its Job vanished", code, transient=LOST)
    condition = kube_jobs.finished(job)
    if condition is None:
        return None
    if condition.get("reason") == "DeadlineExceeded":
        why = f"DeadlineExceeded: {condition.get('message') or 'the Job ran past its deadline'}"
        return Outcome("timed_out", why, timeout=timeout)
    if condition["type"] in ("Complete", "SuccessCriteriaMet"):
        return Outcome("succeeded", exit_code=0)
    if code is None:
        reason = condition.get("reason") or "no reason given"
        return Outcome("failed", f"its Job failed ({reason}); the container's exit is unknown")
    return Outcome("failed", f"the container exited with code {code}", code)


# --- what the dispatcher records for it (blocking: off the event loop) -------------------------


def record_executing(store: EventStore, job_id: int, attempt: int, by: str) -> None:
    """Appends JobExecuting when the attempt still runs and nothing recorded it yet."""
    stream = job_stream(job_id)
    job = store.jobs([stream]).get(stream)
    if job and job.state == JobState.RUNNING and job.attempt == attempt and not job.executing:
        event = advance(job.ref, JobExecuting, attempt=attempt, by=by)
        store.commit_unmoved([event])  # moved meanwhile: it is over, or recorded


def output(job_id: int, attempt: int, text: str) -> list[ExecutionLogged]:
    """The pod's log as the attempt's output: its lines (step 1, the task's own) in events
    of a size the bus and the projection take."""
    at = datetime.now(UTC)
    batches: list[list[LogLine]] = []
    batch: list[LogLine] = []
    size = 0
    for raw in text.splitlines():
        line = LogLine(at, 1, "INFO", raw[:MAX_LINE])
        if batch and (len(batch) >= LINES_PER_EVENT or size + len(line.text) > BYTES_PER_EVENT):
            batches.append(batch)
            batch, size = [], 0
        batch.append(line)
        size += len(line.text) + 16
    if batch:
        batches.append(batch)
    stream = execution_stream(job_id, attempt)
    return [
        ExecutionLogged(id=stream, version=n, at=at, job_id=job_id, attempt=attempt, lines=lines)
        for n, lines in enumerate(batches, start=1)
    ]
