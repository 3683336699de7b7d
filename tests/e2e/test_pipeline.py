"""One job from POST /job to completion, through every service started as `make up` does."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

from tests.support.receiver import CallbackReceiver
from tests.support.system import ADMIN, OTHER
from tests.support.waiting import wait_until


def job_state(client, job_id: int) -> dict:
    response = client.get(f"/jobs/{job_id}")
    assert response.status_code == 200, response.text
    return response.json()


def wait_completed(client, job_id: int, timeout: float = 30.0) -> dict:
    return wait_until(
        lambda: (j := job_state(client, job_id))["queue_state"] == "completed" and j,
        timeout=timeout,
        what=f"job {job_id} to complete",
    )


def test_a_job_runs_to_completion_with_logs_and_callbacks(system_factory):
    system = system_factory()
    with CallbackReceiver() as receiver, system.client() as client:
        assert client.get("/").json() == {"result": "alive"}
        body = {
            "client": ADMIN[0],
            "job": {"workflow": "echo"},
            "parameters": {
                "content_id": "abc-123",
                "rest_endpoints": [receiver.url],
                "api_key": "sk-live-0123456789abcdef",
                "custom_data": {"asset": "abc-123", "tags": ["a", "b"]},
            },
        }
        accepted = client.post("/job", json=body)
        assert accepted.status_code == 200, accepted.text
        job_id = accepted.json()["id"]
        assert accepted.json() == {"id": job_id, "result": "accepted"}

        job = wait_completed(client, job_id)
        assert job["failed"] is False
        assert job["workflow"] == "echo" and job["client"] == ADMIN[0] and job["priority"] == 5
        assert job["parameters"]["content_id"] == "abc-123"
        assert job["parameters"]["api_key"] == "*" * 20 + "cdef"  # secrets: last 4 at most
        assert job["created_at"].endswith("Z") and len(job["created_at"]) == 24

        # The job's start, its step's start and completion, then the job's end, in order.
        expected = [("start", None), ("start", 1), ("complete", 1), ("complete", None)]
        wait_until(
            lambda: [(r["event"], r["step"]) for r in receiver.received] == expected,
            what="callbacks",
        )
        step_done, job_done = receiver.received[2:]
        assert step_done["step_name"] == "echo" and step_done["status"] == "running"
        assert step_done["custom_data"] is None
        assert job_done["status"] == "succeeded" and job_done["id"] == job_id
        assert job_done["custom_data"] == {"asset": "abc-123", "tags": ["a", "b"]}
        assert receiver.verify_signatures(ADMIN[0]) == 4  # Standard Webhooks, client's secret
        assert len({h["webhook-id"] for h in receiver.headers}) == 4

        def logs() -> list[dict]:
            rows = client.get(f"/logs/{job_id}").json()
            return (
                rows
                if {r["progname"] for r in rows} >= {"api", "controller", "worker", "callback"}
                else []
            )

        rows = wait_until(logs, what="log rows from every service")
        assert set(rows[0]) == {
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
        messages = [r["message"] for r in rows]
        assert any('"content_id": "abc-123"' in m for m in messages if "job_created" in m)
        assert not any("sk-live-0123456789" in m for m in messages)
        assert "job has completed successfully" in messages
        worker_output = [r for r in rows if r["progname"] == "worker" and r["task_id"] == 1]
        assert any("abc-123" in r["message"] for r in worker_output), worker_output


def test_failing_job_is_retried_then_marked_failed(system_factory):
    system = system_factory()
    with system.client() as client:
        client.post("/settings", json={"name": "retry_delay", "setting": "0"})
        client.post("/settings", json={"name": "retry_limit", "setting": "1"})
        flaky = client.post(
            "/job", json={"job": {"workflow": "flaky"}, "parameters": {"failures": 1}}
        )
        failing = client.post(
            "/job", json={"job": {"workflow": "fail"}, "parameters": {"exit_code": 3}}
        )
        assert wait_completed(client, flaky.json()["id"])["failed"] is False
        assert wait_completed(client, failing.json()["id"])["failed"] is True

        def failure_logged() -> list[str]:
            rows = client.get(f"/logs/{failing.json()['id']}").json()
            messages = [r["message"] for r in rows]
            return messages if any(m.startswith("job failed") for m in messages) else []

        messages = wait_until(failure_logged, what="the failure in the job log")
        assert any("attempt 1 failed" in m for m in messages)
        assert any(m.startswith("job failed") and "exited with 3" in m for m in messages)


def test_run_at_in_the_future_stays_scheduled_until_due(system_factory):
    system = system_factory()
    with system.client() as client:
        # Far enough ahead that the POST and the check below come before it, even when slow.
        due = datetime.now(UTC) + timedelta(seconds=8)
        run_at = due.strftime("%Y-%m-%dT%H:%M:%S.") + f"{due.microsecond // 1000:03d}"
        job_id = client.post("/job", json={"job": {"workflow": "noop"}, "run_at": run_at}).json()[
            "id"
        ]
        assert job_state(client, job_id)["queue_state"] == "scheduled"
        job = wait_completed(client, job_id, timeout=60)
        assert datetime.now(UTC) >= due
        assert job["run_at"].startswith(run_at[:19])


def test_every_header_style_authenticates_and_tenants_are_isolated(system_factory):
    system = system_factory()
    name, key = ADMIN
    styles = [
        {"client": name, "api-key": key},
        {"Authorization": f"Bearer {key}"},
        {"Authorization": "Basic " + base64.b64encode(f"{name}:{key}".encode()).decode()},
    ]
    with system.client() as client:
        job_id = client.post("/job", json={"job": {"workflow": "noop"}}).json()["id"]
    import httpx

    for headers in styles:
        response = httpx.get(f"{system.url}/jobs/{job_id}", headers=headers)
        assert response.status_code == 200, (headers, response.text)
    with system.client(OTHER) as other:
        assert other.get(f"/jobs/{job_id}").status_code == 400
        assert other.get(f"/logs/{job_id}").status_code == 400
    for headers in ({}, {"client": name, "api-key": "wrong"}, {"Authorization": "Bearer nope"}):
        response = httpx.get(f"{system.url}/jobs/{job_id}", headers=headers)
        assert response.status_code == 401 and "error" in response.json()
