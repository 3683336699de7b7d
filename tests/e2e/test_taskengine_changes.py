"""PATCH /jobs/<id> and POST /jobs/<id>/rerun of the Task Engine API, through every service."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from tests.support.system import OTHER, running_system
from tests.support.waiting import wait_until


@pytest.fixture(scope="module")
def client(postgres_url):
    with running_system(postgres_url, "changes") as system, system.client() as http:
        http.post("/settings", json={"name": "max_jobs", "setting": 1})
        http.post("/settings", json={"name": "retry_delay", "setting": 0})
        yield http


def submit(client, **body) -> int:  # type: ignore[no-untyped-def]
    response = client.post("/job", json={"job": {"workflow": "noop"}, **body})
    assert response.status_code == 200, response.text
    return response.json()["id"]


def state(client, job_id: int) -> str:  # type: ignore[no-untyped-def]
    return client.get(f"/jobs/{job_id}").json()["queue_state"]


def becomes(client, job_id: int, expected: str) -> None:  # type: ignore[no-untyped-def]
    wait_until(lambda: state(client, job_id) == expected, what=f"job {job_id} {expected}")


def patch(client, job_id: int, **body):  # type: ignore[no-untyped-def]
    return client.patch(f"/jobs/{job_id}", json=body)


def logged(client, job_id: int, text: str) -> None:  # type: ignore[no-untyped-def]
    """Waits for the job log (a projection, so a moment behind the job) to show `text`."""

    def found() -> bool:
        return any(text in row["message"] for row in client.get(f"/logs/{job_id}").json())

    wait_until(found, what=f"{text!r} in the log of job {job_id}")


def stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}"


def test_pause_resume_reprioritise_and_break_move_jobs_through_admission(client):
    holder = submit(client, job={"workflow": "sleep"}, parameters={"seconds": 60})
    becomes(client, holder, "started")  # admitted or running: wait until it runs
    logged(client, holder, "attempt 1 started")
    first, second, third = submit(client), submit(client), submit(client, priority=9)

    response = patch(client, third, priority="2")
    assert response.json() == {"id": third, "result": "Performed updates: priority=2"}
    assert client.get(f"/jobs/{third}").json()["priority"] == 2
    wait_until(lambda: client.get(f"/jobs/{third}").json()["position"] == 1, what="reordering")

    assert patch(client, first, queue_state="paused").json()["result"] == (
        "Performed updates: queue_state=paused"
    )
    assert state(client, first) == "paused"
    refused = patch(client, holder, queue_state="paused")
    assert refused.status_code == 400 and refused.json()["id"] == holder
    assert "is running" in refused.json()["error"]
    # An update must not race the dispatcher's next append for a running job.
    refused = patch(client, holder, persist=True)
    assert refused.status_code == 400 and "when it ends" in refused.json()["error"]

    # Breaking the running job frees its slot: the top of the queue (third) runs next, and
    # the paused job does not.
    assert patch(client, holder, queue_state="broken").status_code == 200
    becomes(client, holder, "broken")
    becomes(client, third, "completed")
    becomes(client, second, "completed")
    assert state(client, first) == "paused"
    assert patch(client, first, queue_state="queued").status_code == 200
    becomes(client, first, "completed")
    logged(client, holder, "job broken by tester")


def test_run_at_moves_a_job_between_scheduled_and_queued(client):
    later = stamp(datetime.now(UTC) + timedelta(hours=1))
    job_id = submit(client, job={"workflow": "noop"}, run_at=later)
    assert state(client, job_id) == "scheduled"
    soon = stamp(datetime.now(UTC) + timedelta(seconds=1))
    assert (
        patch(client, job_id, run_at=soon).json()["result"] == f"Performed updates: run_at={soon}"
    )
    becomes(client, job_id, "completed")

    waiting = submit(client, run_at=later)
    past = stamp(datetime.now(UTC) - timedelta(minutes=1))
    assert patch(client, waiting, run_at=past, persist=True).status_code == 200
    becomes(client, waiting, "completed")
    wait_until(
        lambda: (
            [job["id"] for job in client.get("/jobs", params={"persist": 1}).json()] == [waiting]
        ),
        what="the persisted job in the list",
    )


def test_rerun_makes_a_new_job_with_the_same_parameters_and_breaks_the_original(client):
    original = submit(client, job={"workflow": "echo"}, parameters={"content_id": "c-7"})
    becomes(client, original, "completed")
    response = client.post(f"/jobs/{original}/rerun")
    assert response.status_code == 200
    rerun = response.json()["id"]
    assert response.json() == {"id": rerun, "result": "accepted"} and rerun != original
    assert state(client, original) == "broken"
    becomes(client, rerun, "completed")
    again = client.get(f"/jobs/{rerun}").json()
    assert again["parameters"] == {"content_id": "c-7"} and again["workflow"] == "echo"
    logged(client, original, f"rerun as job {rerun}")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"colour": "red"}, "cannot update colour"),
        ({"queue_state": "sideways"}, "queue_state must be"),
        ({"priority": 0}, "priority must be an integer"),
        ({"run_at": "soon"}, "run_at 'soon' is not"),
        ({"persist": "yes"}, "persist must be true or false"),
        ({"sempahore_url": "ftp://example.com/ok"}, "is not an http(s) URL"),
        ({"semaphore_url": "http://169.254.169.254/latest"}, "internal address 169.254.169.254"),
        ({"semaphore_url": "http://a.example/", "sempahore_url": "http://b.example/"}, "differ"),
        ({}, "nothing to update"),
    ],
)
def test_bad_updates_are_400_with_the_job_id_and_change_nothing(client, body, message):
    job_id = submit(client, run_at=stamp(datetime.now(UTC) + timedelta(hours=1)))
    before = client.get(f"/jobs/{job_id}").json()
    response = patch(client, job_id, **body)
    assert response.status_code == 400 and response.json()["id"] == job_id
    assert message in response.json()["error"]
    assert client.get(f"/jobs/{job_id}").json() == before


def test_another_clients_job_cannot_be_changed_or_rerun(client, postgres_url):
    job_id = submit(client)
    import httpx

    headers = {"client": OTHER[0], "api-key": OTHER[1]}
    base = str(client.base_url)
    assert (
        httpx.patch(f"{base}/jobs/{job_id}", json={"priority": 1}, headers=headers).status_code
        == 400
    )
    assert httpx.post(f"{base}/jobs/{job_id}/rerun", headers=headers).status_code == 400


def test_switching_off_queue_scheduled_jobs_holds_due_jobs_until_switched_on(client):
    listing = client.get("/schedules").json()
    duty = listing["schedules"]["queue_scheduled_jobs"]
    assert listing["result"] == "ok" and duty["active"] is True
    assert duty["class"] == "QueueJobs" and duty["queue"] == "scheduler" and duty["description"]

    off = client.put("/scheduler", json={"schedule": "queue_scheduled_jobs", "active": False})
    assert off.json() == {
        "result": "ok",
        "schedules": ["fire_scheduled_tasks", "clear_finished_jobs"],
    }
    job_id = submit(client, run_at=stamp(datetime.now(UTC) + timedelta(seconds=1)))
    held_until = datetime.now(UTC) + timedelta(seconds=3)
    while datetime.now(UTC) < held_until:  # due, yet held: nothing may queue it
        assert state(client, job_id) == "scheduled"
        time.sleep(0.1)  # poll gently
    assert client.get("/schedules").json()["schedules"]["queue_scheduled_jobs"]["active"] is False

    on = client.put("/scheduler", json={"schedule": "queue_scheduled_jobs", "active": True})
    assert on.json() == {
        "result": "ok",
        "schedules": ["queue_scheduled_jobs", "fire_scheduled_tasks", "clear_finished_jobs"],
    }
    becomes(client, job_id, "completed")


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"schedule": "nope", "active": True}, 400),
        ({"schedule": "queue_scheduled_jobs"}, 400),
        ({"schedule": "queue_scheduled_jobs", "active": "yes"}, 400),
    ],
)
def test_bad_schedule_switches_are_refused(client, body, status):
    response = client.put("/scheduler", json=body)
    assert response.status_code == status and "error" in response.json()


def test_only_an_admin_may_switch_schedules(client):
    import httpx

    headers = {"client": OTHER[0], "api-key": OTHER[1]}
    body = {"schedule": "queue_scheduled_jobs", "active": False}
    response = httpx.put(f"{client.base_url}/scheduler", json=body, headers=headers)
    assert response.status_code == 403
    assert client.get("/schedules").json()["schedules"]["queue_scheduled_jobs"]["active"] is True
