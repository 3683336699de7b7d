"""The dispatcher: runs admitted jobs and records what happened.

Starts are committed per consumed batch (with the tracking record and an execution row per
running attempt). Output lines and outcomes are gathered and committed together every
`FLUSH` seconds, so a burst of short jobs costs a handful of transactions, not one each.
An attempt that was running when its dispatcher died is found by its execution row on restart
and retried (or failed when out of attempts).
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
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
    JobRetryScheduled,
    JobStarted,
    JobSubmitted,
    JobSucceeded,
    JobTimedOut,
    LogLine,
    RetryPolicy,
    StepChanged,
)
from taskengine_core.errors import DomainError
from taskengine_core.ids import execution_stream
from taskengine_core.jobs import JobRef, JobState, advance
from taskengine_core.settings import RuntimeSettings
from taskengine_core.tasks import backoff_delay
from taskengine_core.workflows import workflow
from taskengine_store.store import Conflict, Statement

from taskengine_dispatcher.local import Outcome, StepEvent, run_steps

log = logging.getLogger(__name__)

NAME = "dispatcher"
EXECUTOR = "local"
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


@dataclass
class Execution:
    """One running attempt and what it has printed but not yet stored."""

    ref: JobRef
    workflow: str
    priority: int
    attempt: int
    callbacks: list[str]
    custom_data: object = None
    retry: RetryPolicy | None = None
    concurrency_key: str | None = None
    log_version: int = 0
    lines: list[LogLine] = field(default_factory=list)
    steps: list[StepEvent] = field(default_factory=list)
    outcome: Outcome | None = None
    task: asyncio.Task | None = None
    cancelled: bool = False

    def emit(self, line: LogLine) -> None:
        """Where the executor sends output: the lines not yet stored (flush swaps the list)."""
        self.lines.append(line)

    def on_step(self, step: StepEvent) -> None:
        self.steps.append(step)


class Dispatcher:
    def __init__(self, runtime: Runtime):
        self.runtime = runtime
        self.running: dict[UUID, Execution] = {}
        self.wake = asyncio.Event()

    # --- starting --------------------------------------------------------------------------

    async def on_job_events(self, batch: list[Delivered]) -> bool:
        admitted = [d.event for d in batch if isinstance(d.event, JobAdmitted)]
        for item in batch:
            if isinstance(item.event, (JobCancelled, JobBroken)):
                self._cancel(item.event)
            self.runtime.apply(item.event)
        if not admitted:
            return False
        specs = await self.runtime.call(
            self.runtime.store.streams, [e.id for e in admitted], version=1
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
            ref = JobRef.of(event)
            try:
                steps = workflow(spec.workflow).steps(spec.parameters, event.attempt)
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
                executor=EXECUTOR,
                callbacks=spec.callbacks,
            )
            events.append(started)
            custom_data = spec.parameters.get("custom_data")
            if not steps:  # nothing to run: the attempt is over as soon as it starts
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
                spec.retry,
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
            env = {
                "TASKENGINE_JOB_ID": str(ref.job_id),
                "TASKENGINE_ATTEMPT": str(event.attempt),
                "TASKENGINE_PARAMETERS": json.dumps(spec.parameters),
            }
            launches.append((execution, steps, env, spec.timeout or DEFAULT_TIMEOUT))
        return events, rows, launches

    async def _run(self, execution: Execution, steps, env, timeout) -> None:  # type: ignore[no-untyped-def]
        try:
            execution.outcome = await run_steps(
                steps, env, timeout, execution.emit, execution.on_step
            )
        except asyncio.CancelledError:
            execution.outcome = Outcome("failed", "cancelled")
            raise
        except Exception as error:  # an executor bug must still end the attempt
            log.exception("job %s: executor error", execution.ref.job_id)
            execution.outcome = Outcome("failed", f"executor error: {error}")
        finally:
            self.wake.set()

    def _cancel(self, event: JobCancelled | JobBroken) -> None:
        execution = self.running.get(event.id)
        if execution and execution.task:
            execution.cancelled = True
            execution.task.cancel()

    # --- recording ---------------------------------------------------------------------------

    async def flush_forever(self) -> None:
        delay = FLUSH
        while True:
            if not self.running:
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
            execution.retry,
            execution.concurrency_key,
        )  # type: ignore[arg-type]

    # --- recovery --------------------------------------------------------------------------

    async def recover(self) -> None:
        """Ends attempts this instance was running when it last died: retry or fail them."""
        rows = await self.runtime.call(
            self.runtime.store.query,
            "SELECT * FROM dispatcher_executions WHERE instance = %s",
            (self.runtime.instance,),
        )
        if not rows:
            return
        lost = Outcome("failed", "lost: the dispatcher running it stopped")
        specs = await self.runtime.call(
            self.runtime.store.streams, [row["job_uuid"] for row in rows], version=1
        )
        events: list[Event] = []
        for row in rows:
            spec = specs[row["job_uuid"]][0]
            assert isinstance(spec, JobSubmitted), f"job {row['job_id']} has no submission"
            ref = JobRef(
                row["job_uuid"], row["job_id"], row["client"], row["version"], JobState.RUNNING
            )
            events.append(
                ended(
                    ref,
                    row["workflow"],
                    row["priority"],
                    row["attempt"],
                    row["callbacks"],
                    lost,
                    self.runtime.settings,
                    row["custom_data"],
                    spec.retry,
                    spec.concurrency_key,
                )
            )
        deletes = [(_DELETE_EXECUTION, (row["job_uuid"],)) for row in rows]
        await self.runtime.call(self.runtime.store.commit_unmoved, events, deletes)
        log.warning("dispatcher: %d attempt(s) lost in a restart were ended", len(rows))


def ended(
    ref: JobRef,
    workflow_name: str,
    priority: int,
    attempt: int,
    callbacks: list[str],
    outcome: Outcome,
    settings: RuntimeSettings,
    custom_data: object = None,
    retry: RetryPolicy | None = None,
    concurrency_key: str | None = None,
) -> JobEvent:
    """The event ending an attempt: success, timeout, a retry while attempts remain, or failure.

    A job with its own retry policy is retried up to `retry.max_retries` times, after a delay
    from its backoff strategy; others up to the `retry_limit` setting after `retry_delay`."""
    common = {"workflow": workflow_name, "attempt": attempt}
    final = {"callbacks": callbacks, "custom_data": custom_data}
    if outcome.status == "succeeded":
        return advance(ref, JobSucceeded, **final, **common)
    if outcome.status == "timed_out":
        return advance(ref, JobTimedOut, timeout=outcome.timeout, **final, **common)
    limit = settings.retry_limit if retry is None else retry.max_retries
    if attempt <= limit:
        delay = backoff_delay(
            "fixed" if retry is None else retry.backoff,
            attempt,
            base=settings.retry_delay,
            cap=max(settings.retry_delay, settings.int("retry_max_delay")),
        )
        return advance(
            ref,
            JobRetryScheduled,
            priority=priority,
            retry_at=datetime.now(UTC) + timedelta(seconds=delay),
            reason=outcome.reason,
            exit_code=outcome.exit_code,
            concurrency_key=concurrency_key,
            **common,
        )
    return advance(
        ref,
        JobFailed,
        reason=outcome.reason,
        exit_code=outcome.exit_code,
        **final,
        **common,
    )


async def dispatcher(runtime: Runtime) -> None:
    service = Dispatcher(runtime)
    runtime.working = lambda: len(service.running)
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
    )
    flusher = asyncio.create_task(service.flush_forever())
    try:
        await consumer.run()
    finally:
        flusher.cancel()
        for execution in service.running.values():
            if execution.task:
                execution.task.cancel()
