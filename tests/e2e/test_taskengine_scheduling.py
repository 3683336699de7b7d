"""The scheduler's duties, live: semaphores (a due job is queued only once its semaphore_url
answers 2xx/3xx, asked again every schedule_interval; internal addresses are refused at submit
and PATCH) and retention of finished jobs."""

from __future__ import annotations

import pytest

from tests.support.receiver import CallbackReceiver
from tests.support.system import running_system
from tests.support.waiting import wait_until


@pytest.fixture(scope="module")
def client(postgres_url):
    with running_system(postgres_url, "semaphores") as system, system.client() as http:
        http.post("/settings", json={"name": "schedule_interval", "setting": 1})
        yield http


@pytest.fixture
def gate():
    with CallbackReceiver() as receiver:
        receiver.gate = 423
        yield receiver


def submit(client, **body) -> int:  # type: ignore[no-untyped-def]
    response = client.post("/job", json={"job": {"workflow": "noop"}, **body})
    assert response.status_code == 200, response.text
    return response.json()["id"]


def state(client, job_id: int) -> str:  # type: ignore[no-untyped-def]
    return client.get(f"/jobs/{job_id}").json()["queue_state"]


def test_a_job_waits_while_its_semaphore_is_closed_and_runs_once_it_opens(client, gate):
    job_id = submit(client, semaphore_url=gate.url)
    assert state(client, job_id) == "scheduled"
    assert client.get(f"/jobs/{job_id}").json()["semaphore_url"] == gate.url

    wait_until(lambda: gate.checks >= 3, what="the semaphore to be asked again and again")
    assert state(client, job_id) == "scheduled"

    gate.gate = 204
    wait_until(lambda: state(client, job_id) == "completed", what="the job to run")
    asked = gate.checks
    assert client.get(f"/jobs/{job_id}").json()["failed"] is False
    assert gate.checks == asked  # a queued job's semaphore is not asked any more


def test_the_seed_spelling_and_a_redirect_answer_open_the_gate(client, gate):
    gate.gate = 302
    job_id = submit(client, sempahore_url=gate.url)
    wait_until(lambda: state(client, job_id) == "completed", what="the job to run")


def test_patching_a_semaphore_onto_a_queued_job_holds_it_and_removing_it_frees_it(client, gate):
    settings = {"max_jobs": "1"}
    for name, value in settings.items():
        client.post("/settings", json={"name": name, "setting": value})
    holder = submit(client, job={"workflow": "sleep"}, parameters={"seconds": 30})
    wait_until(lambda: state(client, holder) == "started", what="the holder to start")
    job_id = submit(client)
    assert state(client, job_id) == "queued"

    response = client.patch(f"/jobs/{job_id}", json={"sempahore_url": gate.url})
    assert response.json() == {
        "id": job_id,
        "result": f"Performed updates: semaphore_url={gate.url}",
    }
    assert state(client, job_id) == "scheduled"
    wait_until(lambda: gate.checks >= 1, what="the semaphore to be asked")

    response = client.patch(f"/jobs/{job_id}", json={"semaphore_url": None})
    assert response.json()["result"] == "Performed updates: semaphore_url=none"
    wait_until(lambda: state(client, job_id) == "queued", what="the job to be queued again")
    client.patch(f"/jobs/{holder}", json={"queue_state": "broken"})
    wait_until(lambda: state(client, job_id) == "completed", what="the job to run")
    client.post("/settings", json={"name": "max_jobs", "setting": "2"})


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data",
        "http://10.0.0.1/gate",
        "http://[::ffff:169.254.169.254]/",
        "file:///etc/passwd",
    ],
)
def test_internal_or_odd_semaphore_and_callback_urls_are_refused_at_submit(client, url):
    before = client.get("/jobs", params={"limit": 1}).json()
    for body in (
        {"semaphore_url": url},
        {"parameters": {"rest_endpoints": ["https://example.com/ok", url]}},
    ):
        response = client.post("/job", json={"job": {"workflow": "noop"}, **body})
        assert response.status_code == 400, response.text
        assert url in response.json()["error"]
    assert client.get("/jobs", params={"limit": 1}).json() == before


@pytest.mark.parametrize("value", [{}, [], ["https://example.com/gate"], 7, True])
def test_a_semaphore_url_that_is_not_a_string_is_a_400_at_submit_and_patch(client, value):
    for body in ({"semaphore_url": value}, {"sempahore_url": value}):
        response = client.post("/job", json={"job": {"workflow": "noop"}, **body})
        assert response.status_code == 400, response.text
        assert response.json() == {
            "id": None,
            "error": "semaphore_url must be an http(s) URL, or null for none",
        }
    waiting = submit(client, run_at="2031-01-01T00:00:00.000")
    response = client.patch(f"/jobs/{waiting}", json={"semaphore_url": value})
    assert response.status_code == 400, response.text
    assert response.json()["id"] == waiting and "semaphore_url must be" in response.json()["error"]


def test_finished_jobs_leave_the_lists_after_retention_unless_persisted(client):
    kept = submit(client)
    gone = submit(client)
    waiting = submit(client, run_at="2031-01-01T00:00:00.000")
    for job_id in (kept, gone):
        wait_until(lambda j=job_id: state(client, j) == "completed", what="the jobs to finish")
    assert client.patch(f"/jobs/{kept}", json={"persist": True}).status_code == 200

    def listed() -> set[int]:
        return {row["id"] for row in client.get("/jobs", params={"limit": 100}).json()}

    wait_until(lambda: {kept, gone, waiting} <= listed(), what="the jobs to be listed")
    client.post("/settings", json={"name": "retention_seconds", "setting": 1})
    try:
        wait_until(lambda: gone not in listed(), what="retention to clear the finished job")
        assert {kept, waiting} <= listed()
        assert client.get(f"/logs/{gone}").json() == []
        assert state(client, gone) == "completed"  # the job's events are still in the store
    finally:
        client.post("/settings", json={"name": "retention_seconds", "setting": 2592000})
