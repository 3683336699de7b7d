"""Inline steps (commands a client gives), switched on, with the system as `make up` starts
it: they run as the step user (65534) in a scratch home, and cannot read the secrets of the
processes that run them (the dispatcher's and the supervisor's `/proc/<pid>/environ`)."""

from __future__ import annotations

import pytest
from taskengine_core.confinement import can_switch_user

from tests.support.system import ADMIN, WEBHOOK_KEY, running_system
from tests.support.waiting import wait_until

pytestmark = pytest.mark.skipif(not can_switch_user(), reason="needs root to switch users")


@pytest.fixture(scope="module")
def system(postgres_url):
    with running_system(postgres_url, "inline", env={"TASKENGINE_INLINE_STEPS": "true"}) as engine:
        yield engine


def run_inline(system, script: str) -> tuple[dict, list[str]]:  # type: ignore[no-untyped-def]
    """Runs `script` as an inline step; the job when it ended, and its log lines."""
    with system.client() as client:
        body = {
            "job": {"workflow": "inline"},
            "parameters": {"steps": [{"name": "probe", "run": script}]},
        }
        accepted = client.post("/job", json=body)
        assert accepted.status_code == 200, accepted.text
        job_id = accepted.json()["id"]

        def ended() -> dict | None:
            job = client.get(f"/jobs/{job_id}").json()
            return job if job["queue_state"] == "completed" else None

        job = wait_until(ended, timeout=60, what=f"job {job_id} to end")

        def logged() -> list[str]:
            rows = client.get(f"/logs/{job_id}").json()
            messages = [r["message"] for r in rows if r["progname"] == "worker"]
            return messages if any("'probe' completed" in m for m in messages) else []

        return job, wait_until(logged, what=f"job {job_id}'s step output")


def test_an_inline_step_runs_as_the_step_user_and_cannot_read_the_runners_secrets(system):
    pids = system.pids()
    dispatcher, supervisor = pids["dispatcher"], system.process.pid
    script = (
        "echo uid=$(id -u) gid=$(id -g) groups=$(id -G); echo cwd=$(pwd) home=$HOME; env;"
        f" for pid in {dispatcher} {supervisor} 1; do"
        "   if cat /proc/$pid/environ; then echo read $pid; else echo refused $pid; fi;"
        " done"
    )
    job, lines = run_inline(system, script)
    assert job["failed"] is False, lines
    output = "\n".join(lines)

    assert "uid=65534 gid=65534 groups=65534" in lines, lines
    [where] = [line for line in lines if line.startswith("cwd=")]
    cwd, home = where.split()
    assert cwd == f"cwd={home.removeprefix('home=')}" and "taskengine-step-" in cwd
    for pid in (dispatcher, supervisor, 1):
        assert f"refused {pid}" in lines, lines
    # Neither the settings' names nor their values: not from `env`, not from /proc.
    for secret in (system.database_url, WEBHOOK_KEY, ADMIN[1]):
        assert secret not in output
    assert "TASKENGINE_DATABASE_URL" not in output and "TASKENGINE_WEBHOOK_KEY" not in output
    assert "TASKENGINE_JOB_ID=" in output  # what the step is meant to see, it sees


def test_the_engines_own_workflows_still_run(system):
    with system.client() as client:
        accepted = client.post("/job", json={"job": {"workflow": "echo"}, "parameters": {"x": 1}})
        job_id = accepted.json()["id"]
        wait_until(
            lambda: client.get(f"/jobs/{job_id}").json()["queue_state"] == "completed",
            timeout=60,
            what="the echo job",
        )
        assert client.get(f"/jobs/{job_id}").json()["failed"] is False
