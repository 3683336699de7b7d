"""Quotas per client against the system as `make up` starts it: open WebSockets, active
scheduled tasks, resources per task and the priorities a client may use, each refused in its
dialect's own shape with nothing stored, while another client goes on; and a WebSocket's
`?after=0` replay, read in pages."""

from __future__ import annotations

import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from uuid import uuid4

import httpx
import pytest
from taskengine_contracts.events import JobSubmitted, TaskCreated
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection

from tests.support.system import ADMIN, OTHER, System, running_system
from tests.support.waiting import wait_until
from tests.support.worktask_clients import bearer, new_client, receive_until, socket

SOCKETS, TASKS, PAGE = 2, 3, 7
WORKTASK = {
    "type": "ml_inference",
    "project_id": "proj-quota",
    "task_spec": {"pipeline_id": "noop"},
    "resource_requirements": {"cpu": "1", "memory": "1Gi"},
    "data_access": {},
}
AGENT = str(uuid4())


@pytest.fixture(scope="module")
def system(postgres_url):
    env = {
        "TASKENGINE_MAX_SOCKETS_PER_CLIENT": str(SOCKETS),
        "TASKENGINE_MAX_ACTIVE_TASKS_PER_CLIENT": str(TASKS),
        "TASKENGINE_WS_REPLAY_PAGE": str(PAGE),
    }
    with running_system(postgres_url, "quotas", env=env) as system:
        with system.client() as admin:
            admin.post("/settings", json={"name": "max_jobs", "setting": 20})
        yield system


def close_code(ws: ClientConnection) -> int | None:
    """The code the server closed `ws` with (None: it stayed open and sent something)."""
    try:
        ws.recv(timeout=10)
    except ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd else None
    return None


def submit(http: httpx.Client, **fields) -> str:  # type: ignore[no-untyped-def]
    response = http.post("/api/worktasks", json={**WORKTASK, **fields})
    assert response.status_code == 201, response.text
    return response.json()["worktask_id"]


def completed(worktask_id: str) -> Callable[[list[dict]], bool]:
    return lambda messages: any(
        m["task"]["worktask_id"] == worktask_id and m["task"]["status"] == "completed"
        for m in messages
    )


def submissions(system: System, client: str) -> list[JobSubmitted]:
    return [e for e in system.events() if isinstance(e, JobSubmitted) and e.client == client]


# --- open WebSockets ------------------------------------------------------------------------


def test_a_socket_beyond_the_quota_is_closed_4429_while_another_clients_sockets_work(system):
    _, a_key = new_client(system, "q")
    with socket(system, a_key) as first, socket(system, a_key) as second:
        with socket(system, a_key) as extra:
            assert close_code(extra) == 4429
        with bearer(system, ADMIN[1]) as b, socket(system, ADMIN[1]) as b_socket:
            worktask_id = submit(b)
            receive_until(b_socket, completed(worktask_id))
        with bearer(system, a_key) as a:  # A's sockets still serve A
            own = submit(a)
            receive_until(first, completed(own))
            receive_until(second, completed(own))
    # Closing frees the place (the server counts it back once its handler ends).

    def reopened() -> bool:
        with socket(system, a_key) as again:
            with bearer(system, a_key) as a:
                own = submit(a)
            try:
                receive_until(again, completed(own), timeout=10)
            except (ConnectionClosed, AssertionError):
                return False
            return True

    wait_until(reopened, timeout=30, what="a socket once the others closed")


# --- active scheduled tasks -----------------------------------------------------------------


def task_body(**fields) -> dict:  # type: ignore[no-untyped-def]
    return {
        "title": "Quota",
        "description": "",
        "schedule_kind": "cron",
        "schedule_expr": "0 3 * * *",
        "payload": {"workflow": "noop"},
        "created_by": AGENT,
        **fields,
    }


def created_tasks(system: System, client: str) -> list[TaskCreated]:
    return [e for e in system.events() if isinstance(e, TaskCreated) and e.client == client]


def test_a_scheduled_task_beyond_the_quota_is_a_403_and_stores_nothing(system):
    name, key = new_client(system, "q")
    with bearer(system, key) as a, bearer(system, ADMIN[1]) as b:
        tasks = [a.post("/tasks", json=task_body()) for _ in range(TASKS)]
        assert [t.status_code for t in tasks] == [201] * TASKS
        refused = a.post("/tasks", json=task_body(title="one too many"))
        assert refused.status_code == 403
        assert refused.json() == {
            "detail": f"quota exceeded: at most {TASKS} scheduled tasks active or paused per"
            " client; cancel one first"
        }
        assert len(created_tasks(system, name)) == TASKS
        assert b.post("/tasks", json=task_body()).status_code == 201  # another client's own
        paused = tasks[0].json()["id"]
        assert a.post(f"/tasks/{paused}/pause").status_code == 200
        assert a.post("/tasks", json=task_body()).status_code == 403  # paused still counts
        assert a.post(f"/tasks/{paused}/cancel").status_code == 200

        def created_after_cancel() -> bool:  # once the read model shows the cancel
            return a.post("/tasks", json=task_body(title="in its place")).status_code == 201

        wait_until(created_after_cancel, what="a task in the canceled one's place")
    assert len(created_tasks(system, name)) == TASKS + 1


def test_concurrent_creates_of_one_client_do_not_overshoot_the_quota(system):
    name, key = new_client(system, "q")
    with bearer(system, key) as a, ThreadPoolExecutor(10) as pool:
        answers = list(
            pool.map(lambda _: a.post("/tasks", json=task_body()).status_code, range(10))
        )
    assert sorted(answers) == [201] * TASKS + [403] * (10 - TASKS)
    assert len(created_tasks(system, name)) == TASKS


# --- resources per task ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("resources", "message"),
    [
        ({"cpu": 1024}, "resource_requirements.cpu 1024 is more than the 64 cores"),
        ({"cpu": "1024"}, "resource_requirements.cpu 1024 is more than the 64 cores"),
        ({"memory": "1Ti"}, "resource_requirements.memory of 1048576Mi is more than the 16384Mi"),
        ({"gpu": 100}, "resource_requirements.gpu 100 is more than the 8 GPUs"),
        ({"cpu": "lots"}, "resource_requirements.cpu must be a number of cores"),
    ],
)
def test_a_work_task_asking_too_much_is_a_400_and_stores_nothing(system, resources, message):
    name, key = new_client(system, "q")
    with bearer(system, key) as a:
        response = a.post("/api/worktasks", json={**WORKTASK, "resource_requirements": resources})
        assert response.status_code == 400
        assert message in response.json()["error"] and set(response.json()) == {"error"}
        assert submissions(system, name) == []
        assert a.get("/api/worktasks").json() == {"queue_length": 0}


@pytest.mark.parametrize(
    ("resources", "message"),
    [
        ([{"type": "CPU", "count": 1024}, {"type": "MEMORY", "sizeInMB": 128}], "cpu 1024"),
        ([{"type": "CPU", "count": 1}, {"type": "MEMORY", "sizeInMB": 10**7}], "memory of"),
    ],
)
def test_a_drove_task_asking_too_much_is_a_400_and_stores_nothing(system, resources, message):
    name, key = new_client(system, "q")
    spec = {
        "sourceAppName": "QUOTA_APP",
        "taskId": f"T-{uuid4().hex[:8]}",
        "executable": {"type": "WORKFLOW", "name": "noop", "parameters": {}},
        "resources": resources,
    }
    with httpx.Client(base_url=system.url, auth=(name, key), timeout=30) as drove:
        response = drove.post("/apis/v1/tasks/operations", json={"type": "CREATE", "spec": spec})
    assert response.status_code == 400
    body = response.json()
    assert body["status"] == "FAILED" and body["message"].startswith(f"spec.resources: {message}")
    assert body["data"] == {"validationErrors": [body["message"]]}
    assert submissions(system, name) == []


# --- priorities -----------------------------------------------------------------------------


def test_the_top_priorities_are_refused_403_in_the_task_engine_dialect(system):
    with system.client(OTHER) as a, system.client(ADMIN) as admin:
        before = len(submissions(system, OTHER[0]))
        refused = a.post("/job", json={"job": {"workflow": "noop"}, "priority": 1})
        assert refused.status_code == 403
        assert refused.json() == {
            "id": None,
            "error": "priority 1 is reserved: client other may use 3 to 10 (1 is the highest)",
        }
        assert len(submissions(system, OTHER[0])) == before
        allowed = a.post("/job", json={"job": {"workflow": "noop"}, "priority": 3})
        assert allowed.status_code == 200
        assert (
            admin.post("/job", json={"job": {"workflow": "noop"}, "priority": 1}).json()["result"]
            == "accepted"
        )
        run_at = "2099-01-01T00:00:00.000"
        waiting = a.post("/job", json={"job": {"workflow": "noop"}, "run_at": run_at}).json()["id"]
        patched = a.patch(f"/jobs/{waiting}", json={"priority": "2"})
        assert patched.status_code == 403 and patched.json()["id"] == waiting
        assert "priority 2 is reserved" in patched.json()["error"]
        assert a.get(f"/jobs/{waiting}").json()["priority"] == 5
        assert a.patch(f"/jobs/{waiting}", json={"priority": 4}).status_code == 200


def test_the_top_priorities_are_refused_403_for_scheduled_tasks(system):
    name, key = new_client(system, "q")
    with bearer(system, key) as a, bearer(system, ADMIN[1]) as admin:
        refused = a.post("/tasks", json=task_body(priority=2))
        assert refused.status_code == 403
        assert refused.json() == {
            "detail": "priority 2 is reserved: this client may use 3 to 9 (1 is the highest)"
        }
        assert created_tasks(system, name) == []
        task = a.post("/tasks", json=task_body(priority=3)).json()
        changed = a.put(f"/tasks/{task['id']}", json={"priority": 1})
        assert changed.status_code == 403 and "priority 1 is reserved" in changed.json()["detail"]
        assert a.get(f"/tasks/{task['id']}").json()["priority"] == 3
        assert admin.post("/tasks", json=task_body(priority=1)).status_code == 201


def test_the_top_priorities_are_refused_403_for_work_tasks(system):
    name, key = new_client(system, "q")
    with bearer(system, key) as a, bearer(system, ADMIN[1]) as admin:
        refused = a.post("/api/worktasks", json={**WORKTASK, "priority": 9})
        assert refused.status_code == 403
        assert refused.json() == {
            "error": "priority 9 is reserved: this client may use at most 8 (higher = more urgent)"
        }
        assert submissions(system, name) == []
        assert a.post("/api/worktasks", json={**WORKTASK, "priority": 8}).status_code == 201
        assert admin.post("/api/worktasks", json={**WORKTASK, "priority": 9}).status_code == 201


# --- paged replay ---------------------------------------------------------------------------


def test_a_replay_from_0_sends_the_clients_own_updates_in_order_page_by_page(system):
    name, key = new_client(system, "q")
    _, noise_key = new_client(system, "q")
    mine: list[str] = []
    engine = httpx.Client(base_url=system.url, headers={"client": name, "api-key": key})
    with bearer(system, key) as a, bearer(system, noise_key) as other, engine:
        for n in range(30):
            mine.append(submit(a))
            submit(other)  # another client's tasks between them
            if n % 3 == 0:  # and jobs of this client in another dialect
                assert engine.post("/job", json={"job": {"workflow": "noop"}}).status_code == 200
        wait_until(
            lambda: a.get("/api/metrics").json()["tasks_by_status"]["completed"] == 30,
            what="30 completed work tasks",
        )
    log = system.data_dir / "logs" / "gateway.log"
    line = re.compile(rf"ws: replayed {name}'s updates after 0 in (\d+) pages")
    with socket(system, key, "?after=0") as ws:
        messages = receive_until(ws, lambda ms: all(completed(t)(ms) for t in mine))
        found = wait_until(lambda: line.search(log.read_text()), what="the replay's log line")
    positions = [m["position"] for m in messages]
    assert positions == sorted(set(positions))
    assert {m["task"]["worktask_id"] for m in messages} == set(mine)
    for worktask_id in mine:
        shown = [m["task"]["status"] for m in messages if m["task"]["worktask_id"] == worktask_id]
        assert shown == ["queued", "spawned", "completed"], worktask_id
    assert int(found.group(1)) >= len(messages) / PAGE  # at most PAGE events per read
