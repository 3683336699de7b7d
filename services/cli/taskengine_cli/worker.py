"""`taskengine worker`: runs one attempt of a work task and reports it to the gateway.

What the process executor starts per attempt, and what a Kubernetes Job runs. It reads its
work task (`TASKENGINE_JOB_ID`) from `TASKENGINE_GATEWAY_URL` with its attempt's token
(`TASKENGINE_WORKER_TOKEN`), reports `executing`, runs the workflow's steps, sends their output
to the job's log in batches, and reports `completed` (with `output_location` and `metadata`)
or `failed` (`timeout` when a step ran out of time) through `POST /api/worktasks/{id}`.

Exits 0 once the gateway accepted the final report (a failure too), 3 when it refused it
because the attempt is over (cancelled, or ended by someone else), 1 when it could not report,
2 when its environment is incomplete. SIGTERM stops the steps and reports `failed`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
from taskengine_contracts.events import LogLine
from taskengine_core.config import engine_settings
from taskengine_core.confinement import Confinement, not_dumpable
from taskengine_core.errors import DomainError
from taskengine_core.steps import Outcome, run_steps
from taskengine_core.workflows import Step, allow_inline, load_registry, workflow

log = logging.getLogger("taskengine.worker")

BATCH_EVERY = 0.5
"""Seconds between two batches of output lines sent to the job's log."""
MAX_BATCH = 1000
MAX_BUFFER = 100_000
"""Lines kept while the gateway cannot take them; older ones are dropped beyond."""
PATIENCE = (0.5, 1, 2, 4, 8, 15, 30)
"""Waits between tries of a request the gateway could not answer (down, restarting, 5xx)."""
REPORTED, UNREPORTED, INCOMPLETE, OVER = 0, 1, 2, 3


@dataclass(frozen=True)
class Assignment:
    """The attempt this worker runs, as its executor launched it."""

    task_id: str
    gateway_url: str
    token: str = field(repr=False)
    attempt: int | None = None
    timeout: float = 3600.0
    """Its steps' deadline: TASKENGINE_TIMEOUT as the executor gave it, else the engine's
    TASKENGINE_ATTEMPT_TIMEOUT."""

    @classmethod
    def from_environment(cls) -> Assignment:
        task_id = os.environ.get("TASKENGINE_JOB_ID", "").strip()
        token = os.environ.get("TASKENGINE_WORKER_TOKEN", "").strip()
        settings = engine_settings()
        url = settings.gateway_url.strip().rstrip("/")
        missing = [
            name
            for name, value in (
                ("TASKENGINE_JOB_ID", task_id),
                ("TASKENGINE_WORKER_TOKEN", token),
                ("TASKENGINE_GATEWAY_URL", url),
            )
            if not value
        ]
        if missing:
            raise ValueError(f"set {', '.join(missing)}")
        attempt = os.environ.get("TASKENGINE_ATTEMPT", "").strip()
        timeout = os.environ.get("TASKENGINE_TIMEOUT", "").strip()
        return cls(
            task_id,
            url,
            token,
            int(attempt) if attempt else None,
            float(timeout) if timeout else settings.attempt_timeout,
        )


class AttemptOver(Exception):
    """The gateway refused a report (409): this attempt ended without this worker."""


class Unreachable(Exception):
    """The gateway did not answer a request, after every try."""


class Refused(Exception):
    """The gateway refused a request for good (4xx): trying again changes nothing."""


class Gateway:
    """The work-task endpoints, called as this attempt's worker."""

    def __init__(self, assignment: Assignment, http: httpx.AsyncClient):
        self.path = f"/api/worktasks/{assignment.task_id}"
        self.task_id = assignment.task_id
        self.http = http

    async def task(self) -> dict[str, Any]:
        return (await self._call("GET", self.path)).json()

    async def report(self, status: str, **fields: object) -> str:
        """Reports `status`; returns the gateway's answer (`updated`, `requeued_for_retry`)."""
        body: dict[str, object] = {"worktask_id": self.task_id, "status": status}
        body |= {name: value for name, value in fields.items() if value is not None}
        answer = (await self._call("POST", self.path, body)).json()
        return str(answer.get("status", "")) if isinstance(answer, dict) else ""

    async def log(self, lines: list[LogLine], patience: tuple[float, ...] = ()) -> None:
        rows = [
            {"at": line.at.isoformat(), "step": line.step, "severity": line.severity}
            | {"text": line.text}
            for line in lines
        ]
        await self._call("POST", self.path + "/logs", {"lines": rows}, patience)

    async def _call(
        self, method: str, path: str, body: object = None, patience: tuple[float, ...] | None = None
    ) -> httpx.Response:
        problem = ""
        for wait in (*(PATIENCE if patience is None else patience), None):
            try:
                response = await self.http.request(method, path, json=body)
            except httpx.HTTPError as error:  # its message names the URL, never the token
                problem = f"{method} {path}: {type(error).__name__}: {error}"
            else:
                if response.status_code == 409:
                    raise AttemptOver(_detail(response))
                if response.status_code < 300:
                    return response
                problem = f"{method} {path}: {response.status_code} {_detail(response)}"
                if response.status_code < 500 and response.status_code != 429:
                    raise Refused(problem)
            if wait is None:
                break
            log.info("%s; trying again in %gs", problem, wait)
            await asyncio.sleep(wait)
        raise Unreachable(problem)


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    if isinstance(body, dict):
        return str(body.get("detail") or body.get("error") or body.get("message") or body)[:200]
    return str(body)[:200]


class LogShipper:
    """Output lines on their way to the job's log: sent every BATCH_EVERY seconds."""

    def __init__(self, gateway: Gateway, on_over: Callable[[], None]):
        self.gateway = gateway
        self.on_over = on_over
        self.lines: list[LogLine] = []
        self.dropped = 0

    def emit(self, line: LogLine) -> None:
        self.lines.append(line)
        if len(self.lines) > MAX_BUFFER:
            overflow = len(self.lines) - MAX_BUFFER
            del self.lines[:overflow]
            self.dropped += overflow

    async def ship_forever(self) -> None:
        while True:
            await asyncio.sleep(BATCH_EVERY)
            await self.ship()

    async def ship(self, patience: tuple[float, ...] = ()) -> None:
        """Sends what was printed so far; what the gateway could not take waits for the
        next batch (or is given up: the attempt is over, or the gateway refuses it)."""
        if self.dropped:
            note = f"{self.dropped} output lines were dropped: the gateway did not take them"
            self.lines.insert(0, LogLine(datetime.now(UTC), 0, "WARN", note))
            self.dropped = 0
        while self.lines:
            batch = self.lines[:MAX_BATCH]
            try:
                await self.gateway.log(batch, patience)
            except AttemptOver:
                self.lines.clear()
                self.on_over()
                return
            except Unreachable as error:
                log.warning("output not sent yet: %s", error)
                return
            except Refused as error:
                log.error("output refused, %d lines dropped: %s", len(batch), error)
            del self.lines[: len(batch)]


class Attempt:
    """One attempt, as its worker runs it: read the task, report `executing`, run the steps
    while shipping their output, report how they ended."""

    def __init__(self, assignment: Assignment, gateway: Gateway):
        self.assignment = assignment
        self.gateway = gateway
        self.stop = asyncio.Event()
        self.why: str | None = None
        """What stopped the steps: `terminated` (SIGTERM) or `over` (the attempt ended)."""
        self.task: dict[str, Any] = {}
        self.number = assignment.attempt or 1

    def stopping(self, why: str) -> None:
        self.why = self.why or why
        self.stop.set()

    async def run(self) -> int:
        """Runs the attempt and reports it; returns the exit code (see the module's docs)."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stopping, "terminated")
        try:
            return await self._run()
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)

    async def _run(self) -> int:
        try:
            self.task = await self.gateway.task()
        except AttemptOver as error:
            log.warning("work task %s: the attempt is over: %s", self.gateway.task_id, error)
            return OVER
        except (Unreachable, Refused) as error:
            log.error("work task %s could not be read: %s", self.gateway.task_id, error)
            return UNREPORTED
        self.number = self.assignment.attempt or int(self.task.get("retry_count") or 0) + 1
        try:
            steps = workflow(self.workflow_name()).steps(self.parameters(), self.number)
        except (DomainError, ValueError) as error:
            return await self.report("failed", error_message=str(error), metadata={})
        metadata = {"attempt": self.number, "host": socket.gethostname(), "pid": os.getpid()}
        try:
            await self.gateway.report("executing", metadata=metadata)
        except AttemptOver as error:
            log.warning("work task %s: the attempt is over: %s", self.gateway.task_id, error)
            return OVER
        except (Unreachable, Refused) as error:  # its final report may still be taken
            log.warning("work task %s: executing not reported: %s", self.gateway.task_id, error)
        outcome = None if self.stop.is_set() else await self.run_steps(steps)
        if self.why == "over":
            log.warning("work task %s: the attempt is over: steps stopped", self.gateway.task_id)
            return OVER
        if outcome is None:
            return await self.report("failed", error_message="terminated", metadata={})
        status, fields = _report(outcome, len(steps), self.output_location())
        return await self.report(status, **fields)

    async def run_steps(self, steps: list[Step]) -> Outcome | None:
        """Runs the steps, shipping their output as it comes; None: they were stopped."""
        shipper = LogShipper(self.gateway, lambda: self.stopping("over"))
        env = {
            "TASKENGINE_JOB_ID": self.gateway.task_id,
            "TASKENGINE_ATTEMPT": str(self.number),
            "TASKENGINE_PARAMETERS": json.dumps(self.parameters()),
        }
        if location := self.output_location():
            env["TASKENGINE_OUTPUT_LOCATION"] = location
        confinement = Confinement.of(engine_settings())
        running = asyncio.create_task(
            run_steps(steps, env, self.assignment.timeout, shipper.emit, confinement=confinement)
        )
        shipping = asyncio.create_task(shipper.ship_forever())
        stopped = asyncio.create_task(self.stop.wait())
        await asyncio.wait({running, stopped}, return_when=asyncio.FIRST_COMPLETED)
        for task in (stopped, shipping, running):  # a running step is killed
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.why != "over":
            await shipper.ship(PATIENCE)  # all of it, before the report ends the attempt
        if running.cancelled():
            return None
        if error := running.exception():  # a bug of the step runner must end the attempt too
            log.error("work task %s: the steps could not run: %r", self.gateway.task_id, error)
            return Outcome("failed", f"worker error: {error}")
        return running.result()

    async def report(self, status: str, **fields: object) -> int:
        try:
            answer = await self.gateway.report(status, **fields)
        except AttemptOver as error:
            log.warning("work task %s: %s refused: %s", self.gateway.task_id, status, error)
            return OVER
        except (Unreachable, Refused) as error:
            log.error("work task %s: %s not reported: %s", self.gateway.task_id, status, error)
            return UNREPORTED
        log.info(
            "work task %s attempt %d: %s (%s)", self.gateway.task_id, self.number, status, answer
        )
        return REPORTED

    def workflow_name(self) -> str:
        """The workflow run, as at submission: `task_spec.pipeline_id`, else the type's."""
        name = self._object("task_spec").get("pipeline_id") or self.task.get("type")
        if not isinstance(name, str) or not name:
            raise ValueError("the work task names no workflow (task_spec.pipeline_id or type)")
        return name

    def parameters(self) -> dict[str, object]:
        parameters = self._object("task_spec").get("parameters")
        return parameters if isinstance(parameters, dict) else {}

    def output_location(self) -> str | None:
        location = self._object("data_access").get("output_location")
        return location if isinstance(location, str) and location else None

    def _object(self, name: str) -> dict[str, Any]:
        value = self.task.get(name)
        return value if isinstance(value, dict) else {}


def _report(outcome: Outcome, steps: int, location: str | None) -> tuple[str, dict[str, Any]]:
    """The final report for how the steps ended: its status and fields."""
    if outcome.status == "succeeded":
        return "completed", {
            "output_location": location,
            "metadata": {"exit_code": 0, "steps": steps},
        }
    status = "timeout" if outcome.status == "timed_out" else "failed"
    metadata = {} if outcome.exit_code is None else {"exit_code": outcome.exit_code}
    return status, {"error_message": outcome.reason, "metadata": metadata}


async def _main(assignment: Assignment) -> int:
    headers = {"Authorization": f"Bearer {assignment.token}"}
    async with httpx.AsyncClient(
        base_url=assignment.gateway_url, headers=headers, timeout=30.0
    ) as http:
        return await Attempt(assignment, Gateway(assignment, http)).run()


def cmd_worker(args: argparse.Namespace) -> int:
    config = engine_settings()
    logging.basicConfig(
        level=config.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    try:
        assignment = Assignment.from_environment()
    except ValueError as error:
        print(f"taskengine worker: {error}", file=sys.stderr)
        return INCOMPLETE
    load_registry(config.workflows_dir)  # the workflows as the services have them
    allow_inline(config.inline_steps)
    not_dumpable()  # its token stays its own: no step of its user reads /proc/<pid>/environ
    return asyncio.run(_main(assignment))


def register(commands: argparse._SubParsersAction) -> None:
    """Adds `worker` to the `taskengine` command."""
    about = (
        "run one attempt of a work task: TASKENGINE_JOB_ID, TASKENGINE_WORKER_TOKEN and"
        " TASKENGINE_GATEWAY_URL say which, with what token, and where to report"
    )
    commands.add_parser("worker", help=about, description=about).set_defaults(func=cmd_worker)
