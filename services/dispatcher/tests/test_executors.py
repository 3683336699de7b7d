"""Each executor against stubs: what it makes of a start, how its attempt ends, stops and is
adopted; and which executor the dispatcher picks for a run's kind."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any
from uuid import uuid4

import pytest
from taskengine_contracts.events import JobSubmitted, LogLine, Resources, RunSpec
from taskengine_core.config import KUBERNETES, LOCAL, PROCESS, EngineSettings
from taskengine_core.confinement import Confinement
from taskengine_core.errors import UnknownWorkflow
from taskengine_core.jobs import Job, JobRef, JobState
from taskengine_core.steps import StepEvent
from taskengine_core.submission import job_submitted
from taskengine_dispatcher.dispatcher import Dispatcher
from taskengine_dispatcher.executors import Start, kube_jobs
from taskengine_dispatcher.executors import process as workers
from taskengine_dispatcher.executors.kubernetes import JobAttempt, KubernetesExecutor
from taskengine_dispatcher.executors.local import LocalExecutor
from taskengine_dispatcher.executors.process import ProcessExecutor

NOW = datetime(2030, 1, 1, tzinfo=UTC)


class Sink:
    """What the dispatcher's execution is to an attempt: where its output goes."""

    def __init__(self) -> None:
        self.lines: list[LogLine] = []
        self.steps: list[StepEvent] = []

    def emit(self, line: LogLine) -> None:
        self.lines.append(line)

    def on_step(self, step: StepEvent) -> None:
        self.steps.append(step)


def submitted(
    workflow: str = "echo", run: RunSpec | None = None, **parameters: Any
) -> JobSubmitted:
    return job_submitted(
        7, "acme", NOW, workflow=workflow, parameters=parameters, run=run or RunSpec()
    )


def start(job: JobSubmitted, attempt: int = 1, memory: str | None = None) -> Start:
    ref = JobRef(job.id, job.job_id, job.client, 2, JobState.ADMITTED)
    return Start(ref, attempt, job, memory, timeout=10.0)


def config(**values: Any) -> EngineSettings:
    return EngineSettings(**{"webhook_key": "k" * 32, "workflows_dir": "/srv/workflows", **values})


# --- local -----------------------------------------------------------------------------------


async def test_a_local_attempt_runs_its_steps_and_hands_their_output_to_its_sink():
    sink = Sink()
    attempt = LocalExecutor(Confinement.of(config())).attempt(start(submitted(greeting="hi")), sink)
    assert attempt is not None and attempt.placement.executor == LOCAL and not attempt.reports
    outcome = await attempt.run()
    assert outcome is not None and outcome.status == "succeeded"
    assert any('"greeting": "hi"' in line.text for line in sink.lines)
    assert [step.event for step in sink.steps] == ["start", "complete"]


async def test_a_local_attempt_with_nothing_to_run_is_none_and_a_stopped_one_ends_with_none():
    local = LocalExecutor(Confinement.of(config()))
    assert local.attempt(start(submitted("noop")), Sink()) is None
    attempt = local.attempt(start(submitted("sleep", seconds=30)), Sink())
    assert attempt is not None
    running = asyncio.create_task(attempt.run())
    await asyncio.sleep(0.2)
    attempt.stop()
    assert await asyncio.wait_for(running, 5) is None


async def test_a_local_attempt_cancelled_with_its_dispatcher_is_cancelled():
    attempt = LocalExecutor(Confinement.of(config())).attempt(
        start(submitted("sleep", seconds=30)), Sink()
    )
    assert attempt is not None
    running = asyncio.create_task(attempt.run())
    await asyncio.sleep(0.2)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running


def test_an_unknown_workflow_cannot_start_on_any_executor():
    job = submitted("no-such-workflow", RunSpec(kind="worker"))
    for executor in (LocalExecutor(Confinement.of(config())), ProcessExecutor(config())):
        with pytest.raises(UnknownWorkflow, match="unknown workflow"):
            executor.attempt(start(job), Sink())


# --- process ---------------------------------------------------------------------------------


@pytest.fixture
def command(monkeypatch: pytest.MonkeyPatch) -> Any:
    """The worker command replaced by a shell script (`sh -c SCRIPT`)."""

    def use(script: str) -> None:
        monkeypatch.setattr(workers, "COMMAND", ("sh", "-c", script))

    monkeypatch.setattr(workers, "GRACE", 0.0)
    monkeypatch.setattr(workers, "STOP_GRACE", 0.3)
    return use


async def test_a_worker_that_exits_without_a_final_report_lost_its_attempt(command: Any):
    command("exit 3")
    job = submitted(run=RunSpec(kind="worker", resources=Resources(memory="1Gi")))
    attempt = ProcessExecutor(config()).attempt(start(job, memory="2Gi"), Sink())
    assert attempt.reports and attempt.placement.executor == PROCESS
    assert attempt.placement.memory == "2Gi"
    assert attempt.worker.env["TASKENGINE_JOB_ID"] == "7"
    outcome = await attempt.run()
    assert outcome is not None and (outcome.status, outcome.transient) == ("failed", "lost")
    assert outcome.reason == "lost: the worker exited (code 3) without a final report"


async def test_a_stopped_worker_ends_with_none_and_one_past_its_timeout_is_timed_out(
    command: Any,
):
    command("trap 'exit 0' TERM; sleep 30 & wait")
    executor = ProcessExecutor(config())
    attempt = executor.attempt(start(submitted(run=RunSpec(kind="worker"))), Sink())
    running = asyncio.create_task(attempt.run())
    await asyncio.sleep(0.3)
    attempt.stop()
    assert await asyncio.wait_for(running, 5) is None
    command("trap '' TERM; sleep 30 & wait")
    job = submitted(run=RunSpec(kind="worker"))
    late = executor.attempt(Start(start(job).ref, 1, job, None, timeout=0.2), Sink())
    outcome = await late.run()
    assert outcome is not None and outcome.status == "timed_out"
    await late.after_end()  # killed once its end is recorded
    assert late.worker.process and late.worker.process.returncode is not None


# --- kubernetes ------------------------------------------------------------------------------


def kubernetes(*clusters: str) -> KubernetesExecutor:
    runtime: Any = SimpleNamespace(config=config(kube_namespace="tasks"))
    stubs: Any = [SimpleNamespace(name=name) for name in clusters]
    return KubernetesExecutor(runtime, stubs)


async def test_kubernetes_attempts_take_the_clusters_in_turn_as_jobs_named_after_them():
    executor = kubernetes("east", "west")
    job = submitted(run=RunSpec(kind="worker", secret="acme-s3"))
    first = executor.attempt(start(job, 1, memory="2Gi"), Sink())
    second = executor.attempt(start(job, 2), Sink())
    assert (first.placement.cluster, second.placement.cluster) == ("east", "west")
    assert first.placement.job_name == kube_jobs.job_name(7, 1)
    assert (first.placement.executor, first.placement.memory) == (KUBERNETES, "2Gi")
    assert first.secret == ("acme-s3", "acme") and first.container is None
    assert first.body is not None and kube_jobs.attempt_of(first.body) == (7, 1)
    container = first.body["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"] == {"memory": "2Gi"}


async def test_a_container_runs_as_a_job_of_its_image_with_its_pull_timeout():
    run = RunSpec(kind="container", image="ghcr.io/org/task:2", args=["--fast"])
    attempt = kubernetes("east").attempt(start(submitted("docker", run)), Sink())
    assert attempt.container is not None and attempt.container.image == "ghcr.io/org/task:2"
    assert attempt.placement.memory is None
    assert attempt.body is not None
    assert attempt.body["spec"]["template"]["spec"]["containers"][0]["args"] == ["--fast"]


async def test_kubernetes_adopts_only_the_job_of_an_attempt_still_running_on_its_cluster():
    executor = kubernetes("east")
    job = Job.started(submitted(run=RunSpec(kind="worker")))
    job.state, job.attempt, job.executor = JobState.RUNNING, 2, KUBERNETES
    job.cluster, job.job_name = "east", kube_jobs.job_name(7, 2)
    adopted = executor.adopt(job, 2)
    assert isinstance(adopted, JobAttempt) and adopted.created and adopted.name == "te-7-2"
    assert executor.adopt(job, 1) is None  # an attempt over
    job.cluster = "gone"
    assert executor.adopt(job, 2) is None


# --- choosing --------------------------------------------------------------------------------


def test_the_run_kind_and_the_configured_executor_choose_where_it_runs():
    runtime: Any = SimpleNamespace(config=config(executor=PROCESS))
    dispatcher = Dispatcher(runtime, ProcessExecutor(runtime.config))
    assert dispatcher.executor_for("steps") is dispatcher.local
    assert dispatcher.executor_for("worker") is dispatcher.remote
    local = Dispatcher(SimpleNamespace(config=config()))  # type: ignore[arg-type]
    assert local.executor_for("worker") is local.local


def test_nothing_is_read_back_for_a_job_whose_submission_was_consumed():
    dispatcher = Dispatcher(SimpleNamespace(config=config()))  # type: ignore[arg-type]
    job = submitted()
    dispatcher.submissions.apply(job)
    known, missing = dispatcher.submissions.known([job.id, uuid4()])
    assert list(known) == [job.id] and len(missing) == 1
