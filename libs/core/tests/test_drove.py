"""Drove container tasks in the core: durations, the CREATE and KILL checks, what a task's job
is submitted with, when it may start, its steps' env, and the one state mapping."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from taskengine_contracts.events import (
    JobAdmitted,
    JobBroken,
    JobCancelled,
    JobEvent,
    JobExecuting,
    JobFailed,
    JobPaused,
    JobStarted,
    JobSucceeded,
    JobTimedOut,
    RetryPolicy,
    RunSpec,
)
from taskengine_core.dialects.drove.status import ENDED, NOT_STARTED, TaskState, task_status
from taskengine_core.dialects.drove.submission import DOCKER as DOCKER_WORKFLOW
from taskengine_core.dialects.drove.submission import (
    InvalidTask,
    check_host_paths,
    create_operation,
    kill_operation,
    parse_duration,
)
from taskengine_core.jobs import Job, JobState, advance
from taskengine_core.startable import NotStartable
from taskengine_core.startable import check_startable as check_run

NOW = datetime(2030, 1, 1, tzinfo=UTC)


def operation(**spec_fields: Any) -> dict[str, Any]:
    spec = {
        "sourceAppName": "TEST_APP",
        "taskId": "T0012",
        "executable": {"type": "WORKFLOW", "name": "sleep", "parameters": {"seconds": 1}},
        "resources": [{"type": "MEMORY", "sizeInMB": 128}, {"type": "CPU", "count": 1}],
        "env": {"ITERATIONS": "10"},
        **spec_fields,
    }
    return {"type": "CREATE", "spec": spec, "opSpec": {"timeout": "5m"}}


DOCKER = {
    "type": "DOCKER",
    "url": "ghcr.io/appform-io/test-task",
    "dockerPullTimeout": "100 seconds",
}


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("5m", 300),
        ("100 seconds", 100),
        ("1h", 3600),
        ("30s", 30),
        ("2 minutes", 120),
        ("5 mins", 300),
        ("1 day", 86400),
        ("250ms", 0.25),
        (" 10 SECONDS ", 10),
    ],
)
def test_drove_durations(text: str, seconds: float) -> None:
    assert parse_duration(text, "t") == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text", ["", "5", "five minutes", "5 fortnights", "-5m", 300, None, "5.5m"]
)
def test_what_is_not_a_duration(text: object) -> None:
    with pytest.raises(InvalidTask, match="must be a duration"):
        parse_duration(text, "opSpec.timeout")


def test_a_workflow_create_becomes_a_drove_job_that_runs_once() -> None:
    submission = create_operation(operation())
    event = submission.submitted(7, "acme", NOW)
    assert (event.job_id, event.client, event.dialect) == (7, "acme", "drove")
    assert (event.workflow, event.parameters, event.state) == ("sleep", {"seconds": 1}, "queued")
    assert event.run.retry == RetryPolicy(max_retries=0)
    assert event.run.timeout == 300.0  # opSpec "5m": the attempt's deadline
    attributes = event.attributes
    assert attributes["resources"] == [
        {"type": "CPU", "count": 1},
        {"type": "MEMORY", "sizeInMB": 128},
    ]
    assert attributes["opSpec"] == {"timeout": "5m", "parallelism": 1, "failureStrategy": "STOP"}
    assert attributes["placementPolicy"] == {"type": "ANY"}
    assert attributes["env"] == {"ITERATIONS": "10"}
    assert str(attributes["instanceId"]).startswith("TI-")
    assert submission.submitted(8, "acme", NOW).attributes["instanceId"] != attributes["instanceId"]


def test_a_docker_create_is_the_kubernetes_executors_hook() -> None:
    submission = create_operation(operation(executable=DOCKER, args=["--fast"]))
    assert submission.workflow == DOCKER_WORKFLOW
    assert submission.parameters == {
        "image": "ghcr.io/appform-io/test-task",
        "args": ["--fast"],
        "env": {"ITERATIONS": "10"},
    }


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"executable": {"type": "WORKFLOW", "name": "inline"}}, "not allowed"),
        ({"executable": {"type": "WORKFLOW", "name": "no-such-flow"}}, "unknown workflow"),
        ({"executable": {"type": "SHELL"}}, "DOCKER or WORKFLOW"),
        ({"env": {"PATH": "/tmp"}}, "reserved"),
        ({"env": {"LD_PRELOAD": "x"}}, "reserved"),
        ({"env": {"PYTHONPATH": "x"}}, "reserved"),
        ({"env": {"TASKENGINE_PARAMETERS": "{}"}}, "reserved"),
        ({"env": {"my-var": "x"}}, "not a name"),
        ({"env": {"A": 1}}, "string"),
        ({"args": ["x"]}, "DOCKER executables only"),
        ({"resources": [{"type": "CPU", "count": 1}, {"type": "CPU", "count": 2}]}, "twice"),
        ({"resources": [{"type": "MEMORY", "sizeInMB": 0}]}, "sizeInMB"),
        ({"taskId": "../x"}, "taskId"),
        ({"logging": "LOCAL"}, "logging must be an object"),
        ({"configs": [{"type": "INLINE", "localFilename": "x"}]}, "absolute path"),
        ({"volumes": [{"pathInContainer": "/a", "pathOnHost": "/b", "mode": "RW"}]}, "mode"),
    ],
)
def test_creates_that_do_not_validate(fields: dict[str, Any], problem: str) -> None:
    with pytest.raises(InvalidTask, match=problem):
        create_operation(operation(**fields))


def test_docker_volumes_and_configs_are_checked_and_kept() -> None:
    volume = {"pathInContainer": "/data", "pathOnHost": "/mnt/datavol", "mode": "READ_WRITE"}
    config = {"type": "INLINE", "localFilename": "/testfiles/drove.txt", "data": "RHJvdmU="}
    submission = create_operation(operation(executable=DOCKER, volumes=[volume], configs=[config]))
    assert submission.attributes["volumes"] == [volume]
    assert submission.attributes["configs"] == [config]


def test_a_kill_names_its_task() -> None:
    kill = {"type": "KILL", "sourceAppName": "TEST_APP", "taskId": "T0012", "opSpec": None}
    assert kill_operation(kill) == ("TEST_APP", "T0012")
    with pytest.raises(InvalidTask, match="parallelism"):
        kill_operation({**kill, "opSpec": {"parallelism": 33}})
    with pytest.raises(InvalidTask, match="unknown field"):
        kill_operation({**kill, "now": True})


def test_a_task_starts_only_within_its_op_timeout_and_docker_only_on_kubernetes() -> None:
    event = create_operation(operation()).submitted(1, "acme", NOW)
    check_startable(event, "local", NOW + timedelta(minutes=5))
    with pytest.raises(NotStartable, match=r"did not start within its opSpec.timeout \(5m\)"):
        check_startable(event, "local", NOW + timedelta(minutes=5, seconds=1))
    docker = create_operation(operation(executable=DOCKER)).submitted(2, "acme", NOW)
    with pytest.raises(NotStartable, match="TASKENGINE_EXECUTOR=kubernetes"):
        check_startable(docker, "local", NOW)
    check_startable(docker, "kubernetes", NOW)


def test_docker_volumes_mount_only_the_clients_own_host_paths_read_only() -> None:
    def volume(path: str, mode: str = "READ_ONLY") -> dict[str, Any]:
        return {"pathInContainer": "/data", "pathOnHost": path, "mode": mode}

    allowed = ("/mnt/shared", "/srv/")
    own = [volume("/mnt/shared/acme"), volume("/srv/acme/a/b"), volume("/srv/acme/x/")]
    check_host_paths(own, allowed, "acme")
    refused = (
        "/mnt/sharedx/acme",
        "/mnt/shared",  # every client's
        "/mnt/shared/acmex",
        "/mnt/shared/other/acme",
        "/mnt/shared/acme/../other",
        "/mnt/shared/acme/./x",
        "/mnt/shared//acme",
        "/mnt/shared/./acme",
        "mnt/shared/acme",
        "/",
        "/etc",
    )
    for path in refused:
        with pytest.raises(InvalidTask, match="is not a host path this engine mounts for this"):
            check_host_paths([volume(path)], allowed, "acme")
    for client in ("..", ".", "a/b", ""):
        with pytest.raises(InvalidTask, match="is not a host path"):
            check_host_paths([volume(f"/mnt/shared/{client}/x")], allowed, client)
    with pytest.raises(InvalidTask, match="mode must be READ_ONLY"):
        check_host_paths([volume("/mnt/shared/acme", "READ_WRITE")], allowed, "acme")
    with pytest.raises(InvalidTask, match="none: set TASKENGINE_KUBE_HOST_PATHS"):
        check_host_paths([volume("/mnt/shared/acme")], (), "acme")
    check_host_paths([], (), "acme")


def test_a_docker_task_starts_on_kubernetes_only_with_allowed_volumes_and_no_configs() -> None:
    volume = {"pathInContainer": "/data", "pathOnHost": "/mnt/acme/vol", "mode": "READ_ONLY"}
    docker = create_operation(operation(executable=DOCKER, volumes=[volume]))
    event = docker.submitted(3, "acme", NOW)
    assert (event.run.kind, event.run.image) == ("container", DOCKER["url"])
    check_startable(event, "kubernetes", NOW, ("/mnt",))
    with pytest.raises(NotStartable, match="not a host path"):  # another client's
        check_startable(_replace(event, client="other"), "kubernetes", NOW, ("/mnt",))
    with pytest.raises(NotStartable, match="not a host path"):  # narrowed since CREATE
        check_startable(event, "kubernetes", NOW, ("/srv",))
    config = {"type": "INLINE", "localFilename": "/etc/x", "data": "eA=="}
    configured = create_operation(operation(executable=DOCKER, configs=[config]))
    with pytest.raises(NotStartable, match="spec.configs"):
        check_startable(configured.submitted(4, "acme", NOW), "kubernetes", NOW)


def test_only_a_drove_tasks_checked_env_reaches_its_steps() -> None:
    event = create_operation(operation()).submitted(1, "acme", NOW)
    assert event.run.env == {"ITERATIONS": "10"}
    smuggled = {**event.attributes, "env": {"PATH": "/tmp", "OK": "1", "N": 2}}
    assert _replace(event, attributes=smuggled).run.env == {"ITERATIONS": "10"}
    with pytest.raises(InvalidTask, match="reserved"):
        create_operation(operation(env={"PATH": "/tmp"}))
    other = _replace(event, dialect="taskengine", parameters={"env": {"A": "1"}}, run=RunSpec())
    assert other.run.env == {}
    check_startable(_replace(other, at=NOW - timedelta(days=30)), "local", NOW)


def check_startable(event: Any, executor: str, now: datetime, paths: tuple[str, ...] = ()) -> None:
    """What the dispatcher checks of the task's run before it starts it."""
    check_run(event.run, event.client, event.at, executor, now, paths)


# --- the state mapping ------------------------------------------------------------------------


def _replace(event: Any, **fields: Any) -> Any:
    import msgspec

    return msgspec.structs.replace(event, **fields)


def job_after(*steps: tuple[type[JobEvent], dict[str, Any]]) -> Job:
    submitted = create_operation(operation()).submitted(1, "acme", NOW)
    job = Job.fold([submitted])
    assert job is not None
    for event_type, fields in steps:
        job.apply(advance(job.ref, event_type, at=NOW, **fields))
    return job


ADMITTED = (
    JobAdmitted,
    {"workflow": "sleep", "priority": 5, "attempt": 1, "running": 1, "max_jobs": 2},
)
STARTED = (JobStarted, {"workflow": "sleep", "attempt": 1, "executor": "local"})
REMOTE = (JobStarted, {"workflow": "sleep", "attempt": 1, "executor": "process"})
ENDS = {"workflow": "sleep", "attempt": 1}


@pytest.mark.parametrize(
    ("steps", "state", "result"),
    [
        ((), TaskState.PENDING, None),
        (((JobPaused, {"by": "x"}),), TaskState.PENDING, None),
        ((ADMITTED,), TaskState.PROVISIONING, None),
        ((ADMITTED, STARTED), TaskState.RUNNING, None),
        ((ADMITTED, REMOTE), TaskState.STARTING, None),
        ((ADMITTED, REMOTE, (JobExecuting, {"attempt": 1, "by": "w"})), TaskState.RUNNING, None),
        (
            (ADMITTED, STARTED, (JobSucceeded, ENDS)),
            TaskState.STOPPED,
            {"status": "SUCCESSFUL", "exitCode": 0},
        ),
        (
            (
                ADMITTED,
                STARTED,
                (
                    JobFailed,
                    {**ENDS, "reason": "step exited with 3", "failure": "other", "exit_code": 3},
                ),
            ),
            TaskState.STOPPED,
            {"status": "FAILED", "exitCode": 3},
        ),
        (
            (ADMITTED, STARTED, (JobTimedOut, {**ENDS, "timeout": 5.0})),
            TaskState.STOPPED,
            {"status": "TIMED_OUT", "exitCode": -1},
        ),
        (
            (ADMITTED, STARTED, (JobCancelled, {"reason": "KILL", "by": "acme"})),
            TaskState.STOPPED,
            {"status": "CANCELLED", "exitCode": -1},
        ),
        (
            ((JobCancelled, {"reason": "KILL", "by": "acme"}),),
            TaskState.STOPPED,
            {"status": "CANCELLED", "exitCode": -1},
        ),
        (
            ((JobBroken, {"reason": "x", "by": "acme"}),),
            TaskState.STOPPED,
            {"status": "CANCELLED", "exitCode": -1},
        ),
        (
            (
                ADMITTED,
                (
                    JobFailed,
                    {**ENDS, "reason": "DOCKER executables need ...", "failure": "unstartable"},
                ),
            ),
            TaskState.PROVISIONING_FAILED,
            None,
        ),
        (
            (
                ADMITTED,
                REMOTE,
                (
                    JobFailed,
                    {
                        **ENDS,
                        "reason": "provisioning failed: the image was not pulled",
                        "failure": "unstartable",
                    },
                ),
            ),
            TaskState.PROVISIONING_FAILED,
            None,
        ),
        (
            (
                ADMITTED,
                STARTED,
                (JobFailed, {**ENDS, "reason": "lost: the dispatcher stopped", "failure": "lost"}),
            ),
            TaskState.LOST,
            {"status": "LOST", "exitCode": -1},
        ),
    ],
)
def test_the_state_mapping(steps: tuple, state: TaskState, result: dict | None) -> None:
    status = task_status(job_after(*steps))
    assert (status.state, status.result) == (state, result)


def test_every_job_state_maps_to_a_drove_state() -> None:
    mapped = set(NOT_STARTED) | set(ENDED) | {JobState.RUNNING}
    assert mapped == set(JobState)


def test_the_error_message_is_the_jobs_failure() -> None:
    job = job_after(
        ADMITTED, (JobFailed, {**ENDS, "reason": "provisioning timed out: ...", "failure": "other"})
    )
    assert task_status(job).error_message == "provisioning timed out: ..."
    assert task_status(job_after(ADMITTED)).error_message == ""


def test_lost_and_unprovisioned_come_from_the_failure_kind_not_the_words() -> None:
    worded = {**ENDS, "reason": "lost: provisioning failed: words only", "failure": "other"}
    job = job_after(ADMITTED, STARTED, (JobFailed, worded))
    assert task_status(job).state == TaskState.STOPPED
    lost = job_after(ADMITTED, STARTED, (JobFailed, {**ENDS, "reason": "x", "failure": "lost"}))
    assert task_status(lost).state == TaskState.LOST
    unprovisioned = {**ENDS, "reason": "x", "failure": "unstartable"}
    job = job_after(ADMITTED, STARTED, (JobFailed, unprovisioned))
    assert task_status(job).state == TaskState.PROVISIONING_FAILED
