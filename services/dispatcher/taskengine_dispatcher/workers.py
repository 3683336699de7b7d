"""The process executor: each attempt runs as a `taskengine worker` subprocess, which fetches
its work task from the gateway and reports there over HTTP, as a Kubernetes Job's worker does.

The dispatcher only starts the worker, kills it (the job was cancelled or broken, or it ran
past the job's timeout) and notices when it exits; what the worker reports moves the job.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

from taskengine_core.attempts import worker_token
from taskengine_core.config import PROCESS, EngineSettings
from taskengine_core.jobs import Job
from taskengine_core.steps import die_with_parent, worker_environment

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
        "TASKENGINE_TASK_ID": str(job_id),
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


def attempt_memory(job: Job) -> str | None:
    """The memory limit the job's next attempt runs with: raised after an OOM kill, else its
    run's."""
    return job.memory or job.run.resources.memory


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
