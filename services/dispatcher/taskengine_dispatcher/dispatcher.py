"""The dispatcher: runs admitted jobs and records what happened.

Starts are committed per consumed batch (with the tracking record and an execution row per
running attempt). Each attempt runs on an executor (`executors/`) chosen by its run spec's
kind and the configured executor. A local attempt's output lines and outcome are gathered
and committed together every `FLUSH` seconds, so a burst of short jobs costs a handful of
transactions, not one each. A remote attempt (a worker process or a Kubernetes Job) is ended
by its worker's reports; when it ends without one, it is ended on the job as it then stands.
An attempt that was running when its dispatcher died is found by its execution row on restart
and ended as lost (retried, or failed when out of attempts), unless its executor adopts it.

What to run comes from the job's submission as the dispatcher consumed it (`submissions.py`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from taskengine_contracts import subjects
from taskengine_contracts.events import (
    Event,
    ExecutionLogged,
    JobAdmitted,
    JobBroken,
    JobCancelled,
    JobEvent,
    JobExecuting,
    JobFailed,
    JobRetryScheduled,
    JobStarted,
    JobSubmitted,
    LogLine,
    StepChanged,
)
from taskengine_core.attempts import LOST
from taskengine_core.config import EXECUTORS, KUBERNETES, LOCAL, PROCESS
from taskengine_core.confinement import Confinement
from taskengine_core.errors import DomainError
from taskengine_core.ids import execution_stream
from taskengine_core.jobs import Job, JobRef, JobState, advance
from taskengine_core.partitions import PARTITIONS, consumer_name, partition_of
from taskengine_core.retries import RetrySettings
from taskengine_core.startable import check_startable
from taskengine_core.steps import Outcome, StepEvent
from taskengine_runtime import BatchConsumer, Delivered, Runtime, metrics
from taskengine_runtime.bus import retire_consumer
from taskengine_runtime.logs import context
from taskengine_runtime.partitioned import Partitions
from taskengine_store.store import Conflict, Statement

from taskengine_dispatcher import submissions
from taskengine_dispatcher.executors import Attempt, Executor, Start
from taskengine_dispatcher.executors.local import LocalExecutor
from taskengine_dispatcher.executors.process import ProcessExecutor
from taskengine_dispatcher.outcomes import Running, ended, ended_now
from taskengine_dispatcher.submissions import Submission, Submissions

log = logging.getLogger(__name__)

NAME = "dispatcher"
FLUSH = 0.05
INACTIVE = 3600.0
"""Seconds after which JetStream drops the consumer of an instance gone for good."""
CONSUMED = (JobSubmitted, JobAdmitted, JobRetryScheduled, JobCancelled, JobBroken)
"""The job events the dispatcher consumes (and the settings)."""

_INSERT_EXECUTION = (
    "INSERT INTO dispatcher_executions (job_uuid, job_id, client, workflow, priority, attempt,"
    " version, instance, callbacks, started_at, custom_data)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
    " ON CONFLICT (job_uuid) DO UPDATE SET attempt = excluded.attempt,"
    " version = excluded.version, instance = excluded.instance, started_at = excluded.started_at"
)
_DELETE_ATTEMPT = "DELETE FROM dispatcher_executions WHERE job_uuid = %s AND attempt = %s"
_ADOPTED = "UPDATE dispatcher_executions SET instance = %s WHERE job_uuid = ANY(%s)"


@dataclass(frozen=True)
class Ending:
    """An attempt to end unless its job moved on: `outcome` is what happened to it (None:
    nothing to append, e.g. its job was cancelled)."""

    job_uuid: UUID
    attempt: int
    outcome: Outcome | None
    callbacks: list[str]
    custom_data: object = None


@dataclass(kw_only=True)
class Execution(Running):
    """One running attempt and what it has printed but not yet stored."""

    log_version: int = 0
    lines: list[LogLine] = field(default_factory=list)
    steps: list[StepEvent] = field(default_factory=list)
    runner: Attempt | None = None
    """Where it runs (its executor's attempt)."""
    outcome: Outcome | None = None
    done: bool = False
    """A local attempt ended: `outcome` is stored with the next flush (None: nothing to)."""
    task: asyncio.Task[None] | None = None
    cancelled: bool = False
    started: float = field(default_factory=time.monotonic)
    """When it was launched (monotonic), for its run time."""
    announce: bool = False
    """A worker's run whose steps run here: no worker will report that it executes, so the
    flush after its first step started records it (JobExecuting), as a worker's report would."""

    @property
    def remote(self) -> bool:
        """Ended by its worker's reports (else by the next flush)."""
        return self.runner is not None and self.runner.reports

    def emit(self, line: LogLine) -> None:
        """Where the executor sends output: the lines not yet stored (flush swaps the list)."""
        self.lines.append(line)

    def on_step(self, step: StepEvent) -> None:
        self.steps.append(step)


Launch = tuple[Execution, Attempt]


class Dispatcher:
    def __init__(self, runtime: Runtime, remote: Executor | None = None):
        self.runtime = runtime
        self.executor = runtime.config.executor
        self.running: dict[UUID, Execution] = {}
        self.wake = asyncio.Event()
        self.confinement = Confinement.of(runtime.config)
        self.local: Executor = LocalExecutor(self.confinement)
        self.remote = remote
        """The configured process or Kubernetes executor (None: local only)."""
        self.submissions = Submissions()
        self.partitions = Partitions(runtime, NAME, self.idle, tend=self.recover)

    def executor_for(self, kind: str) -> Executor:
        """A remote executor runs workers and containers; every other job runs its steps here
        whatever the executor."""
        return self.remote if self.remote is not None and kind != "steps" else self.local

    @property
    def retry_settings(self) -> RetrySettings:
        return RetrySettings.of(self.runtime.settings, self.runtime.config.max_memory)

    # --- starting --------------------------------------------------------------------------

    async def on_job_events(self, batch: list[Delivered]) -> bool:
        for item in batch:  # whichever partition it is in now, the attempt runs here
            if isinstance(item.event, (JobCancelled, JobBroken)):
                self._cancel(item.event)
        async with self.partitions.lock:
            end = batch[-1].position
            mine = self.partitions.mine(batch)
            for item in mine:
                if not self.runtime.apply(item.event):
                    self.submissions.apply(item.event)
            admitted = [d.event for d in mine if isinstance(d.event, JobAdmitted)]
            if not admitted:
                self.partitions.advance(end)
                return False
            await self._start(admitted, self.partitions.tracking(end))
            self.partitions.advance(end)
        return True

    async def _start(self, admitted: list[JobAdmitted], tracking: Statement | None) -> None:
        """Commits the starts of `admitted` with the tracking of their partitions, then
        launches them. A job someone else moved meanwhile is left out."""
        known, missing = self.submissions.known([e.id for e in admitted])
        if missing:  # submitted before this dispatcher's last start, or forgotten since
            known |= await self.runtime.call(submissions.read, self.runtime.store, missing)
        starting = admitted
        while True:
            events, rows, launches = self._starts(starting, known)
            if tracking is not None:
                rows.append(tracking)
            try:
                await self.runtime.call(self.runtime.store.commit, events, None, rows)
                break
            except Conflict as conflict:
                starting = [e for e in starting if e.id not in conflict.stale]
        for event in events:
            self.submissions.apply(event)
        for execution, runner in launches:
            self._launch(execution, runner)
        if launches:
            self.wake.set()
        if len(starting) < len(admitted):
            await self._resume([e for e in admitted if e not in starting], known)

    async def _resume(self, admitted: list[JobAdmitted], known: dict[UUID, Submission]) -> None:
        """Runs the attempts among `admitted` that this instance started in a commit whose
        answer it never got.

        The connection died as the store committed: the commit was tried again, found its own
        events there and reported those jobs as moved by someone else. Their execution rows
        (this instance, this attempt) say they were ours; without this, nothing would run them
        and they would stay running until the next restart. One whose start cannot be made
        again (its deadline passed meanwhile) is ended as lost."""
        rows = await self.runtime.call(
            self.runtime.store.query,
            "SELECT job_uuid, attempt FROM dispatcher_executions"
            " WHERE instance = %s AND job_uuid = ANY(%s)",
            (self.runtime.instance, [e.id for e in admitted]),
        )
        ours = {row["job_uuid"]: row["attempt"] for row in rows}
        mine = [e for e in admitted if ours.get(e.id) == e.attempt and e.id not in self.running]
        if not mine:
            return
        jobs = await self.runtime.call(self.runtime.store.jobs, [e.id for e in mine])
        mine = [e for e in mine if _runs(jobs.get(e.id), e.attempt)]
        _, _, launches = self._starts(mine, known)
        for execution, runner in launches:
            execution.ref = jobs[execution.ref.id].ref
            self._launch(execution, runner)
        launched = {execution.ref.id for execution, _ in launches}
        if launched:
            self.wake.set()
        lost = Outcome("failed", "lost: its start could not be made again", transient=LOST)
        endings = [
            Ending(
                e.id,
                e.attempt,
                lost,
                known[e.id].submitted.callbacks,
                known[e.id].submitted.parameters.get("custom_data"),
            )
            for e in mine
            if e.id not in launched
        ]
        if endings:
            await self.runtime.call(self.end_attempts, endings)
        log.warning(
            "dispatcher: %d attempt(s) started in a commit whose answer was lost; %d run now",
            len(mine),
            len(launched),
        )

    def _starts(
        self, admitted: list[JobAdmitted], known: dict[UUID, Submission]
    ) -> tuple[list[Event], list[Statement], list[Launch]]:
        events: list[Event] = []
        rows: list[Statement] = []
        launches: list[Launch] = []
        for event in admitted:
            submission = known.get(event.id)
            assert submission is not None, f"job {event.job_id} has no submission"
            spec, run = submission.submitted, submission.submitted.run
            executor = self.executor_for(run.kind)
            ref = JobRef.of(event)
            execution = Execution(
                ref=ref,
                workflow=spec.workflow,
                priority=event.priority,
                attempt=event.attempt,
                callbacks=spec.callbacks,
                custom_data=spec.parameters.get("custom_data"),
                run=run,
                concurrency_key=spec.concurrency_key,
            )
            timeout = run.timeout or self.runtime.config.attempt_timeout
            start = Start(ref, event.attempt, spec, submission.attempt_memory, timeout)
            try:
                host_paths = self.runtime.config.host_path_prefixes
                now = datetime.now(UTC)
                check_startable(run, spec.client, spec.at, self.executor, now, host_paths)
                runner = executor.attempt(start, execution)
            except (DomainError, ValueError) as error:
                events.append(
                    advance(
                        ref,
                        JobFailed,
                        workflow=spec.workflow,
                        attempt=event.attempt,
                        reason=str(error),
                        failure="unstartable",
                    )
                )
                continue
            placement = runner.placement if runner else None
            execution.announce = run.kind == "worker" and runner is not None and not runner.reports
            started = advance(
                ref,
                JobStarted,
                workflow=spec.workflow,
                attempt=event.attempt,
                executor=placement.executor if placement else executor.name,
                callbacks=spec.callbacks,
                memory=placement.memory if placement else None,
                cluster=placement.cluster if placement else None,
                job_name=placement.job_name if placement else None,
            )
            events.append(started)
            execution.ref = JobRef.of(started)
            if runner is None:  # nothing to run: the attempt is over as it starts
                events.append(ended(execution, Outcome("succeeded"), self.retry_settings))
                continue
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
                        None
                        if execution.custom_data is None
                        else json.dumps(execution.custom_data),
                    ),
                )
            )
            launches.append((execution, runner))
        return events, rows, launches

    def _launch(self, execution: Execution, runner: Attempt) -> None:
        execution.runner = runner
        self.running[execution.ref.id] = execution
        execution.task = asyncio.create_task(self._supervise(execution, runner))

    async def _supervise(self, execution: Execution, runner: Attempt) -> None:
        """Runs the attempt until it ended. A local one's outcome goes with the next flush; a
        remote one is ended unless its reports did (a worker that vanished without a final
        report lost its attempt). Cancelled: the dispatcher stops."""
        if not runner.reports:
            try:
                execution.outcome = await runner.run()
                _ran(execution, execution.outcome)
            finally:
                execution.done = True
                self.wake.set()
            return
        outcome = await runner.run()
        _ran(execution, outcome)
        await self._end_attempt(execution, outcome)
        await runner.after_end()
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
                log.exception(
                    "job %s: ending the attempt failed; retrying",
                    execution.ref.job_id,
                    extra=context(job_id=execution.ref.job_id, client=execution.ref.client),
                )
                await asyncio.sleep(delay)
                delay = min(delay * 4, 5.0)
        for event in appended:
            log.warning(
                "job %s: %s",
                event.job_id,
                outcome.reason if outcome else event,
                extra=context(job_id=event.job_id, client=execution.ref.client),
            )

    def _cancel(self, event: JobCancelled | JobBroken) -> None:
        execution = self.running.get(event.id)
        if execution and execution.runner:
            execution.cancelled = True
            execution.runner.stop()

    # --- recording ---------------------------------------------------------------------------

    async def flush_forever(self) -> None:
        delay = FLUSH
        while True:
            if all(execution.remote for execution in self.running.values()):  # none local
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
        taken: list[tuple[Execution, list[LogLine], list[StepEvent], JobRef]] = []
        for execution in list(self.running.values()):
            lines, execution.lines = execution.lines, []
            steps, execution.steps = execution.steps, []
            taken.append((execution, lines, steps, execution.ref))
            if execution.announce and steps:  # its first step started
                executing = advance(
                    execution.ref,
                    JobExecuting,
                    attempt=execution.attempt,
                    by=f"{NAME} {self.runtime.instance}",
                )
                events.append(executing)
                execution.ref, execution.announce = JobRef.of(executing), False
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
            if execution.done:
                done.append(execution)
                rows.append((_DELETE_ATTEMPT, (execution.ref.id, execution.attempt)))
                if execution.outcome is not None and not execution.cancelled:
                    events.append(ended(execution, execution.outcome, self.retry_settings))
        if not events and not rows:
            return
        try:
            # A job someone else moved meanwhile (e.g. cancelled) keeps that outcome, not ours.
            moved = await self.runtime.call(self.runtime.store.commit_unmoved, events, rows)
        except Exception:
            for execution, lines, steps, ref in taken:  # nothing stored: the next flush does
                execution.lines[:0] = lines
                execution.steps[:0] = steps
                execution.announce |= execution.ref != ref
                execution.ref = ref
                execution.log_version -= bool(lines) + len(steps)
            raise
        for execution in done:
            self.running.pop(execution.ref.id, None)
            outcome = execution.outcome
            failed = outcome is not None and outcome.status != "succeeded"
            if failed and not execution.cancelled and execution.ref.id not in moved:
                assert outcome is not None
                log.warning(
                    "job %s: attempt %s %s: %s",
                    execution.ref.job_id,
                    execution.attempt,
                    outcome.status,
                    outcome.reason,
                    extra=context(job_id=execution.ref.job_id, client=execution.ref.client),
                )
        for event in events:
            self.submissions.apply(event)

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
            events: list[JobEvent] = []
            for job_uuid, ending in pending.items():
                job = jobs.get(job_uuid)
                if ending.outcome is None or job is None:
                    continue
                if job.state == JobState.RUNNING and job.attempt == ending.attempt:
                    events.append(
                        ended_now(
                            job,
                            ending.outcome,
                            self.retry_settings,
                            ending.callbacks,
                            ending.custom_data,
                        )
                    )
            dropped = store.commit_unmoved(list(events), rows)
            appended += [e for e in events if e.id not in dropped]
            rows, pending = [], {i: e for i, e in pending.items() if i in dropped}
        return appended

    async def recover(self, partitions: Collection[int] | None = None) -> None:
        """Ends the attempts a dispatcher was running when it died (their steps or workers died
        with it): lost, so retried, or failed when out of attempts. As this instance starts,
        its own; after each refresh of its leases (`partitions`: those it holds), those there
        of instances no longer alive (none renewed for the lease time), whoever held the
        partition then. A Kubernetes Job outlives its dispatcher: one still running is watched
        again, here."""
        me = self.runtime.instance
        params: tuple[object, ...]
        if partitions is None:
            sql, params = "SELECT * FROM dispatcher_executions WHERE instance = %s", (me,)
        else:
            sql = (
                "SELECT * FROM dispatcher_executions AS e"
                f" WHERE job_id %% {PARTITIONS} = ANY(%s) AND instance <> %s"
                " AND NOT EXISTS (SELECT FROM partition_members AS m WHERE m.service = %s"
                " AND m.instance = e.instance AND m.expires_at > now())"
            )
            params = (list(partitions), me, NAME)
        rows = await self.runtime.call(self.runtime.store.query, sql, params)
        if self.remote and rows:
            jobs = await self.runtime.call(self.runtime.store.jobs, [r["job_uuid"] for r in rows])
            left = self._adopt(self.remote, rows, jobs)
            if partitions is not None and len(left) < len(rows):  # they run here now
                adopted = [r["job_uuid"] for r in rows if r not in left]
                await self.runtime.call(
                    self.runtime.store.commit,
                    (),
                    None,
                    [(_ADOPTED, (me, adopted))],
                )
            rows = left
        if not rows:
            return
        lost = Outcome("failed", "lost: the dispatcher running it stopped", transient=LOST)
        endings = [
            Ending(row["job_uuid"], row["attempt"], lost, row["callbacks"], row["custom_data"])
            for row in rows
        ]
        appended = await self.runtime.call(self.end_attempts, endings)
        log.warning(
            "dispatcher: %d attempt(s) running when %s stopped; %d ended as lost",
            len(rows),
            ", ".join(sorted({row["instance"] for row in rows})),
            len(appended),
        )

    def idle(self, partition: int) -> bool:
        """Nothing of the partition runs here: it may be handed to another instance."""
        return all(partition_of(e.ref.job_id) != partition for e in self.running.values())

    def _adopt(
        self, executor: Executor, rows: list[dict[str, Any]], jobs: dict[UUID, Job]
    ) -> list[dict[str, Any]]:
        """Supervises again the attempts in `rows` the executor finds still running (a
        Kubernetes Job's); returns the rows of the others (over, or lost)."""
        left = []
        for row in rows:
            job = jobs.get(row["job_uuid"])
            runner = executor.adopt(job, row["attempt"]) if job else None
            if job is None or runner is None:
                left.append(row)
                continue
            execution = Execution(
                ref=job.ref,
                workflow=job.workflow,
                priority=job.priority,
                attempt=row["attempt"],
                callbacks=row["callbacks"],
                custom_data=row["custom_data"],
                run=job.run,
                concurrency_key=job.concurrency_key,
                memory=job.memory,
            )
            self._launch(execution, runner)
        if len(left) < len(rows):
            log.info("dispatcher: adopted %d %s", len(rows) - len(left), executor.runs_as)
        return left


def _runs(job: Job | None, attempt: int) -> bool:
    return job is not None and job.state == JobState.RUNNING and job.attempt == attempt


def _ran(execution: Execution, outcome: Outcome | None) -> None:
    """Its run time, by how it ended (`stopped`: cancelled, or the dispatcher stopping)."""
    status = outcome.status if outcome is not None else "stopped"
    metrics.RUN_TIME.labels(status).observe(time.monotonic() - execution.started)


async def remote_executor(runtime: Runtime) -> Executor | None:
    """The configured executor of workers and containers: None when everything runs here."""
    executor = runtime.config.executor
    if executor == PROCESS:
        return ProcessExecutor(runtime.config)
    if executor == KUBERNETES:
        # Imported only here: kubernetes-asyncio alone takes 1.5 s of CPU to import.
        from taskengine_dispatcher.executors import kubernetes

        return await kubernetes.connect(runtime)
    return None


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
    service.remote = await remote_executor(runtime)
    await service.recover()
    await retire_consumer(runtime.js, NAME)  # one consumer for all, before partitions
    partitions = service.partitions
    durable = consumer_name(NAME, runtime.instance)
    consumer = BatchConsumer(
        runtime.nc,
        durable=durable,
        filter_subjects=[*(subjects.subject_for(e) for e in CONSUMED), subjects.SETTINGS],
        handler=service.on_job_events,
        handled=await partitions.start(),
        track=partitions.track,
        reject=runtime.rejecter(NAME, track=False),
        latest=runtime.latest,
        heard=runtime.heard,
        attempts=runtime.config.poison_attempts,
        trace=runtime.hop_trace(NAME),
        inactive=INACTIVE,
        name=NAME,
    )
    partitions.consumer = consumer
    refresher = asyncio.create_task(partitions.refresh_forever())
    flusher = asyncio.create_task(service.flush_forever())
    try:
        await consumer.run()
    finally:
        flusher.cancel()
        refresher.cancel()
        await partitions.leave()
        for execution in service.running.values():
            if execution.task:
                execution.task.cancel()
        if service.remote:
            await service.remote.close()
