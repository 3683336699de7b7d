"""The process executor: each attempt runs as a `taskengine worker` subprocess, which fetches
its work task from the gateway and reports there over HTTP, as a Kubernetes Job's worker does.

The dispatcher only starts the worker, kills it (the job was cancelled or broken, or it ran
past the job's timeout) and notices when it exits; what the worker reports moves the job. A
worker that exits without a final report lost its attempt; workers die with their dispatcher.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

from taskengine_core.attempts import LOST, worker_token
from taskengine_core.config import PROCESS, EngineSettings
from taskengine_core.jobs import Job
from taskengine_core.steps import Outcome, die_with_parent, worker_environment

from taskengine_dispatcher.executors import Placement, Sink, Start

EXECUTOR = PROCESS
COMMAND = (sys.executable, "-m", "taskengine_cli.main", "worker")
"""`taskengine worker`, with the dispatcher's own interpreter (the same installation)."""
GRACE = 10.0
"""How long past the job's timeout a worker may take: it times its steps out itself first
and reports `timeout`; one still running then has its attempt ended as timed out."""
STOP_GRACE = 5.0
"""How long a worker told to stop (SIGTERM) may take to stop its steps before it is killed."""
PASSED_TO_WORKER = ("PYTHONPATH",)


@dataclass(frozen=True)
class WorkerExit:
    """How a worker process ended: its exit code (negative: the signal that killed it); or
    that it still ran GRACE past the job's timeout (`code` None); `stopped`: the dispatcher
    stopped it (its job was cancelled or broken)."""

    code: int | None
    stopped: bool = False

    @property
    def timed_out(self) -> bool:
        return self.code is None

    def describe(self) -> str:
        if self.code is None:
            return "still running"
        return f"signal {-self.code}" if self.code < 0 else f"code {self.code}"


def gateway_url(config: EngineSettings) -> str:
    """Where workers report: `TASKENGINE_GATEWAY_URL`, else the gateway's own address."""
    if config.gateway_url:
        return config.gateway_url.rstrip("/")
    host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(config.host, config.host)
    return f"http://{f'[{host}]' if ':' in host else host}:{config.port}"


def worker_env(config: EngineSettings, job_id: int, attempt: int, timeout: float) -> dict[str, str]:
    """What a worker knows: its task, attempt, token and where to report, the workflows as
    the dispatcher has them, and the plain environment (PATH, HOME, locale) — never the
    database URL or the keys."""
    assert config.workflows_dir is not None
    return {
        **worker_environment(),
        **{name: os.environ[name] for name in PASSED_TO_WORKER if name in os.environ},
        "TASKENGINE_JOB_ID": str(job_id),
        "TASKENGINE_ATTEMPT": str(attempt),
        "TASKENGINE_WORKER_TOKEN": worker_token(config.webhook_key, job_id, attempt),
        "TASKENGINE_GATEWAY_URL": gateway_url(config),
        "TASKENGINE_WORKFLOWS_DIR": str(Path(config.workflows_dir).resolve()),
        "TASKENGINE_INLINE_STEPS": "true" if config.inline_steps else "false",
        "TASKENGINE_STEP_USER": config.step_user,
        "TASKENGINE_STEP_SAME_USER": "true" if config.step_same_user else "false",
        "TASKENGINE_TIMEOUT": f"{timeout:g}",
        "TASKENGINE_LOG_LEVEL": config.log_level,
    }


class WorkerProcess:
    """One attempt's `taskengine worker`: its own process group, killed with the dispatcher."""

    def __init__(self, env: dict[str, str], timeout: float):
        self.env = env
        self.timeout = timeout
        self.process: asyncio.subprocess.Process | None = None
        self.stopped = False

    async def run(self) -> WorkerExit:
        """Starts the worker and waits until it exits, or until GRACE past the job's timeout
        (it is left running: `terminate` it once its attempt is ended). Cancelled (the
        dispatcher stops), it kills the worker: its attempt is lost, not failed."""
        try:
            self.process = await asyncio.create_subprocess_exec(
                *COMMAND,
                env=self.env,
                stdin=asyncio.subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        except OSError:
            return WorkerExit(127)
        if self.stopped:  # stopped while it was being started
            self.stop()
        try:
            code = await asyncio.wait_for(self.process.wait(), self.timeout + GRACE)
        except TimeoutError:
            return WorkerExit(None)
        except asyncio.CancelledError:
            self._signal(signal.SIGKILL)
            raise
        return WorkerExit(code, stopped=self.stopped)

    def stop(self) -> None:
        """Stops the worker (its job was cancelled or broken): SIGTERM, so it stops its
        steps; SIGKILL if it still runs STOP_GRACE later."""
        self.stopped = True
        if self._signal(signal.SIGTERM):
            asyncio.get_running_loop().call_later(STOP_GRACE, self._signal, signal.SIGKILL)

    async def terminate(self) -> int:
        """Stops the worker and waits for it to exit."""
        assert self.process is not None
        self.stop()
        return await self.process.wait()

    def _signal(self, signum: int) -> bool:
        if self.process is None or self.process.returncode is not None:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signum)
        return True


class ProcessAttempt:
    """An attempt run by a worker process: ended by the worker's reports, else by its exit."""

    reports = True

    def __init__(self, worker: WorkerProcess, placement: Placement):
        self.worker = worker
        self.placement = placement
        self.exit: WorkerExit | None = None

    async def run(self) -> Outcome | None:
        self.exit = exit = await self.worker.run()
        if exit.stopped:
            return None  # its job was cancelled or broken: that is its end
        if exit.timed_out:
            reason = "the worker ran past the job's timeout"
            return Outcome("timed_out", reason, timeout=self.worker.timeout)
        reason = f"lost: the worker exited ({exit.describe()}) without a final report"
        return Outcome("failed", reason, exit.code, transient=LOST)

    def stop(self) -> None:
        self.worker.stop()

    async def after_end(self) -> None:
        if self.exit is not None and self.exit.timed_out:
            # Its attempt is over: it may stop its steps, its report is refused.
            await self.worker.terminate()


class ProcessExecutor:
    """Runs each remote attempt as a `taskengine worker` process on this host."""

    name = EXECUTOR
    runs_as = "worker process(es)"

    def __init__(self, config: EngineSettings):
        self.config = config

    def attempt(self, start: Start, sink: Sink) -> ProcessAttempt:
        start.steps()  # a workflow that cannot run fails the attempt before a worker starts
        env = worker_env(self.config, start.ref.job_id, start.attempt, start.timeout)
        memory = start.memory if start.submitted.run.kind == "worker" else None
        return ProcessAttempt(WorkerProcess(env, start.timeout), Placement(EXECUTOR, memory))

    def adopt(self, job: Job, attempt: int) -> None:
        """Workers die with their dispatcher: none is found running."""
        return None

    async def close(self) -> None:
        pass
