"""`WebSocket /ws/tasks` (seed 000) against the system as `make up` starts it: live status
changes of the caller's work tasks only, resuming with `?after=<position>` without a gap or a
repeat, and the `?token=` credentials browsers use (never written to the log)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from urllib.parse import quote

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from tests.support.system import ADMIN, OTHER, System, running_system
from tests.support.waiting import wait_until
from tests.support.worktask_clients import bearer, receive_until, socket

QUICK = {
    "type": "ml_inference",
    "project_id": "proj-ws",
    "task_spec": {"pipeline_id": "echo", "parameters": {"say": "hi"}},
    "resource_requirements": {"cpu": "1", "memory": "1Gi"},
    "data_access": {"input_datasets": ["dataset-1"]},
}
SHARED_TOKEN = "ws-worker-token-0123456789"


@pytest.fixture(scope="module")
def system(postgres_url) -> Iterator[System]:
    env = {"WORKER_AUTH_TOKEN": SHARED_TOKEN}
    with running_system(postgres_url, "worktasks-ws", env=env) as system:
        with system.client() as admin:
            admin.post("/settings", json={"name": "max_jobs", "setting": 20})
        yield system


def submit(client: httpx.Client, **fields) -> str:  # type: ignore[no-untyped-def]
    response = client.post("/api/worktasks", json={**QUICK, **fields})
    assert response.status_code == 201, response.text
    return response.json()["worktask_id"]


def finished(worktask_id: str) -> Callable[[list[dict]], bool]:
    return lambda messages: any(
        m["task"]["worktask_id"] == worktask_id and m["task"]["status"] == "completed"
        for m in messages
    )


def statuses(messages: list[dict], worktask_id: str) -> list[str]:
    return [m["task"]["status"] for m in messages if m["task"]["worktask_id"] == worktask_id]


def test_live_updates_are_the_callers_status_changes_in_order(system):
    with (
        bearer(system, ADMIN[1]) as mine,
        bearer(system, OTHER[1]) as theirs,
        socket(system, ADMIN[1]) as ws,
    ):
        foreign = submit(theirs)
        with system.client() as engine:  # a job of the same client in another dialect
            other_dialect = engine.post("/job", json={"job": {"workflow": "echo"}}).json()["id"]
        worktask_id = submit(mine)
        messages = receive_until(ws, finished(worktask_id))
    assert {m["event"] for m in messages} == {"task_update"}
    shown = {m["task"]["worktask_id"] for m in messages}
    assert foreign not in shown and str(other_dialect) not in shown
    assert statuses(messages, worktask_id) == ["queued", "spawned", "executing", "completed"]
    positions = [m["position"] for m in messages]
    assert positions == sorted(set(positions))
    first, started, executing, last = (
        m["task"] for m in messages if m["task"]["worktask_id"] == worktask_id
    )
    assert first["submitted_at"].endswith("Z") and started["started_at"].endswith("Z")
    assert last["completed_at"].endswith("Z")


def test_reports_and_retries_arrive_with_their_fields(system):
    long = {"pipeline_id": "sleep", "parameters": {"seconds": 900}}
    with (
        bearer(system, ADMIN[1]) as mine,
        bearer(system, SHARED_TOKEN) as worker,
        socket(system, ADMIN[1]) as ws,
    ):
        worktask_id = submit(mine, task_spec=long, max_retries=1)

        def next_update(status: str) -> dict:
            def arrived(messages: list[dict]) -> bool:
                return status in statuses(messages, worktask_id)

            mine_only = [
                m for m in receive_until(ws, arrived) if m["task"]["worktask_id"] == worktask_id
            ]
            return mine_only[-1]["task"]

        def send(status: str, **fields) -> dict:  # type: ignore[no-untyped-def]
            body = {"worktask_id": worktask_id, "status": status, **fields}
            response = worker.post(f"/api/worktasks/{worktask_id}", json=body)
            assert response.status_code == 200, response.text
            return response.json()

        assert next_update("spawned")["started_at"].endswith("Z")
        send("executing")
        assert next_update("executing") == {"worktask_id": worktask_id, "status": "executing"}
        assert send("failed", error_message="OOMKilled") == {"status": "requeued_for_retry"}
        retry = next_update("queued")
        assert (retry["retry_count"], retry["retry_reason"]) == (1, "OOMKilled")
        assert retry["error_message"] == "OOMKilled"
        send("cancelled")
        assert next_update("cancelled")["completed_at"].endswith("Z")


def test_a_client_that_reconnects_after_a_position_gets_what_it_missed_then_live(system):
    with bearer(system, ADMIN[1]) as mine, bearer(system, OTHER[1]) as theirs:
        with socket(system, ADMIN[1]) as ws:
            seen = submit(mine)
            last = receive_until(ws, finished(seen))[-1]["position"]
        missed = submit(mine)
        foreign = submit(theirs)

        def done(worktask_id: str) -> Callable[[], bool]:
            return lambda: mine.get(f"/api/worktasks/{worktask_id}").json()["status"] == "completed"

        wait_until(done(missed), what="the missed task to complete")
        query = f"?after={last}&token={quote(ADMIN[1])}"
        with socket(system, None, query) as ws:
            replayed = receive_until(ws, finished(missed))
            live = submit(mine)
            current = receive_until(ws, finished(live))
    assert all(m["position"] > last for m in replayed + current)
    assert statuses(replayed, missed) == ["queued", "spawned", "executing", "completed"]
    assert statuses(replayed, seen) == []
    assert statuses(current, live) == ["queued", "spawned", "executing", "completed"]
    positions = [m["position"] for m in replayed + current]
    assert positions == sorted(set(positions))
    assert foreign not in {m["task"]["worktask_id"] for m in replayed + current}


def test_the_other_client_sees_only_its_own_tasks(system):
    with bearer(system, ADMIN[1]) as mine, bearer(system, OTHER[1]) as theirs:
        with socket(system, None, f"?token={quote(OTHER[1])}") as ws:
            hidden = submit(mine)
            own = submit(theirs)
            messages = receive_until(ws, finished(own))
    assert hidden not in {m["task"]["worktask_id"] for m in messages}


@pytest.mark.parametrize(
    ("query", "key"),
    [("", None), ("?token=wrong-key-0123456789", None), ("", "wrong-key-0123456789")],
    ids=["none", "wrong token", "wrong header"],
)
def test_a_socket_without_valid_credentials_is_closed_4401(system, query, key):
    with socket(system, key, query) as ws, pytest.raises(ConnectionClosed) as closed:
        ws.recv(timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401


def test_a_malformed_after_is_closed_4400(system):
    with (
        socket(system, ADMIN[1], "?after=yesterday") as ws,
        pytest.raises(ConnectionClosed) as closed,
    ):
        ws.recv(timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4400


def test_the_token_in_the_query_is_masked_in_the_log(system):
    with bearer(system, ADMIN[1]) as mine:
        worktask_id = submit(mine)
        with socket(system, None, f"?after=0&token={quote(ADMIN[1])}") as ws:
            receive_until(ws, finished(worktask_id))
    log = system.data_dir / "logs" / "gateway.log"
    wait_until(lambda: "token=***" in log.read_text(), what="the masked token in the log")
    assert ADMIN[1] not in log.read_text()
