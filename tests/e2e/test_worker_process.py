"""The process executor (`TASKENGINE_EXECUTOR=process`) with the system as `make up` starts
it: each attempt of a work task is a `taskengine worker` process reporting to the gateway over
HTTP, as a Kubernetes Job's worker would. Its reports move the task; a worker that vanishes
(killed, or with its dispatcher) loses its attempt, which is retried; a cancelled task's worker
is killed.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import httpx
import pytest
from taskengine_contracts.events import JobExecuting, JobRetryScheduled, JobStarted

from tests.support.system import ADMIN, System, running_system
from tests.support.waiting import wait_until

WORKFLOWS = {
    # The first attempt waits (to be killed); the next one completes. `exec`: a step's own
    # children outlive a worker killed with -9 (PDEATHSIG reaches only its direct child).
    "second-try.yaml": "name: second-try\nsteps:\n  - name: work\n    run: >-\n"
    '      if [ "$TASKENGINE_ATTEMPT" = 1 ]; then exec sleep 600; fi;'
    ' echo "done in attempt $TASKENGINE_ATTEMPT"\n',
    # A shell whose child waits: a stopped worker stops the step's whole process group.
    "waits.yaml": 'name: waits\nsteps:\n  - name: wait\n    run: "sleep 600; echo never"\n',
}
OUTPUT = f"s3://output/{uuid4().hex}/"
BODY = {
    "type": "pipeline_execution",
    "priority": 1,
    "project_id": "proj-123",
    "resource_requirements": {"cpu": "1", "memory": "2Gi", "gpu": False},
    "data_access": {
        "input_datasets": ["dataset-1"],
        "output_location": OUTPUT,
        "storage_credentials": "creds-secret",
    },
}


@pytest.fixture(scope="module")
def system(postgres_url) -> Iterator[System]:
    env = {"TASKENGINE_EXECUTOR": "process"}
    with running_system(postgres_url, "workers", workflows=WORKFLOWS, env=env) as system:
        with system.client() as admin:
            for name, value in (("max_jobs", 10), ("retry_delay", 1), ("retry_max_delay", 1)):
                admin.post("/settings", json={"name": name, "setting": value})
        yield system


@pytest.fixture(scope="module")
def api(system) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {ADMIN[1]}"}
    with httpx.Client(base_url=system.url, headers=headers, timeout=30) as http:
        yield http


def submit(api: httpx.Client, pipeline: str, timeout: float | None = None, **parameters) -> str:  # type: ignore[no-untyped-def]
    spec = {"pipeline_id": pipeline, "parameters": parameters}
    if timeout is not None:
        spec["timeout"] = timeout
    response = api.post("/api/worktasks", json={**BODY, "task_spec": spec})
    assert response.status_code == 201, response.text
    return response.json()["worktask_id"]


def task(api: httpx.Client, worktask_id: str) -> dict:
    response = api.get(f"/api/worktasks/{worktask_id}")
    assert response.status_code == 200, response.text
    return response.json()


def reaches(system: System, api: httpx.Client, worktask_id: str, *statuses: str) -> dict:
    def reached() -> dict | None:
        found = task(api, worktask_id)
        return found if found["status"] in statuses else None

    try:
        return wait_until(reached, timeout=60, what=f"work task {worktask_id}: {statuses}")
    except AssertionError:
        print(system.service_errors())
        raise


def workers(system: System, worktask_id: str) -> list[int]:
    """Processes running as the worker of this task (found by their environment)."""
    return processes(f"TASKENGINE_JOB_ID={worktask_id}", f"TASKENGINE_GATEWAY_URL={system.url}")


def steps(worktask_id: str, attempt: int = 1) -> list[int]:
    """Processes running a step of this task's attempt."""
    return processes(
        f"TASKENGINE_JOB_ID={worktask_id}",
        f"TASKENGINE_ATTEMPT={attempt}",
        f"TASKENGINE_OUTPUT_LOCATION={OUTPUT}",
    )


def processes(*variables: str) -> list[int]:
    """Processes of this test run with all of these variables (other engines' jobs share
    numbers with this one's)."""
    markers = [variable.encode() for variable in variables]
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if all(marker in environ for marker in markers) and state != "Z":
            found.append(int(entry.name))
    return found


def log_messages(system: System, worktask_id: str) -> list[str]:
    with system.client() as engine:  # the Task Engine dialect: client and api-key headers
        response = engine.get(f"/logs/{worktask_id}")
        assert response.status_code == 200, response.text
        return [row["message"] for row in response.json()]


def test_a_work_task_runs_in_a_worker_process_that_reports_it_completed(system, api):
    worktask_id = submit(api, "echo", word="hello-from-a-worker")
    done = reaches(system, api, worktask_id, "completed", "failed")
    assert done["status"] == "completed", json.dumps(done)
    assert done["started_at"] and done["completed_at"] and done["retry_count"] == 0
    assert done["output_location"] == OUTPUT
    assert done["metadata"] == {"exit_code": 0, "steps": 1}
    assert done["error_message"] is None
    printed = wait_until(
        lambda: (lambda m: m if "'echo' completed successfully" in m else None)(
            log_messages(system, worktask_id)
        ),
        what="the worker's output in the job's log",
    )
    assert '{"word": "hello-from-a-worker"}' in printed
    events = system.events(int(worktask_id))
    started = [e for e in events if isinstance(e, JobStarted)]
    assert [(s.executor, s.memory) for s in started] == [("process", "2Gi")]
    executing = [e for e in events if isinstance(e, JobExecuting)]
    assert len(executing) == 1 and executing[0].by == "worker"
    wait_until(lambda: not workers(system, worktask_id), what="the worker to exit")


def test_a_failing_workflow_ends_failed_at_once_a_plain_failure_is_not_retried(system, api):
    worktask_id = submit(api, "fail", exit_code=3, message="no input")
    done = reaches(system, api, worktask_id, "completed", "failed")
    assert done["status"] == "failed", done
    assert done["error_message"] == "step 'fail' exited with 3"
    assert done["retry_count"] == 0 and done["metadata"] == {"exit_code": 3}
    wait_until(lambda: "no input" in log_messages(system, worktask_id), what="its output")
    assert not [e for e in system.events(int(worktask_id)) if isinstance(e, JobRetryScheduled)]


def test_a_step_out_of_time_ends_the_task_in_timeout(system, api):
    worktask_id = submit(api, "sleep", timeout=1, seconds=600)
    done = reaches(system, api, worktask_id, "timeout", "completed", "failed")
    assert done["status"] == "timeout" and done["retry_count"] == 0, done
    wait_until(lambda: not workers(system, worktask_id), what="the worker to exit")


def test_a_killed_worker_loses_its_attempt_and_a_new_worker_completes_the_task(system, api):
    worktask_id = submit(api, "second-try")
    reaches(system, api, worktask_id, "executing")
    (pid,) = wait_until(lambda: workers(system, worktask_id), what="the worker process")
    assert steps(worktask_id)
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not steps(worktask_id), timeout=30, what="its step to die with it")
    done = reaches(system, api, worktask_id, "completed", "failed")
    assert done["status"] == "completed", json.dumps(done)
    assert done["retry_count"] == 1 and done["retry_reason"] == "lost"
    retried = [e for e in system.events(int(worktask_id)) if isinstance(e, JobRetryScheduled)]
    assert [r.transient for r in retried] == ["lost"]
    assert "without a final report" in retried[0].reason
    messages = wait_until(
        lambda: (lambda m: m if "done in attempt 2" in m else None)(
            log_messages(system, worktask_id)
        ),
        what="the second attempt's output",
    )
    assert "done in attempt 1" not in messages


def test_breaking_a_task_in_the_task_engine_dialect_stops_its_worker_and_steps(system, api):
    worktask_id = submit(api, "waits")
    reaches(system, api, worktask_id, "executing")
    wait_until(lambda: workers(system, worktask_id), what="the worker process")
    with system.client() as engine:
        response = engine.patch(f"/jobs/{worktask_id}", json={"queue_state": "broken"})
        assert response.status_code == 200, response.text
    wait_until(lambda: not workers(system, worktask_id), timeout=45, what="the worker to stop")
    wait_until(lambda: not steps(worktask_id), timeout=30, what="its steps to stop")
    assert task(api, worktask_id)["status"] == "cancelled"
    assert "never" not in log_messages(system, worktask_id)


def test_a_worker_that_reports_cancelled_stops_and_so_do_its_steps(system, api):
    worktask_id = submit(api, "sleep", seconds=600)
    reaches(system, api, worktask_id, "executing")
    wait_until(lambda: workers(system, worktask_id), what="the worker process")
    body = {"worktask_id": worktask_id, "status": "cancelled"}
    assert api.post(f"/api/worktasks/{worktask_id}", json=body).json() == {"status": "updated"}
    wait_until(lambda: not workers(system, worktask_id), timeout=45, what="the worker to be killed")
    assert task(api, worktask_id)["status"] == "cancelled"


def test_workers_of_a_dispatcher_killed_with_9_die_with_it_and_their_attempts_are_retried(
    system, api
):
    worktask_id = submit(api, "second-try")
    reaches(system, api, worktask_id, "executing")
    (pid,) = wait_until(lambda: workers(system, worktask_id), what="the worker process")
    assert steps(worktask_id)
    system.wait_restarted("dispatcher", system.kill("dispatcher"))
    wait_until(lambda: pid not in workers(system, worktask_id), what="the worker to die with it")
    wait_until(lambda: not steps(worktask_id), timeout=30, what="its step to die with it")
    done = reaches(system, api, worktask_id, "completed", "failed")
    assert done["status"] == "completed" and done["retry_count"] == 1, done
    assert done["retry_reason"] == "lost"


def test_jobs_of_other_dialects_run_their_steps_in_the_dispatcher(system, api):
    """Only work tasks speak the worker protocol: a Task Engine job and a scheduled task's run
    succeed on the process executor too, started as local attempts."""
    with system.client() as engine:
        submitted = engine.post("/job", json={"job": {"workflow": "echo"}, "parameters": {}})
        job_id = submitted.json()["id"]
        wait_until(
            lambda: engine.get(f"/jobs/{job_id}").json()["queue_state"] == "completed",
            what=f"job {job_id} to complete",
        )
        assert engine.get(f"/jobs/{job_id}").json()["failed"] is False
    started = [e for e in system.events(job_id) if isinstance(e, JobStarted)]
    assert [e.executor for e in started] == ["local"]
