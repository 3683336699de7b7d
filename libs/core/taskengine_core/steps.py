"""The step runner: a workflow's steps as real subprocesses on this machine, in order.

The dispatcher's local executor runs it in-process; `taskengine worker` runs it for one
attempt of a remote executor (a subprocess of the dispatcher, a Kubernetes Job)."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from taskengine_contracts.events import LogLine

from taskengine_core.clients import mask_secrets
from taskengine_core.confinement import Confinement
from taskengine_core.workflows import Step

MAX_LINE = 8192
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class StepEvent:
    """A step started, completed or failed: what step callbacks are made of."""

    step: int
    name: str
    event: str
    exit_code: int | None = None
    reason: str | None = None


@dataclass(frozen=True)
class Outcome:
    """How an attempt ended: `succeeded`, `failed` (with exit code) or `timed_out`.

    `transient` names a failure that is not the workflow's fault (e.g. `lost`: its runner
    vanished), which even a job retrying only transient failures retries."""

    status: str
    reason: str = ""
    exit_code: int | None = None
    timeout: float = 0.0
    transient: str | None = None
    unstartable: bool = False
    """The attempt was never provisioned (e.g. its image was not pulled in time)."""


def die_with_parent() -> None:
    """For `preexec_fn`: the child is killed when its parent dies, even by SIGKILL."""
    # A step must not outlive its runner (a dispatcher or worker killed with -9).
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


PASSED_THROUGH = ("PATH", "HOME", "LANG", "TZ", "TMPDIR", "USER", "SHELL")
"""What a step (or a worker) inherits from its runner's environment (and `LC_*`): never the
runner's settings, which hold the database URL and keys."""


def worker_environment() -> dict[str, str]:
    return {
        name: value
        for name, value in os.environ.items()
        if name in PASSED_THROUGH or name.startswith("LC_")
    }


REFUSING = Confinement(None, None, "inline steps are refused: no confinement was configured")


async def run_steps(
    steps: list[Step],
    env: dict[str, str],
    timeout: float,
    emit: Callable[[LogLine], None],
    on_step: Callable[[StepEvent], None] = lambda _: None,
    confinement: Confinement = REFUSING,
) -> Outcome:
    """Runs `steps` in order, streaming their output to `emit` and each step's start and end
    to `on_step`; stops at the first failure. Client-given steps run as `confinement` says,
    in a scratch directory of their own that is removed afterwards."""
    scratch: list[str] = []
    try:
        return await _run_steps(steps, env, timeout, emit, on_step, confinement, scratch)
    finally:
        for path in scratch:
            Confinement.remove(path)


async def _run_steps(
    steps: list[Step],
    env: dict[str, str],
    timeout: float,
    emit: Callable[[LogLine], None],
    on_step: Callable[[StepEvent], None],
    confinement: Confinement,
    scratch: list[str],
) -> Outcome:
    deadline = time.monotonic() + timeout
    for number, step in enumerate(steps, start=1):
        command = mask_secrets(" ".join(step.argv))  # mask before cutting: a cut secret hides
        emit(_line(number, "INFO", f"'{step.name}' started: {command[:200]}"))
        on_step(StepEvent(number, step.name, "start"))
        limit, budget = deadline - time.monotonic(), timeout
        if step.timeout and step.timeout < limit:
            limit = budget = step.timeout
        if step.client_given and confinement.refused:
            emit(_line(number, "ERROR", f"'{step.name}' could not start: {confinement.refused}"))
            reason = f"step '{step.name}' could not start: {confinement.refused}"
            on_step(StepEvent(number, step.name, "fail", 126, reason))
            return Outcome("failed", reason, 126)
        try:
            if step.client_given:
                if not scratch:  # one per attempt, made when its first such step starts
                    scratch.append(confinement.scratch())
                options = confinement.process_options(
                    scratch[0], {**env, **step.env}, then=die_with_parent
                )
            else:
                own = {**worker_environment(), **env, **step.env}
                options = {"env": own, "preexec_fn": die_with_parent}
            process = await asyncio.create_subprocess_exec(
                *step.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
                limit=2**20,
                **options,
            )
        except OSError as error:
            emit(_line(number, "ERROR", f"'{step.name}' could not start: {error}"))
            reason = f"step '{step.name}' could not start: {error}"
            on_step(StepEvent(number, step.name, "fail", 127, reason))
            return Outcome("failed", reason, 127)
        try:
            code = await asyncio.wait_for(_supervise(process, number, emit), timeout=max(limit, 0))
        except TimeoutError:
            _kill(process)
            await process.wait()
            emit(_line(number, "ERROR", f"'{step.name}' timed out after {budget:g}s"))
            reason = f"step '{step.name}' timed out after {budget:g}s"
            on_step(StepEvent(number, step.name, "fail", None, reason))
            return Outcome("timed_out", f"step '{step.name}' timed out", timeout=budget)
        except asyncio.CancelledError:
            _kill(process)
            raise
        if code != 0:
            emit(_line(number, "ERROR", f"'{step.name}' failed with exit code {code}"))
            reason = f"step '{step.name}' exited with {code}"
            on_step(StepEvent(number, step.name, "fail", code, reason))
            return Outcome("failed", reason, code)
        emit(_line(number, "INFO", f"'{step.name}' completed successfully"))
        on_step(StepEvent(number, step.name, "complete", 0))
    return Outcome("succeeded")


async def _supervise(
    process: asyncio.subprocess.Process, step: int, emit: Callable[[LogLine], None]
) -> int:
    async def pump(stream: asyncio.StreamReader | None, severity: str) -> None:
        assert stream is not None
        while raw := await stream.readline():
            emit(_line(step, severity, raw[:MAX_LINE].decode(errors="replace").rstrip("\n")))

    await asyncio.gather(pump(process.stdout, "INFO"), pump(process.stderr, "ERROR"))
    return await process.wait()


def _kill(process: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def _line(step: int, severity: str, text: str) -> LogLine:
    # PostgreSQL text cannot hold NUL: a step printing one must not stall the read models.
    return LogLine(datetime.now(UTC), step, severity, text.replace("\x00", "\ufffd"))  # type: ignore[arg-type]
