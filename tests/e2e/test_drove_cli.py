"""Drove's own command line client (`drove-cli`, unchanged) against the system as `make up`
starts it: `drove -e URL -u CLIENT -p KEY tasks create|list|show|kill|logs|tail|download`.

drove-cli exits 0 even when a call fails, so each test checks what it printed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from uuid import uuid4

import httpx
import pytest

from tests.support.system import ADMIN, OTHER, running_system
from tests.support.waiting import wait_until

DROVE = Path(sys.executable).parent / "drove"
WORKFLOWS = {
    "chatty.yaml": "name: chatty\nsteps:\n  - name: talk\n"
    '    run: for i in $(seq 1 $ITERATIONS); do echo "line $i of $ITERATIONS"; sleep 1; done\n',
}


@pytest.fixture(scope="module")
def system(postgres_url):
    with running_system(postgres_url, "drove-cli", workflows=WORKFLOWS) as system:
        with system.client() as admin:
            admin.post("/settings", json={"name": "max_jobs", "setting": 10})
        yield system


def drove(system, *args: str, who=ADMIN, cwd: Path | None = None) -> str:  # type: ignore[no-untyped-def]
    result = subprocess.run(
        [str(DROVE), "-e", system.url, "-u", who[0], "-p", who[1], *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def spec_file(tmp_path: Path, task_id: str, workflow: str, parameters=None) -> str:  # type: ignore[no-untyped-def]
    spec = {
        "sourceAppName": "CLI_APP",
        "taskId": task_id,
        "executable": {"type": "WORKFLOW", "name": workflow, "parameters": parameters or {}},
        "resources": [{"type": "CPU", "count": 2}, {"type": "MEMORY", "sizeInMB": 256}],
        "volumes": [],
        "configs": [],
        "placementPolicy": {"type": "ANY"},
        "env": {"ITERATIONS": "20"},
        "args": [],
        "tags": {},
        "logging": {"type": "LOCAL", "maxSize": "100m", "maxFiles": 3, "compress": True},
    }
    path = tmp_path / f"{task_id}.json"
    path.write_text(json.dumps(spec))
    return str(path)


def state_of(system, task_id: str) -> str:  # type: ignore[no-untyped-def]
    answer = httpx.get(f"{system.url}/apis/v1/tasks/CLI_APP/instances/{task_id}", auth=ADMIN)
    return answer.json()["data"]["state"]


def shown(system, task_id: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """`drove tasks show` as {label: value}."""
    lines = drove(system, "tasks", "show", "CLI_APP", task_id).splitlines()
    return {line[:30].strip(): line[30:].strip() for line in lines if line.strip()}


def test_create_list_show_tail_logs_and_download(system, tmp_path):
    task_id = f"T-{uuid4().hex[:10]}"
    printed = drove(system, "tasks", "create", spec_file(tmp_path, task_id, "chatty"))
    assert printed.strip() == (
        f"Task created. Source App Name: CLI_APP Task ID: {task_id}."
        f" Drove assigned task ID: {task_id}"
    )
    # tail follows the output live, from where the file ends when it starts
    tail = subprocess.Popen(
        [str(DROVE), "-e", system.url, "-u", ADMIN[0], "-p", ADMIN[1]]
        + ["tasks", "tail", "CLI_APP", task_id],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    followed: list[str] = []
    reader = threading.Thread(target=lambda: followed.extend(iter(tail.stdout.readline, "")))  # type: ignore[union-attr]
    reader.start()
    try:
        wait_until(lambda: state_of(system, task_id) == "RUNNING", what="the task to run")
        assert "RUNNING" in drove(system, "tasks", "list")
        # tail starts at the file's end: it prints every line from its first read on, in order
        wait_until(lambda: "line 20 of 20\n" in followed, timeout=30, what="tail to print line 20")
        numbers = [int(line.split()[1]) for line in followed if line.startswith("line ")]
        assert numbers == list(range(numbers[0], 21)) and len(numbers) >= 5, followed
    finally:
        tail.kill()
        tail.wait()
        reader.join()
    wait_until(lambda: state_of(system, task_id) == "STOPPED", what="the task to stop")

    listed = [
        line.split() for line in drove(system, "tasks", "list", "--app", "CLI_APP").splitlines()
    ]
    [row] = [cells for cells in listed if task_id in cells]
    # drove-cli's CPU column counts NUMA nodes (one here), its memory column sums them
    assert row[0].startswith("TI-") and row[1:4] == ["CLI_APP", task_id, "STOPPED"]
    assert row[5:7] == ["1", "256"]

    details = shown(system, task_id)
    assert details["Task ID"] == task_id and details["State"] == "STOPPED"
    assert details["Executable"] == "workflow://chatty (WORKFLOW)"
    assert details["Result"] == "SUCCESSFUL (Task exit code: 0)"
    assert details["CPU"] == "NUMA Node 0: Cores: [0, 1]"
    assert details["Error Message"] == "" and details["Executor Host"]

    assert drove(system, "tasks", "logs", "CLI_APP", task_id).split() == ["files", "['output.log']"]
    saved = tmp_path / "saved.log"
    printed = drove(
        system, "tasks", "download", "CLI_APP", task_id, "output.log", "--out", str(saved)
    )
    api = httpx.get(
        f"{system.url}/apis/v1/logfiles/tasks/CLI_APP/{task_id}/download/output.log", auth=ADMIN
    )
    assert saved.read_text() == api.text and "line 20 of 20" in api.text
    assert f"Downloaded size: {len(api.content):,} bytes" in printed


def test_kill_stops_a_running_task_cancelled(system, tmp_path):
    task_id = f"T-{uuid4().hex[:10]}"
    drove(system, "tasks", "create", spec_file(tmp_path, task_id, "sleep", {"seconds": 60}))
    wait_until(lambda: state_of(system, task_id) == "RUNNING", what="the task to run")
    assert drove(system, "tasks", "kill", "CLI_APP", task_id).strip() == "Task kill issued"
    wait_until(lambda: state_of(system, task_id) == "STOPPED", what="the task to stop")
    assert shown(system, task_id)["Result"] == "CANCELLED (Task exit code: -1)"
    again = drove(system, "tasks", "kill", "CLI_APP", task_id)
    assert again.startswith("Error: [409 - FAILED]") and "nothing to kill" in again


def test_errors_are_printed_as_drove_prints_them(system, tmp_path):
    wrong = (ADMIN[0], "not-the-key")
    assert drove(system, "tasks", "list", who=wrong).startswith("Error: [401 - FAILED]")
    unknown = drove(system, "tasks", "show", "CLI_APP", "T-unknown")
    assert unknown.startswith("Error: [404 - FAILED] no task T-unknown of CLI_APP")
    bad = spec_file(tmp_path, "T-bad", "inline", {"steps": [{"name": "x", "run": "id"}]})
    refused = drove(system, "tasks", "create", bad)
    assert refused.startswith("Error: [400 - FAILED]") and "Validation errors:" in refused
    assert "not allowed" in refused
    # another client's task does not exist for it
    task_id = f"T-{uuid4().hex[:10]}"
    drove(system, "tasks", "create", spec_file(tmp_path, task_id, "echo"))
    assert task_id not in drove(system, "tasks", "list", who=OTHER)
    assert drove(system, "tasks", "show", "CLI_APP", task_id, who=OTHER).startswith(
        "Error: [404 - FAILED]"
    )
