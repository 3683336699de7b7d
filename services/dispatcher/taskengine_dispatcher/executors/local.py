"""The local executor: an attempt's steps run in-process on the dispatcher, their output
lines and step changes handed to the attempt's sink (the dispatcher stores them every
FLUSH seconds, with the outcomes, in one commit)."""

from __future__ import annotations

import asyncio
import json
import logging

from taskengine_core.config import LOCAL
from taskengine_core.confinement import Confinement
from taskengine_core.jobs import Job
from taskengine_core.steps import Outcome, run_steps
from taskengine_core.workflows import Step

from taskengine_dispatcher.executors import Placement, Sink, Start

log = logging.getLogger(__name__)


class LocalAttempt:
    """One attempt's steps, run as a task of the dispatcher's event loop."""

    reports = False

    def __init__(
        self,
        job_id: int,
        steps: list[Step],
        env: dict[str, str],
        timeout: float,
        sink: Sink,
        confinement: Confinement,
    ):
        self.placement = Placement(LOCAL)
        self.job_id = job_id
        self.steps = steps
        self.env = env
        self.timeout = timeout
        self.sink = sink
        self.confinement = confinement
        self.task: asyncio.Task[Outcome] | None = None
        self.stopped = False

    async def run(self) -> Outcome | None:
        """Runs the steps; an executor bug still ends the attempt (failed)."""
        self.task = asyncio.ensure_future(
            run_steps(
                self.steps,
                self.env,
                self.timeout,
                self.sink.emit,
                self.sink.on_step,
                self.confinement,
            )
        )
        if self.stopped:
            self.task.cancel()
        try:
            return await self.task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if self.stopped and not (current and current.cancelling()):
                return None  # its job was cancelled or broken: that is its end
            raise
        except Exception as error:
            log.exception("job %s: executor error", self.job_id)
            return Outcome("failed", f"executor error: {error}")

    def stop(self) -> None:
        self.stopped = True
        if self.task is not None:
            self.task.cancel()

    async def after_end(self) -> None:
        pass


class LocalExecutor:
    """Runs steps on the dispatcher, confined as the operator configured."""

    name = LOCAL
    runs_as = "step run(s)"

    def __init__(self, confinement: Confinement):
        self.confinement = confinement

    def attempt(self, start: Start, sink: Sink) -> LocalAttempt | None:
        steps = start.steps()
        if not steps:
            return None
        submitted = start.submitted
        env = {
            **submitted.run.env,
            "TASKENGINE_JOB_ID": str(start.ref.job_id),
            "TASKENGINE_ATTEMPT": str(start.attempt),
            "TASKENGINE_PARAMETERS": json.dumps(submitted.parameters),
        }
        return LocalAttempt(start.ref.job_id, steps, env, start.timeout, sink, self.confinement)

    def adopt(self, job: Job, attempt: int) -> None:
        """Steps die with their dispatcher: none is found running."""
        return None

    async def close(self) -> None:
        pass
