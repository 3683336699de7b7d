"""The dispatcher runs real subprocesses: output, exit codes, timeouts, retries, recovery."""

from __future__ import annotations

import asyncio

from taskengine_contracts.events import (
    ExecutionLogged,
    JobAdmitted,
    JobEvent,
    JobExecuting,
    JobFailed,
    JobRetryScheduled,
    JobStarted,
    JobSubmitted,
    JobSucceeded,
    JobTimedOut,
    StepChanged,
)
from taskengine_core.config import EngineSettings
from taskengine_core.jobs import JobRef, advance
from taskengine_dispatcher.dispatcher import Dispatcher
from taskengine_runtime import Delivered, Runtime

from tests.support.factories import settings, submitted
from tests.support.lost_answer import answer_lost_once
from tests.support.system import WEBHOOK_KEY, wait_events


def admit(job, attempt: int = 1) -> JobAdmitted:  # type: ignore[no-untyped-def]
    return advance(
        JobRef.of(job),
        JobAdmitted,
        workflow=job.workflow,
        priority=job.priority,
        attempt=attempt,
        running=1,
        max_jobs=10,
    )


def job_events(events, job_id: int) -> list:  # type: ignore[no-untyped-def]
    return [e for e in events if getattr(e, "job_id", None) == job_id]


def ended(events, job) -> bool:  # type: ignore[no-untyped-def]
    return any(
        isinstance(e, (JobSucceeded, JobFailed, JobTimedOut, JobRetryScheduled))
        for e in job_events(events, job.job_id)
    )


def test_runs_steps_records_output_and_outcomes(services):
    settings(services.store, retry_limit=0)
    echo = submitted("echo", parameters={"word": "hello-from-echo"})
    fail = submitted("fail", parameters={"exit_code": 7})
    slow = submitted("sleep", parameters={"seconds": 30, "timeout": 1}, timeout=1.0)
    jobs = [echo, fail, slow]
    services.store.commit(jobs)
    services.store.commit([admit(j) for j in jobs])
    services.start("relay", "dispatcher")

    events = wait_events(services, lambda es: all(ended(es, j) for j in jobs), what="all ended")
    lines = [
        line.text
        for e in job_events(events, echo.job_id)
        if isinstance(e, ExecutionLogged)
        for line in e.lines
    ]
    assert any("hello-from-echo" in text for text in lines), lines
    assert isinstance(job_events(events, echo.job_id)[-1], JobSucceeded)
    failed = job_events(events, fail.job_id)[-1]
    assert isinstance(failed, JobFailed) and failed.exit_code == 7
    timed_out = [e for e in job_events(events, slow.job_id) if isinstance(e, JobEvent)][-1]
    assert isinstance(timed_out, JobTimedOut) and timed_out.timeout == 1.0
    started = [e for e in events if isinstance(e, JobStarted)]
    assert len(started) == 3 and all(s.executor == "local" for s in started)

    def steps(job) -> list[tuple]:  # type: ignore[no-untyped-def]
        return [
            (e.step, e.name, e.event, e.exit_code)
            for e in job_events(events, job.job_id)
            if isinstance(e, StepChanged)
        ]

    assert steps(echo) == [(1, "echo", "start", None), (1, "echo", "complete", 0)]
    assert steps(fail) == [(1, "fail", "start", None), (1, "fail", "fail", 7)]
    assert steps(slow) == [(1, "sleep", "start", None), (1, "sleep", "fail", None)]


def test_a_workers_run_on_the_local_executor_is_recorded_executing_once_its_steps_run(services):
    """No worker reports for it, so the dispatcher says it, once, between start and end; a
    plain steps job has no such event (nothing waits on a report for it)."""
    worker = submitted("echo", parameters={"word": "w"}, kind="worker")
    steps = submitted("echo", parameters={"word": "s"})
    services.store.commit([worker, steps])
    services.store.commit([admit(worker), admit(steps)])
    services.start("relay", "dispatcher")

    events = wait_events(services, lambda es: ended(es, worker) and ended(es, steps), what="ends")
    kinds = [type(e) for e in job_events(events, worker.job_id) if isinstance(e, JobEvent)]
    assert kinds[-3:] == [JobStarted, JobExecuting, JobSucceeded]
    assert JobExecuting not in [type(e) for e in job_events(events, steps.job_id)]
    versions = [e.version for e in job_events(events, worker.job_id) if isinstance(e, JobEvent)]
    assert versions == list(range(1, len(versions) + 1))


def test_a_job_that_names_no_deadline_is_timed_out_after_the_attempt_timeout_setting(services):
    services.env["TASKENGINE_ATTEMPT_TIMEOUT"] = "1.5"
    settings(services.store, retry_limit=0)
    slow = submitted("sleep", parameters={"seconds": 60})
    services.store.commit([slow])
    services.store.commit([admit(slow)])
    services.start("relay", "dispatcher")

    events = wait_events(services, lambda es: ended(es, slow), what="the attempt to end")
    timed_out = [e for e in job_events(events, slow.job_id) if isinstance(e, JobEvent)][-1]
    assert isinstance(timed_out, JobTimedOut) and timed_out.timeout == 1.5


def test_the_job_end_echoes_custom_data_also_when_its_attempt_was_lost(services):
    settings(services.store, retry_limit=0)
    job = submitted("sleep", parameters={"seconds": 30, "custom_data": {"ref": "x-1"}})
    services.store.commit([job])
    services.store.commit([admit(job)])
    services.start("relay", "dispatcher")
    wait_events(services, lambda es: any(isinstance(e, JobStarted) for e in es), what="start")
    services.kill("dispatcher")
    services.start("dispatcher")

    events = wait_events(services, lambda es: ended(es, job), what="the lost attempt to end")
    failed = job_events(events, job.job_id)[-1]
    assert isinstance(failed, JobFailed) and failed.custom_data == {"ref": "x-1"}


def test_an_attempt_lost_with_its_dispatcher_is_retried_after_restart(services):
    settings(services.store, retry_limit=2, retry_delay=0)
    job = submitted("sleep", parameters={"seconds": 30})
    services.store.commit([job])
    services.store.commit([admit(job)])
    services.start("relay", "dispatcher")
    wait_events(services, lambda es: any(isinstance(e, JobStarted) for e in es), what="start")
    services.kill("dispatcher")
    services.start("dispatcher")

    events = wait_events(services, lambda es: ended(es, job), what="the lost attempt to end")
    retry = [e for e in job_events(events, job.job_id) if isinstance(e, JobRetryScheduled)]
    assert len(retry) == 1 and retry[0].reason.startswith("lost")


async def test_an_attempt_started_by_a_commit_whose_answer_was_lost_still_runs(services):
    """The retried commit finds the start already stored and reports the job as moved; the
    dispatcher must still run what it started, or the job stays running until a restart."""
    store = services.store
    job = submitted("echo", parameters={"word": "in-doubt"})
    store.commit([job])
    admitted = admit(job)
    [position] = store.commit([admitted])
    config = EngineSettings(
        webhook_key=WEBHOOK_KEY, data_dir=services.data_dir, instance="dispatcher-in-doubt"
    )
    dispatcher = Dispatcher(Runtime("dispatcher", config, store, None, None))  # type: ignore[arg-type]
    await dispatcher.partitions.refresh()  # alone: it holds every partition
    dispatcher.submissions.apply(job)  # consumed: its first store call is the commit of the start
    flusher = asyncio.create_task(dispatcher.flush_forever())
    try:
        with answer_lost_once(store) as lost:
            assert await dispatcher.on_job_events([Delivered(position, admitted, None)])
        assert lost, "the commit's answer was not lost: the test tested nothing"

        def over() -> bool:
            return ended(services.events(job.job_id), job)

        for _ in range(200):
            if await asyncio.to_thread(over):
                break
            await asyncio.sleep(0.05)
    finally:
        flusher.cancel()
    kinds = [type(e) for e in services.events(job.job_id) if isinstance(e, JobEvent)]
    assert kinds == [JobSubmitted, JobAdmitted, JobStarted, JobSucceeded], kinds
