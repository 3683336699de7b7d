"""Every request documented in the Task Engine API (seed 002), with its sample payloads as
written there, against the system as `make up` starts it: each gets the documented shape."""

from __future__ import annotations

import pytest

from tests.support.receiver import CallbackReceiver
from tests.support.system import ADMIN, running_system
from tests.support.waiting import wait_until

CLIENT = ADMIN[0]
JOB_KEYS = {
    "id",
    "client",
    "workflow",
    "priority",
    "position",
    "created_at",
    "updated_at",
    "queue_state",
    "failed",
    "run_at",
}
LOG_KEYS = {
    "id",
    "job_id",
    "severity",
    "severity_description",
    "progname",
    "message",
    "created_at",
    "updated_at",
    "task_id",
    "visible",
}


@pytest.fixture(scope="module")
def client(postgres_url):
    with running_system(postgres_url, "seed") as system, system.client() as http:
        yield http


@pytest.fixture(scope="module")
def job_id(client):
    """A job submitted as the seed's log shows one (folder, content id, callback URLs)."""
    with CallbackReceiver() as receiver:
        body = {
            "client": CLIENT,
            "parameters": {
                "folder": "a40fdaff-f904-4ea5-b893-a89152708952",
                "content_id": "a40fdaff-f904-4ea5-b893-a89152708952",
                "rest_endpoints": [receiver.url],
            },
            "job": {"workflow": "echo"},
        }
        response = client.post("/job", json=body)
        assert response.status_code == 200
        accepted = response.json()
        assert set(accepted) == {"id", "result"} and accepted["result"] == "accepted"
        number = accepted["id"]
        wait_until(lambda: client.get(f"/jobs/{number}").json()["queue_state"] == "completed")
        wait_until(lambda: len(receiver.received) == 4, what="the job's callbacks")
    return number


def test_get_root(client):
    assert client.get("/").json() == {"result": "alive"}


def test_get_health(client, job_id):
    def complete() -> dict | None:
        report = client.get("/health").json()
        return report if report["jobs"]["completed"] >= 1 and report["queues"] else None

    report = wait_until(complete, what="health to count the job")
    # The seed's sections, plus `rejected`: the messages consumers set aside.
    assert set(report) == {"version", "databases", "queues", "tasks", "jobs", "rejected"}
    assert set(report["databases"].values()) == {"OK"}
    assert {"scheduler", "work", "controller", "callback"} <= set(report["queues"])
    for queue in report["queues"].values():
        assert set(queue) == {"workers", "working", "pending"}
    assert set(report["tasks"]) == {"failed", "pending", "processed"}
    assert set(report["jobs"]) == {
        "completed",
        "failed",
        "pending",
        "broken",
        "queued",
        "started",
        "scheduled",
        "paused",
        "max_jobs",
        "priority_slots",
    }


def test_get_dashboard(client, job_id):
    dashboard = client.get("/dashboard").json()
    assert set(dashboard) == {
        "max_jobs",
        "priority_slots",
        "started",
        "queued",
        "scheduled",
        "version",
    }
    scheduled = client.post(
        "/job", json={"job": {"workflow": "noop"}, "run_at": "2030-06-19T17:00:30.000"}
    ).json()["id"]

    def listed() -> list[dict]:
        return [e for e in client.get("/dashboard").json()["scheduled"] if e["id"] == scheduled]

    [entry] = wait_until(listed, what="the scheduled job on the dashboard")
    assert set(entry) == JOB_KEYS
    assert entry["queue_state"] == "scheduled" and entry["run_at"] == "2030-06-19T17:00:30.000Z"


def test_get_jobs_as_in_the_documented_example(client, job_id):
    rows = client.get("/jobs", params={"limit": 3, "client": CLIENT, "state": 2}).json()
    assert 1 <= len(rows) <= 3 and job_id in [row["id"] for row in rows]
    assert all(set(row) == JOB_KEYS | {"parameters"} for row in rows)
    assert all(row["queue_state"] == "completed" for row in rows)


def test_get_job(client, job_id):
    job = client.get(f"/jobs/{job_id}").json()
    assert JOB_KEYS | {"top_of_queue", "parameters"} <= set(job)
    assert job["parameters"]["content_id"] == "a40fdaff-f904-4ea5-b893-a89152708952"


def test_patch_with_the_sample_payload(client):
    job = client.post(
        "/job", json={"job": {"workflow": "noop"}, "run_at": "2031-01-01T00:00:00.000"}
    ).json()["id"]
    sample = {"client": CLIENT, "priority": "2", "run_at": "2020-09-09T14:30:00.000"}
    response = client.patch(f"/jobs/{job}", json=sample)
    assert response.status_code == 200
    assert response.json() == {
        "id": job,
        "result": "Performed updates: priority=2, run_at=2020-09-09T14:30:00.000",
    }
    refused = client.patch(f"/jobs/{job_id_of_completed(client)}", json={"queue_state": "paused"})
    assert refused.status_code == 400 and set(refused.json()) == {"id", "error"}


def job_id_of_completed(client) -> int:  # type: ignore[no-untyped-def]
    return client.get("/jobs", params={"state": 2, "limit": 1}).json()[0]["id"]


def test_post_rerun(client, job_id):
    response = client.post(f"/jobs/{job_id}/rerun")
    assert response.status_code == 200
    rerun = response.json()
    assert set(rerun) == {"id", "result"} and rerun["result"] == "accepted"
    assert rerun["id"] != job_id
    assert client.get(f"/jobs/{job_id}").json()["queue_state"] == "broken"


def test_get_logs(client, job_id):
    def every_service() -> list[dict] | None:
        rows = client.get(f"/logs/{job_id}", headers={"Accept": "application/json"}).json()
        seen = {row["progname"] for row in rows}
        return rows if {"api", "controller", "worker", "callback"} <= seen else None

    rows = wait_until(every_service, what="log rows from every service")
    assert all(set(row) == LOG_KEYS for row in rows)
    assert {row["severity_description"] for row in rows} <= {"DEBUG", "INFO", "WARN", "ERROR"}


def test_get_schedules(client):
    listing = client.get("/schedules").json()
    assert listing["result"] == "ok"
    duty = listing["schedules"]["queue_scheduled_jobs"]
    assert {"class", "every", "queue", "description"} <= set(duty)
    assert duty["class"] == "QueueJobs" and duty["queue"] == "scheduler"
    assert isinstance(duty["every"][0], (int, float)) and set(duty["every"][1]) == {"first_in"}


def test_put_scheduler_with_the_sample_payload(client):
    response = client.put("/scheduler", json={"schedule": "queue_scheduled_jobs", "active": True})
    assert response.status_code == 200
    assert response.json()["result"] == "ok"
    assert "queue_scheduled_jobs" in response.json()["schedules"]


def test_post_settings_with_the_sample_payload(client):
    response = client.post("/settings", json={"name": "max_jobs", "setting": "4"})
    assert response.json()["result"] == "ok"
    assert response.json()["message"] in (
        "max_jobs setting created",  # the first time
        "max_jobs setting updated",
    )
    wait_until(lambda: client.get("/dashboard").json()["max_jobs"] == 4)
    bad = client.post("/settings", json={"name": "max_jobs", "setting": "many"})
    assert bad.status_code == 400 and set(bad.json()) == {"error"}


@pytest.mark.parametrize("given", ["987654321012", "abc", "12x", "-1", "9" * 40])
def test_an_unknown_or_malformed_job_id_is_the_seeds_400_on_every_job_route(client, given):
    """GET, rerun and logs answer `{"error"}`; PATCH names the job too (null if malformed)."""
    number = int(given) if given.isdigit() and len(given) <= 18 else None
    answers = {
        "GET /jobs": client.get(f"/jobs/{given}"),
        "POST rerun": client.post(f"/jobs/{given}/rerun"),
        "GET /logs": client.get(f"/logs/{given}"),
    }
    for route, response in answers.items():
        assert response.status_code == 400, (route, response.text)
        assert set(response.json()) == {"error"} and "not found" in response.json()["error"]
    patched = client.patch(f"/jobs/{given}", json={"priority": 2})
    assert patched.status_code == 400, patched.text
    assert patched.json()["id"] == number and "not found" in patched.json()["error"]
    assert set(patched.json()) == {"id", "error"}
