"""`taskengine worker` against a fake gateway: what it reports, in which order, and when it
gives up; and, as a real process, what SIGTERM does."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from taskengine_cli import worker
from taskengine_cli.worker import OVER, REPORTED, UNREPORTED, Assignment, Attempt, Gateway
from taskengine_core.workflows import allow_inline

TOKEN = "wt_secret-token-of-attempt-1"


def work_task(pipeline: str | None, parameters: dict | None = None, **fields: Any) -> dict:
    spec = {"parameters": parameters or {}} | ({"pipeline_id": pipeline} if pipeline else {})
    return {
        "worktask_id": "7",
        "type": "pipeline_execution",
        "status": "spawned",
        "retry_count": 0,
        "task_spec": spec,
        "data_access": {"output_location": "s3://out/7/"},
    } | fields


class FakeGateway:
    """The work-task endpoints of one task, recording what the worker sent."""

    def __init__(self, task: dict):
        self.task = task
        self.requests: list[tuple[str, str, Any]] = []
        self.reports: list[dict] = []
        self.lines: list[dict] = []
        self.failures: dict[str, list[int | Exception]] = {}
        """Per call (`GET`, `logs`, or a report's status), answers to give before the real
        one: an HTTP status or an error."""
        self.tokens: set[str] = set()

    def fail(self, call: str, *answers: int | Exception) -> None:
        self.failures[call] = list(answers)

    def answer(self, method: str, path: str, body: Any, token: str) -> tuple[int, dict]:
        self.requests.append((method, path, body))
        self.tokens.add(token)
        call = "GET" if method == "GET" else "logs" if path.endswith("/logs") else body["status"]
        pending = self.failures.get(call)
        if pending:
            failure = pending.pop(0)
            if isinstance(failure, Exception):
                raise failure
            return failure, {"error": "not now"}
        if method == "GET":
            return 200, self.task
        if path.endswith("/logs"):
            self.lines += body["lines"]
            return 200, {"status": "logged", "lines": len(body["lines"])}
        self.reports.append(body)
        return 200, {"status": "updated"}

    def transport(self) -> httpx.MockTransport:
        def handle(request: httpx.Request) -> httpx.Response:
            body = json.loads(request.content) if request.content else None
            token = request.headers.get("authorization", "")
            status, answer = self.answer(request.method, request.url.path, body, token)
            return httpx.Response(status, json=answer)

        return httpx.MockTransport(handle)

    @property
    def statuses(self) -> list[str]:
        return [report["status"] for report in self.reports]


@pytest.fixture(autouse=True)
def quick(monkeypatch):
    monkeypatch.setattr(worker, "PATIENCE", (0.01, 0.01))
    monkeypatch.setattr(worker, "BATCH_EVERY", 0.05)


async def attempt(gateway: FakeGateway, timeout: float = 30.0) -> int:
    assignment = Assignment("7", "http://gateway.test", TOKEN, attempt=1, timeout=timeout)
    async with httpx.AsyncClient(
        base_url=assignment.gateway_url,
        headers={"Authorization": f"Bearer {TOKEN}"},
        transport=gateway.transport(),
    ) as http:
        return await Attempt(assignment, Gateway(assignment, http)).run()


async def test_a_successful_attempt_reports_executing_its_output_then_completed():
    gateway = FakeGateway(work_task("echo", {"word": "hello-from-the-worker"}))
    assert await attempt(gateway) == REPORTED
    assert gateway.statuses == ["executing", "completed"]
    assert gateway.reports[-1] == {
        "worktask_id": "7",
        "status": "completed",
        "output_location": "s3://out/7/",
        "metadata": {"exit_code": 0, "steps": 1},
    }
    texts = [line["text"] for line in gateway.lines]
    assert any("hello-from-the-worker" in text for text in texts), texts
    assert texts[-1] == "'echo' completed successfully"
    assert all(set(line) == {"at", "step", "severity", "text"} for line in gateway.lines)
    # Every line was sent before the final report, and every call carried the token.
    last_log = max(i for i, r in enumerate(gateway.requests) if r[1].endswith("/logs"))
    assert gateway.requests[-1][2]["status"] == "completed" and last_log < len(gateway.requests)
    assert gateway.tokens == {f"Bearer {TOKEN}"}


async def test_a_failing_step_is_reported_failed_with_its_reason_and_exit_code():
    gateway = FakeGateway(work_task("fail", {"exit_code": 3, "message": "boom"}))
    assert await attempt(gateway) == REPORTED
    assert gateway.statuses == ["executing", "failed"]
    report = gateway.reports[-1]
    assert report["error_message"] == "step 'fail' exited with 3"
    assert report["metadata"] == {"exit_code": 3}
    assert "output_location" not in report
    assert any(line["text"] == "boom" and line["severity"] == "ERROR" for line in gateway.lines)


async def test_a_step_out_of_time_is_reported_as_timeout():
    gateway = FakeGateway(work_task("sleep", {"seconds": 30}))
    started = time.monotonic()
    assert await attempt(gateway, timeout=0.5) == REPORTED
    assert time.monotonic() - started < 10
    assert gateway.statuses == ["executing", "timeout"]
    assert "timed out" in gateway.reports[-1]["error_message"]


async def test_without_a_pipeline_id_the_type_names_the_workflow():
    gateway = FakeGateway(work_task(None, type="pipeline_execution"))
    assert await attempt(gateway) == REPORTED
    assert gateway.statuses == ["failed"]  # no such workflow: nothing ran
    assert "unknown workflow 'pipeline_execution'" in gateway.reports[0]["error_message"]


async def test_a_workflow_that_cannot_run_is_reported_failed_without_executing():
    allow_inline(False)
    gateway = FakeGateway(work_task("inline", {"steps": [{"name": "x", "run": "true"}]}))
    assert await attempt(gateway) == REPORTED
    assert gateway.statuses == ["failed"]
    assert "inline steps are switched off" in gateway.reports[0]["error_message"]


async def test_a_refused_log_batch_means_the_attempt_is_over_its_steps_stop():
    gateway = FakeGateway(work_task("sleep", {"seconds": 30}))
    gateway.fail("logs", 409)
    started = time.monotonic()
    assert await attempt(gateway) == OVER
    assert time.monotonic() - started < 10
    assert gateway.statuses == ["executing"]  # no final report: the attempt ended without it


async def test_a_gateway_that_stays_down_is_tried_again_then_given_up():
    gateway = FakeGateway(work_task("echo"))
    down = httpx.ConnectError("connection refused")
    gateway.fail("GET", down, down, down)
    assert await attempt(gateway) == UNREPORTED
    assert [r[0] for r in gateway.requests] == ["GET", "GET", "GET"]


async def test_a_final_report_is_tried_again_after_a_server_error_and_a_dropped_connection():
    gateway = FakeGateway(work_task("echo"))
    gateway.fail("GET", httpx.ConnectError("starting"))
    gateway.fail("completed", 503, httpx.ReadError("reset"))
    assert await attempt(gateway) == REPORTED
    assert gateway.statuses == ["executing", "completed"]
    completed = [r for r in gateway.requests if r[2] and r[2].get("status") == "completed"]
    assert len(completed) == 3


async def test_a_final_report_refused_as_over_exits_3_and_a_refused_one_exits_1():
    gateway = FakeGateway(work_task("echo"))
    gateway.fail("completed", 409)
    assert await attempt(gateway) == OVER
    gateway = FakeGateway(work_task("echo"))
    gateway.fail("completed", 401)
    assert await attempt(gateway) == UNREPORTED


# --- as a process -----------------------------------------------------------------------------


@pytest.fixture
def http_gateway() -> Iterator[tuple[str, FakeGateway]]:
    fake = FakeGateway(work_task("sleep", {"seconds": 60}))

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            token = self.headers.get("authorization", "")
            status, answer = fake.answer(self.command, self.path, body, token)
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _serve

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", fake
    server.shutdown()
    server.server_close()


# A worker process needs seconds of CPU to start: on a busy machine, tens of seconds.
def wait_for(check, timeout: float = 90.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := check():
            return found
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {check}")


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def test_sigterm_stops_the_steps_and_reports_failed_terminated(http_gateway, tmp_path):
    url, fake = http_gateway
    env = {
        "PATH": os.environ["PATH"],
        "TASKENGINE_JOB_ID": "7",
        "TASKENGINE_ATTEMPT": "1",
        "TASKENGINE_WORKER_TOKEN": TOKEN,
        "TASKENGINE_GATEWAY_URL": url,
        "TASKENGINE_WORKFLOWS_DIR": str(tmp_path),
        "TASKENGINE_LOG_LEVEL": "DEBUG",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "taskengine_cli.main", "worker"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for(lambda: "executing" in fake.statuses)
        step = wait_for(lambda: children_of(process.pid))[0]
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=20)
    finally:
        process.kill()
    assert process.returncode == 0, err.decode()
    assert fake.statuses == ["executing", "failed"]
    assert fake.reports[-1]["error_message"] == "terminated"
    assert not Path(f"/proc/{step}").exists() or "Z" in Path(f"/proc/{step}/stat").read_text()
    assert TOKEN not in (out + err).decode()
    assert fake.tokens == {f"Bearer {TOKEN}"}
