"""The process executor's workers: what they are given (where to report, their token, no
secrets), and how they are waited for, stopped and killed."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from taskengine_core.attempts import token_fits
from taskengine_core.config import EngineSettings
from taskengine_dispatcher.executors import process as workers
from taskengine_dispatcher.executors.process import (
    WorkerExit,
    WorkerProcess,
    gateway_url,
    worker_env,
)

KEY = "signing-key-0123456789"


def config(**values) -> EngineSettings:  # type: ignore[no-untyped-def]
    base = {
        "database_url": "postgresql://taskengine:password@db/taskengine",
        "nats_url": "nats://bus:4222",
        "webhook_key": KEY,
        "data_dir": Path("/var/lib/taskengine"),
    }
    return EngineSettings(**(base | values))


@pytest.mark.parametrize(
    ("host", "url", "expected"),
    [
        ("0.0.0.0", "", "http://127.0.0.1:8080"),
        ("::", "", "http://[::1]:8080"),
        ("10.1.2.3", "", "http://10.1.2.3:8080"),
        ("0.0.0.0", "http://gateway.svc:8080/", "http://gateway.svc:8080"),
    ],
)
def test_workers_report_to_the_gateway_url_else_to_the_gateways_own_address(host, url, expected):
    assert gateway_url(config(host=host, port=8080, gateway_url=url)) == expected


def test_a_worker_gets_its_task_token_and_workflows_but_never_the_database_or_keys(monkeypatch):
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.setenv("TASKENGINE_DATABASE_URL", "postgresql://taskengine:password@db/x")
    monkeypatch.setenv("TASKENGINE_WEBHOOK_KEY", KEY)
    env = worker_env(config(inline_steps=True, step_user="4000:4001"), 42, 2, 90.0)
    assert env["TASKENGINE_JOB_ID"] == "42" and env["TASKENGINE_ATTEMPT"] == "2"
    assert token_fits(env["TASKENGINE_WORKER_TOKEN"], KEY, 42, 2)
    assert not token_fits(env["TASKENGINE_WORKER_TOKEN"], KEY, 42, 1)
    assert env["TASKENGINE_GATEWAY_URL"] == "http://127.0.0.1:8080"
    assert env["TASKENGINE_WORKFLOWS_DIR"] == "/var/lib/taskengine/workflows"
    assert env["TASKENGINE_INLINE_STEPS"] == "true" and env["TASKENGINE_TIMEOUT"] == "90"
    assert (env["TASKENGINE_STEP_USER"], env["TASKENGINE_STEP_SAME_USER"]) == ("4000:4001", "false")
    assert env["PATH"] == "/usr/bin:/bin"
    assert not any("DATABASE" in name or "NATS" in name for name in env)
    assert not any(KEY in value or "password" in value for value in env.values())


@pytest.fixture
def command(monkeypatch):  # type: ignore[no-untyped-def]
    """The worker command replaced by a shell script (`sh -c SCRIPT`)."""

    def use(script: str) -> None:
        monkeypatch.setattr(workers, "COMMAND", ("sh", "-c", script))

    monkeypatch.setattr(workers, "GRACE", 0.0)
    monkeypatch.setattr(workers, "STOP_GRACE", 0.3)
    return use


async def test_a_worker_that_exits_says_how(command):
    command("exit 3")
    assert await WorkerProcess({}, 10.0).run() == WorkerExit(3)
    command("kill -9 $$")
    exit = await WorkerProcess({}, 10.0).run()
    assert exit.code == -9 and exit.describe() == "signal 9" and not exit.timed_out


async def test_a_worker_past_its_timeout_is_left_running_until_terminated(command):
    command("trap '' TERM; sleep 30 & wait")  # deaf to SIGTERM: killed after STOP_GRACE
    worker = WorkerProcess({}, 0.2)
    started = time.monotonic()
    exit = await worker.run()
    assert exit.timed_out and worker.process and worker.process.returncode is None
    assert await worker.terminate() == -9
    assert time.monotonic() - started < 5


async def test_a_stopped_worker_gets_sigterm_first(command):
    command("trap 'exit 0' TERM; sleep 30 & wait")
    worker = WorkerProcess({}, 30.0)
    running = asyncio.create_task(worker.run())
    await asyncio.sleep(0.3)
    worker.stop()
    assert await asyncio.wait_for(running, 5) == WorkerExit(0, stopped=True)


async def test_a_worker_is_killed_when_the_dispatcher_stops_waiting(command):
    command("trap '' TERM; sleep 30 & wait")
    worker = WorkerProcess({}, 30.0)
    running = asyncio.create_task(worker.run())
    await asyncio.sleep(0.3)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert worker.process and await asyncio.wait_for(worker.process.wait(), 5) == -9
