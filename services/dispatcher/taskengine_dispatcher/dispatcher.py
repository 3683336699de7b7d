"""The dispatcher: runs admitted jobs and records what happened.

Starts are committed per consumed batch (with the tracking record and an execution row per
running attempt). The local executor runs the steps in-process: output lines and outcomes are
gathered and committed together every `FLUSH` seconds, so a burst of short jobs costs a
handful of transactions, not one each. The process executor starts a `taskengine worker` per
attempt, which reports to the gateway; when it exits without a final report, the attempt is
ended as lost. An attempt that was running when its dispatcher died is found by its execution
row on restart and ended as lost: retried, or failed when out of attempts.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING
from uuid import UUID

from eventsourcing.persistence import Tracking
from taskengine_bus import BatchConsumer, Delivered, Runtime
from taskengine_contracts import subjects
from taskengine_contracts.events import (
    Event,
    ExecutionLogged,
    JobAdmitted,
    JobBroken,
    JobCancelled,
    JobEvent,
    JobFailed,
    JobStarted,
    JobSubmitted,
    JobSucceeded,
    LogLine,
    RunSpec,
    StepChanged,
)
from taskengine_core.attempts import LOST
from taskengine_core.config import EXECUTORS, KUBERNETES, LOCAL
from taskengine_core.confinement import Confinement
from taskengine_core.drove import check_startable
from taskengine_core.errors import DomainError
from taskengine_core.ids import execution_stream
from taskengine_core.jobs import Job, JobRef, JobState, advance
from taskengine_core.steps import Outcome, StepEvent, run_steps
from taskengine_core.workflows import workflow
from taskengine_store.store import Conflict, Statement

from taskengine_dispatcher import workers
from taskengine_dispatcher.outcomes import ended, ended_now
from taskengine_dispatcher.workers import WorkerProcess

if TYPE_CHECKING:
    from taskengine_dispatcher.kubernetes import JobAttempt, KubernetesExecutor

log = logging.getLogger(__name__)

NAME = "dispatcher"
FLUSH = 0.05
DEFAULT_TIMEOUT = 3600.0

_INSERT_EXECUTION = (
    "INSERT INTO dispatcher_executions (job_uuid, job_id, client, workflow, priority, attempt,"
    " version, instance, callbacks, started_at, custom_data)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
    " ON CONFLICT (job_uuid) DO UPDATE SET attempt = excluded.attempt,"
    " version = excluded.version, instance = excluded.instance, started_at = excluded.started_at"
)
_DELETE_EXECUTION = "DELETE FROM dispatcher_executions WHERE job_uuid = %s"
_DELETE_ATTEMPT = "DELETE FROM dispatcher_executions WHERE job_uuid = %s AND attempt = %s"


@dataclass(frozen=True)
class Ending:
    """An attempt to end unless its job moved on: `outcome` is what happened to it (None:
    nothing to append, e.g. its job was cancelled)."""

    job_uuid: UUID
    attempt: int
    outcome: Outcome | None
    callbacks: list[str]
    custom_data: object = None


@dataclass
class Execution:
    """One running attempt and what it has printed but not yet stored."""

    ref: JobRef
    workflow: str
    priority: int
    attempt: int
    callbacks: list[str]
    custom_data: object = None
    run: RunSpec = RunSpec()
    concurrency_key: str | None = None
    log_version: int = 0
    lines: list[LogLine] = field(default_factory=list)
    steps: list[StepEvent] = field(default_factory=list)
    outcome: Outcome | None = None
    task: asyncio.Task | None = None
    cancelled: bool = False
    worker: WorkerProcess | JobAttempt | None = None
    """A remote executor's worker: a process or a Kubernetes Job (its outcome comes from its
    reports, not `outcome`)."""

    def emit(self, line: LogLine) -> None:
        """Where the executor sends output: the lines not yet stored (flush swaps the list)."""
        self.lines.append(line)

    def on_step(self, step: StepEvent) -> None:
        self.steps.append(step)


class Dispatcher:
    def __init__(self, runtime: Runtime):
        self.runtime = runtime
        self.executor = runtime.config.executor
        self.running: dict[UUID, Execution] = {}
        self.wake = asyncio.Event()
        self.kube: KubernetesExecutor | None = None
        self.confinement = Confinement.of(runtime.config)

    # --- starting --------------------------------------------------------------------------

    async def on_job_events(self, batch: list[Delivered]) -> bool:
        admitted = [d.event for d in batch if isinstance(d.event, JobAdmitted)]
        for item in batch:
            if isinstance(item.event, (JobCancelled, JobBroken)):
                self._cancel(item.event)
            self.runtime.apply(item.event)
        if not admitted:
            return False
        # A worker's memory limit may have been raised by a retry: it needs the whole job.
        specs = await self.runtime.call(
            self.runtime.store.streams,
            [e.id for e in admitted],
            version=1 if self.executor == LOCAL else None,
        )
        tracking = Tracking(NAME, batch[-1].position)
        while True:
            events, rows, launches = self._starts(admitted, specs)
            try:
                await self.runtime.call(self.runtime.store.commit, events, tracking, rows)
                break
            except Conflict as conflict:
                if not conflict.stale:
                    return True  # already handled before a restart
                admitted = [e for e in admitted if e.id not in conflict.stale]
        for execution, steps, env, timeout in launches:
            self.running[execution.ref.id] = execution
            if self.kube is not None and execution.worker:  # a Kubernetes Job
                execution.task = asyncio.create_task(self._run_job(execution))
            elif execution.worker:
                execution.task = asyncio.create_task(self._run_worker(execution))
            else:
                execution.task = asyncio.create_task(self._run(execution, steps, env, timeout))
        if launches:
            self.wake.set()
        return True

    def _starts(self, admitted: list[JobAdmitted], specs: dict[UUID, list[Event]]):  # type: ignore[no-untyped-def]
        events: list[Event] = []
        rows: list[Statement] = []
        launches = []
        for event in admitted:
            spec = specs.get(event.id, [None])[0]
            assert isinstance(spec, JobSubmitted), f"job {event.job_id} has no submission"
            # Remote executors run workers (they report back) and containers; every other job
            # runs its steps here whatever the executor.
            run = spec.run
            remote = self.executor != LOCAL and run.kind != "steps"
            job = (
                Job.fold(e for e in specs[event.id] if isinstance(e, JobEvent)) if remote else None
            )
            ref = JobRef.of(event)
            placement = self.kube.place(ref.job_id, event.attempt) if self.kube and remote else None
            try:
                host_paths = self.runtime.config.host_path_prefixes
                check_startable(spec, self.executor, datetime.now(UTC), host_paths)  # Drove's
                # A container has no steps: its image runs as a Job of its own.
                steps = (
                    []
                    if run.kind == "container"
                    else workflow(spec.workflow).steps(spec.parameters, event.attempt)
                )
            except (DomainError, ValueError) as error:
                events.append(
                    advance(
                        ref,
                        JobFailed,
                        workflow=spec.workflow,
                        attempt=event.attempt,
                        reason=str(error),
                    )
                )
                continue
            started = advance(
                ref,
                JobStarted,
                workflow=spec.workflow,
                attempt=event.attempt,
                executor=self.executor if remote else LOCAL,
                callbacks=spec.callbacks,
                memory=workers.attempt_memory(job) if job and run.kind == "worker" else None,
                cluster=placement.cluster if placement else None,
                job_name=placement.job_name if placement else None,
            )
            events.append(started)
            custom_data = spec.parameters.get("custom_data")
            if not steps and not remote:  # nothing to run: the attempt is over as it starts
                events.append(
                    advance(
                        JobRef.of(started),
                        JobSucceeded,
                        workflow=spec.workflow,
                        attempt=event.attempt,
                        callbacks=spec.callbacks,
                        custom_data=custom_data,
                    )
                )
                continue
            execution = Execution(
                JobRef.of(started),
                spec.workflow,
                event.priority,
                event.attempt,
                spec.callbacks,
                custom_data,
                run,
                spec.concurrency_key,
            )
            rows.append(
                (
                    _INSERT_EXECUTION,
                    (
                        ref.id,
                        ref.job_id,
                        ref.client,
                        spec.workflow,
                        event.priority,
                        event.attempt,
                        started.version,
                        self.runtime.instance,
                        json.dumps(spec.callbacks),
                        started.at,
                        None if custom_data is None else json.dumps(custom_data),
                    ),
                )
            )
            timeout = run.timeout or DEFAULT_TIMEOUT
            if self.kube and placement and job:
                env = {}
                execution.worker = self.kube.attempt(placement, spec, job, event.attempt, timeout)
            elif remote:
                config = self.runtime.config
                env = workers.worker_env(config, ref.job_id, event.attempt, timeout)
                execution.worker = WorkerProcess(env, timeout)
            else:
                env = {
                    **run.env,
                    "TASKENGINE_JOB_ID": str(ref.job_id),
                    "TASKENGINE_ATTEMPT": str(event.attempt),
                    "TASKENGINE_PARAMETERS": json.dumps(spec.parameters),
                }
            launches.append((execution, steps, env, timeout))
        return events, rows, launches

    async def _run(self, execution: Execution, steps, env, timeout) -> None:  # type: ignore[no-untyped-def]
        try:
            execution.outcome = await run_steps(
                steps, env, timeout, execution.emit, execution.on_step, self.confinement
            )
        except asyncio.CancelledError:
            execution.outcome = Outcome("failed", "cancelled")
            raise
        except Exception as error:  # an executor bug must still end the attempt
            log.exception("job %s: executor error", execution.ref.job_id)
            execution.outcome = Outcome("failed", f"executor error: {error}")
        finally:
            self.wake.set()

    async def _run_worker(self, execution: Execution) -> None:
        """Runs the attempt's worker; once it exited, ends the attempt unless its reports
        did (a worker that vanished without a final report lost its attempt)."""
        worker = execution.worker
        assert worker is not None
        exit = await worker.run()  # cancelled (the dispatcher stops): it is killed
        if exit.stopped:
            outcome = None  # its job was cancelled or broken: that is its end
        elif exit.timed_out:
            reason = "the worker ran past the job's timeout"
            outcome = Outcome("timed_out", reason, timeout=worker.timeout)
        else:
            reason = f"lost: the worker exited ({exit.describe()}) without a final report"
            outcome = Outcome("failed", reason, exit.code, transient=LOST)
        await self._end_attempt(execution, outcome)
        if exit.timed_out:  # its attempt is over: it may stop its steps, its report is refused
            await worker.terminate()
        if self.running.get(execution.ref.id) is execution:
            del self.running[execution.ref.id]

    async def _run_job(self, execution: Execution) -> None:
        """Runs the attempt as a Kubernetes Job; once it ended, ends the attempt unless the
        worker's reports did (see kubernetes.py)."""
        assert execution.worker is not None and not isinstance(execution.worker, WorkerProcess)
        outcome = await execution.worker.run()  # cancelled (the dispatcher stops): Job kept
        await self._end_attempt(execution, outcome)
        if self.running.get(execution.ref.id) is execution:
            del self.running[execution.ref.id]

    async def _end_attempt(self, execution: Execution, outcome: Outcome | None) -> None:
        """Ends a remote attempt with `outcome` unless its job moved on (None: it was stopped,
        its execution row goes)."""
        ending = Ending(
            execution.ref.id, execution.attempt, outcome, execution.callbacks, execution.custom_data
        )
        delay = FLUSH
        while True:
            try:
                appended = await self.runtime.call(self.end_attempts, [ending])
                break
            except Exception:  # the store is unreachable: keep trying
                log.exception("job %s: ending the attempt failed; retrying", execution.ref.job_id)
                await asyncio.sleep(delay)
                delay = min(delay * 4, 5.0)
        for event in appended:
            log.warning("job %s: %s", event.job_id, outcome.reason if outcome else event)

    def _cancel(self, event: JobCancelled | JobBroken) -> None:
        execution = self.running.get(event.id)
        if execution and execution.worker:
            execution.worker.stop()
        elif execution and execution.task:
            execution.cancelled = True
            execution.task.cancel()

    # --- recording ---------------------------------------------------------------------------

    async def flush_forever(self) -> None:
        delay = FLUSH
        while True:
            if all(execution.worker for execution in self.running.values()):  # none local
                await self.wake.wait()
            await asyncio.sleep(delay)
            self.wake.clear()
            try:
                await self.flush()
                delay = FLUSH
            except Exception:  # the store is unreachable: keep everything and try again
                log.exception("dispatcher: recording outcomes failed; retrying")
                delay = min(delay * 4, 5.0)

    async def flush(self) -> None:
        """Stores new output lines and finished attempts of every execution in one commit."""
        events: list[Event] = []
        rows: list[Statement] = []
        done: list[Execution] = []
        taken: list[tuple[Execution, list[LogLine]]] = []
        for execution in list(self.running.values()):
            lines, execution.lines = execution.lines, []
            steps, execution.steps = execution.steps, []
            taken.append((execution, lines, steps))
            stream = execution_stream(execution.ref.job_id, execution.attempt)
            if lines:
                execution.log_version += 1
                events.append(
                    ExecutionLogged(
                        id=stream,
                        version=execution.log_version,
                        at=datetime.now(UTC),
                        job_id=execution.ref.job_id,
                        attempt=execution.attempt,
                        lines=lines,
                    )
                )
            for step in steps:
                execution.log_version += 1
                events.append(
                    StepChanged(
                        id=stream,
                        version=execution.log_version,
                        at=datetime.now(UTC),
                        job_id=execution.ref.job_id,
                        client=execution.ref.client,
                        attempt=execution.attempt,
                        step=step.step,
                        name=step.name,
                        event=step.event,  # type: ignore[arg-type]
                        exit_code=step.exit_code,
                        reason=step.reason,
                        callbacks=execution.callbacks,
                    )
                )
            if execution.outcome is not None:
                done.append(execution)
                rows.append((_DELETE_EXECUTION, (execution.ref.id,)))
                if not execution.cancelled:
                    events.append(self.outcome_event(execution))
        if not events and not rows:
            return
        try:
            # A job someone else moved meanwhile (e.g. cancelled) keeps that outcome, not ours.
            await self.runtime.call(self.runtime.store.commit_unmoved, events, rows)
        except Exception:
            for execution, lines, steps in taken:  # nothing stored: the next flush stores it
                execution.lines[:0] = lines
                execution.steps[:0] = steps
                execution.log_version -= bool(lines) + len(steps)
            raise
        for execution in done:
            self.running.pop(execution.ref.id, None)

    def outcome_event(self, execution: Execution) -> JobEvent:
        return ended(
            execution.ref,
            execution.workflow,
            execution.priority,
            execution.attempt,
            execution.callbacks,
            execution.outcome,
            self.runtime.settings,
            execution.custom_data,
            execution.run,
            execution.concurrency_key,
        )  # type: ignore[arg-type]

    # --- ending attempts that ended without an outcome of their own ----------------------

    def end_attempts(self, endings: list[Ending]) -> list[JobEvent]:
        """Ends each attempt whose job still runs it, deciding on the job as it now stands (a
        worker's report that lands meanwhile wins), and forgets their execution rows. Returns
        the events appended. Blocking: run it off the event loop."""
        store = self.runtime.store
        pending = {ending.job_uuid: ending for ending in endings}
        rows: list[Statement] = [(_DELETE_ATTEMPT, (e.job_uuid, e.attempt)) for e in endings]
        appended: list[JobEvent] = []
        while pending:
            jobs = store.jobs(list(pending))
            events = []
            for job_uuid, ending in pending.items():
                job = jobs.get(job_uuid)
                if ending.outcome is None or job is None:
                    continue
                if job.state == JobState.RUNNING and job.attempt == ending.attempt:
                    events.append(
                        ended_now(
                            job,
                            ending.outcome,
                            self.runtime.settings,
                            ending.callbacks,
                            ending.custom_data,
                            self.runtime.config.max_memory,
                        )
                    )
            dropped = store.commit_unmoved(events, rows)
            appended += [e for e in events if e.id not in dropped]
            rows, pending = [], {i: e for i, e in pending.items() if i in dropped}
        return appended

    async def recover(self) -> None:
        """Ends attempts this instance was running when it last died (their steps or workers
        died with it): lost, so retried, or failed when out of attempts."""
        rows = await self.runtime.call(
            self.runtime.store.query,
            "SELECT * FROM dispatcher_executions WHERE instance = %s",
            (self.runtime.instance,),
        )
        if self.kube:  # its Jobs outlived it: those of attempts still running are watched again
            rows = self._adopt(
                rows,
                await self.runtime.call(self.runtime.store.jobs, [r["job_uuid"] for r in rows]),
            )
        if not rows:
            return
        lost = Outcome("failed", "lost: the dispatcher running it stopped", transient=LOST)
        endings = [
            Ending(row["job_uuid"], row["attempt"], lost, row["callbacks"], row["custom_data"])
            for row in rows
        ]
        appended = await self.runtime.call(self.end_attempts, endings)
        log.warning(
            "dispatcher: %d attempt(s) running when it stopped; %d ended as lost",
            len(rows),
            len(appended),
        )

    def _adopt(self, rows: list[dict], jobs: dict[UUID, Job]) -> list[dict]:
        """Supervises again the Kubernetes Jobs of the attempts in `rows` that still run;
        returns the rows of the others (over, or lost)."""
        assert self.kube is not None
        left = []
        for row in rows:
            job = jobs.get(row["job_uuid"])
            attempt = self.kube.adopt(job, row["attempt"], DEFAULT_TIMEOUT) if job else None
            if job is None or attempt is None:
                left.append(row)
                continue
            execution = Execution(
                job.ref,
                job.workflow,
                job.priority,
                row["attempt"],
                row["callbacks"],
                row["custom_data"],
                job.run,
                job.concurrency_key,
                worker=attempt,
            )
            self.running[job.id] = execution
            execution.task = asyncio.create_task(self._run_job(execution))
        if len(left) < len(rows):
            log.info("dispatcher: adopted %d Kubernetes Job(s)", len(rows) - len(left))
        return left


async def dispatcher(runtime: Runtime) -> None:
    executor = runtime.config.executor
    if executor not in EXECUTORS:
        raise SystemExit(f"dispatcher: TASKENGINE_EXECUTOR must be one of {', '.join(EXECUTORS)}")
    if executor != LOCAL and not runtime.config.webhook_key:
        raise SystemExit("dispatcher: workers' tokens derive from TASKENGINE_WEBHOOK_KEY: set it")
    service = Dispatcher(runtime)
    if runtime.config.inline_steps and service.confinement.refused:
        log.error("dispatcher: %s", service.confinement.refused)
    runtime.working = lambda: len(service.running)
    if executor == KUBERNETES:
        # Imported only here: kubernetes-asyncio alone takes 1.5 s of CPU to import.
        from taskengine_dispatcher import kubernetes

        service.kube = await kubernetes.connect(runtime)
    await service.recover()
    consumer = BatchConsumer(
        runtime.js,
        durable=NAME,
        filter_subjects=[
            subjects.subject_for(JobAdmitted),
            subjects.subject_for(JobCancelled),
            subjects.subject_for(JobBroken),
            subjects.SETTINGS,
        ],
        handler=service.on_job_events,
        handled=await runtime.call(runtime.store.tracked, NAME),
        track=runtime.tracker(NAME),
        reject=runtime.rejecter(NAME),
        latest=runtime.latest,
        attempts=runtime.config.poison_attempts,
    )
    flusher = asyncio.create_task(service.flush_forever())
    try:
        await consumer.run()
    finally:
        flusher.cancel()
        for execution in service.running.values():
            if execution.task:
                execution.task.cancel()
        if service.kube:
            await service.kube.close()
