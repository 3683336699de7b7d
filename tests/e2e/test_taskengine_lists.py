"""`GET /jobs` filters and `GET /dashboard` of the Task Engine API, tenant-scoped."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.support.system import OTHER, running_system
from tests.support.waiting import wait_until


@pytest.fixture(scope="module")
def jobs(postgres_url):
    """A system with max_jobs 1 holding one started, three queued and one scheduled job."""
    with running_system(postgres_url, "lists") as system, system.client() as client:
        client.post("/settings", json={"name": "max_jobs", "setting": 1})
        submit = lambda body: client.post("/job", json=body).json()["id"]  # noqa: E731
        running = submit({"job": {"workflow": "sleep"}, "parameters": {"seconds": 60}})
        wait_until(lambda: client.get(f"/jobs/{running}").json()["queue_state"] == "started")
        later = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S.000")
        ids = {
            "running": running,
            "urgent": submit({"job": {"workflow": "noop"}, "priority": 3}),
            "needle": submit(
                {"job": {"workflow": "echo"}, "parameters": {"content_id": "needle-42"}}
            ),
            "low": submit({"job": {"workflow": "noop"}, "priority": 7}),
            "scheduled": submit({"job": {"workflow": "noop"}, "run_at": later}),
        }
        with system.client(OTHER) as other:
            ids["other"] = other.post("/job", json={"job": {"workflow": "noop"}}).json()["id"]
            wait_until(
                lambda: other.get("/jobs", params={"state": 0}).json(),
                what="the other client's job in the projection",
            )
        wait_until(
            lambda: len(client.get("/jobs", params={"state": 0}).json()) == 3,
            what="the projection to hold the queued jobs",
        )
        yield system, client, ids


def listed(http, **params) -> list[int]:  # type: ignore[no-untyped-def]
    response = http.get("/jobs", params=params)
    assert response.status_code == 200, response.text
    return [job["id"] for job in response.json()]


def test_default_list_is_the_callers_newest_first_with_the_seed_fields(jobs):
    system, client, ids = jobs
    rows = client.get("/jobs").json()
    mine = [ids[k] for k in ("scheduled", "low", "needle", "urgent", "running")]
    assert [r["id"] for r in rows] == mine
    assert set(rows[0]) == {
        "id",
        "client",
        "workflow",
        "priority",
        "position",
        "created_at",
        "updated_at",
        "queue_state",
        "parameters",
        "failed",
        "run_at",
    }


def test_filters(jobs):
    system, client, ids = jobs
    assert listed(client, state=0, asc=1) == [ids["urgent"], ids["needle"], ids["low"]]
    assert listed(client, state=1) == [ids["running"]]
    assert listed(client, state=5) == [ids["scheduled"]]
    assert listed(client, state=2) == []
    assert listed(client, search="needle-42") == [ids["needle"]]
    assert listed(client, job_ids=f"{ids['low']},{ids['urgent']},{ids['other']}") == [
        ids["low"],
        ids["urgent"],
    ]
    assert listed(client, asc=1, limit=2) == [ids["running"], ids["urgent"]]
    assert listed(client, order_by="priority", asc=1, limit=1) == [ids["urgent"]]
    # The seed's integer form: 3 is priority, 0 the id.
    assert listed(client, order_by=3, asc=1, limit=1) == [ids["urgent"]]
    assert listed(client, order_by=3, limit=1) == [ids["low"]]
    assert listed(client, order_by=0, asc=1, limit=1) == [ids["running"]]
    assert listed(client, persist=1) == []
    assert listed(client, client=OTHER[0]) == []
    now = datetime.now(UTC)
    assert len(listed(client, **{"from": (now - timedelta(hours=1)).isoformat()})) == 5
    assert listed(client, to=(now - timedelta(hours=1)).isoformat()) == []


@pytest.mark.parametrize(
    "params",
    [
        {"state": 9},
        {"limit": 0},
        {"order_by": "nope"},
        {"order_by": "9"},
        {"failed": "maybe"},
        {"asc": "maybe"},
        {"from": "yesterday"},
        {"job_ids": "a,b"},
    ],
)
def test_bad_filters_are_400(jobs, params):
    system, client, ids = jobs
    response = client.get("/jobs", params=params)
    assert response.status_code == 400 and "error" in response.json()


def test_dashboard_lists_started_queued_scheduled_in_admission_order(jobs):
    system, client, ids = jobs
    board = client.get("/dashboard").json()
    assert board["max_jobs"] == 1 and board["priority_slots"] == 0 and board["version"]
    assert [j["id"] for j in board["started"]] == [ids["running"]]
    # Positions are places in the one admission order, which the other client's job shares.
    assert [(j["id"], j["position"]) for j in board["queued"]] == [
        (ids["urgent"], 1),
        (ids["needle"], 2),
        (ids["low"], 4),
    ]
    assert [j["id"] for j in board["scheduled"]] == [ids["scheduled"]]
    assert board["queued"][0]["queue_state"] == "queued"
    assert client.get(f"/jobs/{ids['urgent']}").json()["top_of_queue"] is True
    with system.client(OTHER) as other:
        theirs = other.get("/dashboard").json()
    assert [(j["id"], j["position"]) for j in theirs["queued"]] == [(ids["other"], 3)]
    assert theirs["started"] == []


@pytest.fixture(scope="module")
def finished(postgres_url):
    """A system holding one failed and one succeeded job."""
    with running_system(postgres_url, "lists-failed") as system, system.client() as client:
        client.post("/settings", json={"name": "retry_delay", "setting": "0"})
        client.post("/settings", json={"name": "retry_limit", "setting": "1"})
        submit = lambda body: client.post("/job", json=body).json()["id"]  # noqa: E731
        ids = {
            "failed": submit({"job": {"workflow": "fail"}, "parameters": {"exit_code": 3}}),
            "succeeded": submit({"job": {"workflow": "noop"}}),
        }
        wait_until(
            lambda: len(client.get("/jobs", params={"state": 2}).json()) == 2,
            what="both jobs completed in the projection",
            timeout=60,
        )
        yield client, ids


def test_failed_filters_with_or_without_a_state(finished):
    client, ids = finished
    assert listed(client, failed=1) == [ids["failed"]]
    assert listed(client, failed="false") == [ids["succeeded"]]
    assert listed(client, failed=1, state=2) == [ids["failed"]]
    assert listed(client, failed=0, state=2) == [ids["succeeded"]]
    # Failed jobs are completed (2): with any other state there are none.
    assert listed(client, failed=1, state=0) == []
