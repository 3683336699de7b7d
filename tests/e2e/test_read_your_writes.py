"""Lists show what was just acknowledged: in every dialect, a list, search or count asked right
after a write was answered reflects that write, even through another gateway process.

Writes go to the system's gateway, reads to a second gateway of the same system; each dialect
makes 200 write-then-read pairs (a few at a time) and none may miss. The one engine slot is
held by a long job, so nothing written here starts running and moves on by itself.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from uuid import uuid4

import httpx
import pytest
from taskengine_embedded import free_port

from tests.support.system import ADMIN, System, running_system
from tests.support.waiting import wait_until
from tests.support.worktask_clients import new_client

STALE = "X-Taskengine-Stale"
ROUNDS = 50
"""Rounds per dialect; each makes four write-then-read pairs (Drove's two: 100 rounds)."""
AT_ONCE = 4


@pytest.fixture(scope="module")
def system(postgres_url) -> Iterator[System]:
    with running_system(postgres_url, "reads") as system:
        with system.client() as admin:
            admin.post("/settings", json={"name": "max_jobs", "setting": 1})
            body = {"job": {"workflow": "sleep"}, "parameters": {"seconds": 900}}
            holder = admin.post("/job", json=body).json()["id"]
            wait_until(
                lambda: admin.get(f"/jobs/{holder}").json()["queue_state"] == "started",
                what="the long job to hold the one slot",
            )
        yield system


@pytest.fixture(scope="module")
def second_url(system) -> Iterator[str]:
    """Another gateway process of the same system (its own port and instance name)."""
    port = free_port()
    env = {**system.env, "TASKENGINE_PORT": str(port), "TASKENGINE_INSTANCE": "gateway-two"}
    with open(system.root / "gateway-two.log", "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "taskengine_gateway"], env=env, stdout=log, stderr=log
        )
    url = f"http://127.0.0.1:{port}"
    try:

        def up() -> bool:
            assert process.poll() is None, (system.root / "gateway-two.log").read_text()
            try:
                return httpx.get(url + "/", timeout=5).status_code < 500
            except httpx.TransportError:
                return False

        wait_until(up, timeout=180, every=0.2, what="the second gateway to start")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


@contextmanager
def both(
    system: System, second: str, **headers: str
) -> Iterator[tuple[httpx.Client, httpx.Client]]:
    """(writer, reader): clients of the first and of the second gateway."""
    with (
        httpx.Client(base_url=system.url, headers=headers, timeout=30) as writer,
        httpx.Client(base_url=second, headers=headers, timeout=30) as reader,
    ):
        yield writer, reader


class Pairs:
    """Write-then-read pairs and those whose read missed its write."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.count = 0
        self.misses: list[str] = []
        self.stale = 0

    def read(self, response: httpx.Response, what: str, seen: bool) -> None:
        assert response.status_code == 200, response.text
        with self.lock:
            self.count += 1
            self.stale += response.headers.get(STALE) == "true"
            if not seen:
                self.misses.append(f"{what}: {response.text[:300]}")

    def run(self, rounds: int, one: Callable[[int], None]) -> None:
        with ThreadPoolExecutor(AT_ONCE) as pool:
            list(pool.map(one, range(rounds)))


def ok(response: httpx.Response, status: int = 200) -> dict:
    assert response.status_code == status, response.text
    return response.json()


def test_task_engine_lists_show_created_paused_broken_and_rerun_jobs(system, second_url):
    headers = {"client": ADMIN[0], "api-key": ADMIN[1]}
    later = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S.000")
    pairs = Pairs()
    with both(system, second_url, **headers) as (writer, reader):

        def listed(state: int | None, job_id: int, what: str, **params: object) -> None:
            query = {"limit": 1000, **params} | ({} if state is None else {"state": state})
            response = reader.get("/jobs", params=query)
            ids = [row["id"] for row in response.json()] if response.status_code == 200 else []
            pairs.read(response, f"{what} job {job_id}", job_id in ids)

        def one(_: int) -> None:
            job = ok(writer.post("/job", json={"job": {"workflow": "noop"}, "run_at": later}))
            listed(5, job["id"], "created", job_ids=job["id"])
            ok(writer.patch(f"/jobs/{job['id']}", json={"queue_state": "paused"}))
            listed(6, job["id"], "paused")  # the very request: every paused job
            ok(writer.patch(f"/jobs/{job['id']}", json={"queue_state": "broken"}))
            listed(4, job["id"], "broken", job_ids=job["id"])
            rerun = ok(writer.post(f"/jobs/{job['id']}/rerun"))["id"]
            listed(None, rerun, "rerun", job_ids=rerun)

        pairs.run(ROUNDS, one)
    assert pairs.count == 200
    assert pairs.misses == [] and pairs.stale == 0


def test_scheduled_task_lists_show_created_paused_resumed_and_canceled_tasks(system, second_url):
    pairs = Pairs()
    with both(system, second_url, Authorization=f"Bearer {ADMIN[1]}") as (writer, reader):

        def listed(status: str, task: str, creator: str, what: str) -> None:
            params = {"status": status, "created_by": creator}
            response = reader.get("/tasks", params=params)
            ids = [t["id"] for t in response.json()] if response.status_code == 200 else []
            pairs.read(response, f"{what} task {task}", ids == [task])

        def one(_: int) -> None:
            creator = str(uuid4())
            body = {
                "title": "t",
                "description": "read after write",
                "schedule_kind": "cron",
                "schedule_expr": "0 3 * * *",
                "payload": {"workflow": "noop"},
                "created_by": creator,
            }
            task = ok(writer.post("/tasks", json=body), 201)["id"]
            listed("active", task, creator, "created")
            for verb, status in (("pause", "paused"), ("resume", "active"), ("cancel", "canceled")):
                ok(writer.post(f"/tasks/{task}/{verb}"))
                listed(status, task, creator, verb)

        pairs.run(ROUNDS, one)
    assert pairs.count == 200
    assert pairs.misses == [] and pairs.stale == 0


def test_work_task_queue_length_and_metrics_count_every_submission(system, second_url):
    _, key = new_client(system, "reads")
    pairs = Pairs()
    submitted = 0
    counting = threading.Lock()
    body = {
        "type": "pipeline_execution",
        "priority": 1,
        "project_id": "p",
        "task_spec": {"pipeline_id": "sleep", "parameters": {"seconds": 1}},
        "resource_requirements": {"cpu": "1", "memory": "1Gi", "gpu": False},
        "data_access": {"input_datasets": [], "output_location": "s3://out/"},
    }
    with both(system, second_url, Authorization=f"Bearer {key}") as (writer, reader):

        def one(i: int) -> None:
            nonlocal submitted
            ok(writer.post("/api/worktasks", json=body), 201)
            with counting:
                submitted += 1
                acknowledged = submitted  # at least these are answered before the read
            if i % 2:
                response = reader.get("/api/worktasks")
                got = response.json().get("queue_length", -1)
            else:
                response = reader.get("/api/metrics")
                got = sum(response.json().get("tasks_by_status", {}).values())
            pairs.read(response, f"{acknowledged} submitted, {got} counted", got >= acknowledged)

        pairs.run(4 * ROUNDS, one)
    assert pairs.count == 200
    assert pairs.misses == [] and pairs.stale == 0


def test_drove_lists_and_searches_show_created_and_killed_tasks(system, second_url):
    pairs = Pairs()
    op = {"timeout": "5m", "parallelism": 1, "failureStrategy": "STOP"}
    with (
        httpx.Client(base_url=system.url, auth=ADMIN, timeout=30) as writer,
        httpx.Client(base_url=second_url, auth=ADMIN, timeout=30) as reader,
    ):

        def found(task_id: str) -> tuple[httpx.Response, list[dict]]:
            response = reader.post("/apis/v1/tasks/search", json={"taskId": task_id})
            rows = response.json().get("data") or [] if response.status_code == 200 else []
            return response, rows

        def one(_: int) -> None:
            task_id = f"R-{uuid4().hex[:12]}"
            spec = {
                "sourceAppName": "READS",
                "taskId": task_id,
                "executable": {"type": "WORKFLOW", "name": "noop", "parameters": {}},
                "resources": [{"type": "CPU", "count": 1}, {"type": "MEMORY", "sizeInMB": 64}],
                "volumes": [],
                "configs": [],
                "placementPolicy": {"type": "ANY"},
                "env": {},
                "args": [],
                "tags": {},
            }
            ok(
                writer.post(
                    "/apis/v1/tasks/operations", json={"type": "CREATE", "spec": spec, "opSpec": op}
                )
            )
            response, rows = found(task_id)
            pairs.read(response, f"created {task_id}", [r["taskId"] for r in rows] == [task_id])
            kill = {"type": "KILL", "sourceAppName": "READS", "taskId": task_id, "opSpec": op}
            ok(writer.post("/apis/v1/tasks/operations", json=kill))
            shown = ok(writer.get(f"/apis/v1/tasks/READS/instances/{task_id}"))["data"]
            response, rows = found(task_id)
            pairs.read(
                response, f"killed {task_id}", rows != [] and rows[0]["state"] == shown["state"]
            )

        pairs.run(2 * ROUNDS, one)
    assert pairs.count == 200
    assert pairs.misses == [] and pairs.stale == 0


def test_a_read_that_waits_does_not_wait_out_the_projectors_pace(system_factory):
    """The projector takes a batch at most every second here, and a read waits half a second
    for the read models: a read that had to wait out the pace would answer stale. Waiting,
    it tells the projector so (a NOTIFY), which takes its next batch at once."""
    system = system_factory(TASKENGINE_FOLLOW_INTERVAL="1", TASKENGINE_READ_WAIT="0.5")
    later = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S.000")
    with system.client() as client:
        for _ in range(10):  # each right after the previous batch: inside its pace
            job = ok(client.post("/job", json={"job": {"workflow": "noop"}, "run_at": later}))
            response = client.get("/jobs", params={"job_ids": job["id"]})
            assert response.headers.get(STALE) != "true"
            assert [row["id"] for row in response.json()] == [job["id"]]
