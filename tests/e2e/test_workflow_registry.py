"""Operators' workflows in `<data dir>/workflows`, with the system as `make up` starts it: a
registered one is submitted by name and runs; an unknown one is refused with nothing stored."""

from __future__ import annotations

import subprocess

import httpx
import pytest

from tests.support.system import ADMIN, BIN, running_system
from tests.support.waiting import wait_until

CLIENT = ADMIN[0]
AUTH = {"client": ADMIN[0], "api-key": ADMIN[1]}

PIPE_456 = """\
name: pipe-456
image: ghcr.io/example/pipeline:1.2   # what a Kubernetes Job runs; default TASKENGINE_WORKER_IMAGE
steps:
  - name: extract
    run: ["python3", "-c", "print('extracting')"]
    timeout: 60          # seconds
    env: {MODE: fast}
"""
BROKEN = "name: broken\nsteps: []\n"


@pytest.fixture(scope="module")
def system(postgres_url):
    files = {"pipe-456.yaml": PIPE_456, "broken.yaml": BROKEN}
    with running_system(postgres_url, "workflows", workflows=files) as engine:
        yield engine


def completed(http: httpx.Client, workflow: str) -> dict:
    response = http.post("/job", json={"client": CLIENT, "job": {"workflow": workflow}})
    assert response.status_code == 200, response.text
    number = response.json()["id"]

    def done() -> dict | None:
        job = http.get(f"/jobs/{number}").json()
        return job if job["queue_state"] == "completed" else None

    return wait_until(done, what=f"job {number} ({workflow}) to complete")


def test_a_registered_workflow_is_submitted_by_name_and_runs_its_steps(system):
    with system.client() as http:
        job = completed(http, "pipe-456")
        assert job["workflow"] == "pipe-456" and job["failed"] is False

        def printed() -> list[str] | None:
            rows = http.get(f"/logs/{job['id']}", headers={"Accept": "application/json"}).json()
            messages = [row["message"] for row in rows]
            return messages if "extracting" in messages else None

        wait_until(printed, what="the step's output in the job's log")


@pytest.mark.parametrize("workflow", ["pipe-457", "broken"])
def test_an_unknown_workflow_is_a_400_in_the_seed_shape_and_nothing_is_stored(system, workflow):
    before = system.store.max_position()
    response = httpx.post(
        system.url + "/job", json={"client": CLIENT, "job": {"workflow": workflow}}, headers=AUTH
    )
    assert response.status_code == 400, response.text
    assert response.json().keys() == {"id", "error"}
    assert f"unknown workflow {workflow!r}" in response.json()["error"]
    assert system.store.max_position() == before


def test_a_malformed_file_is_logged_with_its_path_and_line_by_each_service(system):
    where = f"{system.data_dir / 'workflows' / 'broken.yaml'}:2: steps must be a list"
    for service in ("gateway", "dispatcher"):
        log = system.data_dir / "logs" / f"{service}.log"
        wait_until(lambda log=log: where in log.read_text(), what=f"{service} to report it")


def test_a_workflow_file_added_while_running_is_found_without_a_restart(system):
    system.write_workflow("late.yml", "name: late\nsteps:\n  - {name: hi, run: echo late}\n")
    with system.client() as http:
        assert completed(http, "late")["failed"] is False


def test_workflows_list_shows_what_is_loaded_and_reports_malformed_files(system):
    listing = subprocess.run(
        [str(BIN / "taskengine"), "workflows", "list"],
        env=system.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = {line.split("\t")[0]: line.split("\t") for line in listing.stdout.splitlines()}
    pipe = str(system.data_dir / "workflows" / "pipe-456.yaml")
    assert lines["pipe-456"] == ["pipe-456", pipe, "ghcr.io/example/pipeline:1.2", "1", ""]
    assert lines["echo"][:2] == ["echo", "built-in"]
    assert {"noop", "echo", "sleep", "fail", "flaky", "inline"} <= set(lines)
    assert "broken" not in lines
    assert "broken.yaml:2: steps must be a list" in listing.stderr
    assert listing.returncode == 1
