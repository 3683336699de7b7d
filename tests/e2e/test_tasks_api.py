"""The scheduled-tasks API (seed 001) against the system as `make up` starts it: every endpoint
and field, validation, and what the seed's implementation only stored but we enforce: retries
with backoff, dedupe and concurrency keys. A task's runs are jobs of the Task Engine dialect."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from uuid import uuid4

import httpx
import pytest
from taskengine_contracts.events import JobAdmitted, JobRetryScheduled, JobSucceeded

from tests.support.system import ADMIN, OTHER, running_system
from tests.support.waiting import wait_until

AGENT = str(uuid4())
TASK_KEYS = {
    "id",
    "title",
    "description",
    "schedule_kind",
    "schedule_expr",
    "timezone",
    "payload",
    "created_by",
    "priority",
    "max_retries",
    "backoff_strategy",
    "dedupe_key",
    "dedupe_window_seconds",
    "concurrency_key",
    "status",
    "next_run_at",
    "last_run_at",
    "snoozed_until",
    "snooze_reason",
    "run_count",
    "created_at",
    "updated_at",
}


@pytest.fixture(scope="module")
def system(postgres_url):
    with running_system(postgres_url, "tasks") as system:
        with system.client() as admin:
            for name, value in (("max_jobs", 10), ("retry_delay", 1)):
                admin.post("/settings", json={"name": name, "setting": value})
        yield system


def bearer(system, who=ADMIN) -> httpx.Client:  # type: ignore[no-untyped-def]
    return httpx.Client(
        base_url=system.url, headers={"Authorization": f"Bearer {who[1]}"}, timeout=30
    )


@pytest.fixture(scope="module")
def api(system):
    with bearer(system) as http:
        yield http


def task_body(**fields) -> dict:  # type: ignore[no-untyped-def]
    return {
        "title": "Nightly report",
        "description": "Builds the nightly report",
        "schedule_kind": "cron",
        "schedule_expr": "0 3 * * *",
        "payload": {"workflow": "echo", "parameters": {"report": "nightly"}},
        "created_by": AGENT,
        **fields,
    }


def create(api, **fields) -> dict:  # type: ignore[no-untyped-def]
    response = api.post("/tasks", json=task_body(**fields))
    assert response.status_code == 201, response.text
    return response.json()


def runs(api, task_id: str) -> list[dict]:  # type: ignore[no-untyped-def]
    response = api.get(f"/tasks/{task_id}/runs")
    assert response.status_code == 200, response.text
    return response.json()


def finished_runs(api, task_id: str, count: int) -> list[dict]:  # type: ignore[no-untyped-def]
    final = {"succeeded", "failed", "timed_out", "canceled", "skipped"}
    return wait_until(
        lambda: (
            lambda rs: rs if len(rs) >= count and all(r["status"] in final for r in rs) else None
        )(runs(api, task_id)),
        timeout=60,
        what=f"{count} finished runs of task {task_id}",
    )


# --- create, read, list ----------------------------------------------------------------------


def test_create_with_every_field_answers_the_whole_task(api):
    task = create(
        api,
        timezone="Europe/Chisinau",
        priority=2,
        max_retries=5,
        backoff_strategy="linear",
        dedupe_key="nightly",
        dedupe_window_seconds=600,
        concurrency_key="reports",
    )
    assert set(task) == TASK_KEYS
    assert task["status"] == "active" and task["timezone"] == "Europe/Chisinau"
    assert (task["priority"], task["max_retries"], task["backoff_strategy"]) == (2, 5, "linear")
    assert (task["dedupe_key"], task["dedupe_window_seconds"]) == ("nightly", 600)
    assert task["concurrency_key"] == "reports" and task["created_by"] == AGENT
    # 03:00 in Chisinau (UTC+2 in winter, +3 in summer) is 00:00 or 01:00 UTC.
    next_run = datetime.fromisoformat(task["next_run_at"])
    assert next_run > datetime.now(UTC) and next_run.hour in (0, 1) and next_run.minute == 0
    assert api.get(f"/tasks/{task['id']}").json() == task


def test_defaults_are_the_seeds(api):
    task = create(api)
    assert task["timezone"] == "UTC" and task["priority"] == 5 and task["max_retries"] == 3
    assert task["backoff_strategy"] == "exponential_jitter"
    assert task["dedupe_key"] is None and task["concurrency_key"] is None
    assert task["next_run_at"].endswith("T03:00:00Z")


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"schedule_expr": "61 * * * *"}, "schedule_expr"),
        ({"schedule_expr": "* * *"}, "schedule_expr"),
        ({"schedule_kind": "rrule", "schedule_expr": "FREQ=SOMETIMES"}, "schedule_expr"),
        ({"schedule_kind": "once", "schedule_expr": "next tuesday"}, "schedule_expr"),
        ({"schedule_kind": "hourly"}, "schedule_kind"),
        ({"schedule_expr": None}, "schedule_expr"),
        ({"timezone": "Mars/Olympus"}, "timezone"),
        ({"priority": 0}, "priority"),
        ({"priority": 10}, "priority"),
        ({"priority": "high"}, "priority"),
        ({"created_by": "agent-7"}, "created_by"),
        ({"created_by": None}, "created_by"),
        ({"title": None}, "title"),
        ({"payload": {"workflow": "no-such-workflow"}}, "payload"),
        ({"payload": "echo"}, "payload"),
        ({"payload": {"steps": [], "parameters": [1]}}, "payload"),
        ({"payload": {"workflow": "echo", "parameters": "x"}}, "payload"),
        ({"max_retries": -1}, "max_retries"),
        ({"backoff_strategy": "random"}, "backoff_strategy"),
        ({"dedupe_window_seconds": 60}, "dedupe_window_seconds"),
        ({"dedupe_key": "k", "dedupe_window_seconds": 0}, "dedupe_window_seconds"),
        ({"concurrency_key": "two words"}, "concurrency_key"),
        ({"schedule_exprr": "* * * * *"}, "schedule_exprr"),
    ],
)
def test_invalid_fields_are_422_naming_the_field_and_nothing_is_stored(system, api, fields, field):
    before = system.store.max_position()
    response = api.post("/tasks", json=task_body(**fields))
    assert response.status_code == 422, response.text
    [problem] = response.json()["detail"]
    assert problem["loc"] == ["body", field]
    assert field in problem["msg"]
    assert system.store.max_position() == before


def test_malformed_json_and_missing_credentials_get_this_dialects_shape(system, api):
    response = api.post("/tasks", content=b"{nope", headers={"Content-Type": "application/json"})
    assert response.status_code == 422 and response.json()["detail"][0]["type"] == "json_invalid"
    anonymous = httpx.post(f"{system.url}/tasks", json=task_body())
    assert anonymous.status_code == 401 and set(anonymous.json()) == {"detail"}
    assert api.get("/tasks/not-a-uuid").json() == {"detail": "Task not found"}


def test_the_list_filters_by_status_creator_and_kind_with_limit_and_offset(api):
    creator = str(uuid4())
    made = [create(api, created_by=creator, title=f"t{n}") for n in range(3)]
    event = create(api, created_by=creator, schedule_kind="event", schedule_expr="files.new")
    api.post(f"/tasks/{made[0]['id']}/pause")
    api.post(f"/tasks/{made[1]['id']}/cancel")

    def listed(**params) -> list[str]:  # type: ignore[no-untyped-def]
        response = api.get("/tasks", params={"created_by": creator, **params})
        assert response.status_code == 200, response.text
        return [task["id"] for task in response.json()]

    everything = wait_until(lambda: (lambda ids: ids if len(ids) == 4 else None)(listed()))
    assert everything == [event["id"], *(t["id"] for t in reversed(made))]  # newest first
    assert wait_until(lambda: listed(status="paused") == [made[0]["id"]])
    assert wait_until(lambda: listed(status="canceled") == [made[1]["id"]])
    assert listed(status="active") == [event["id"], made[2]["id"]]
    assert listed(schedule_kind="event") == [event["id"]]
    assert listed(limit=2) == everything[:2] and listed(limit=2, offset=2) == everything[2:]
    for params, field in [({"status": "done"}, "status"), ({"limit": 0}, "limit")]:
        response = api.get("/tasks", params=params)
        assert response.status_code == 422 and response.json()["detail"][0]["loc"][1] == field


def test_an_offset_past_what_postgresql_counts_is_422_naming_it_on_both_lists(api):
    task = create(api)
    for path in ("/tasks", f"/tasks/{task['id']}/runs"):
        response = api.get(path, params={"offset": "9" * 30})
        assert response.status_code == 422, response.text
        [problem] = response.json()["detail"]
        assert problem["loc"] == ["query", "offset"] and "at most" in problem["msg"]
        assert api.get(path, params={"offset": 2**31 - 1}).json() == []


# --- changes ---------------------------------------------------------------------------------


def test_put_updates_only_the_given_fields_and_recomputes_the_next_run(api):
    task = create(api, schedule_expr="0 3 * * *")
    response = api.put(f"/tasks/{task['id']}", json={"schedule_expr": "30 4 * * *"})
    assert response.status_code == 200, response.text
    updated = response.json()
    assert updated["next_run_at"].endswith("T04:30:00Z")
    assert updated["title"] == task["title"] and updated["payload"] == task["payload"]
    response = api.put(f"/tasks/{task['id']}", json={"timezone": "Asia/Tokyo"})
    assert response.json()["next_run_at"].endswith("T19:30:00Z")  # 04:30 in Tokyo
    bad = api.put(f"/tasks/{task['id']}", json={"priority": 12})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "priority"]
    assert api.get(f"/tasks/{task['id']}").json()["priority"] == task["priority"]


def test_snooze_postpones_the_pending_run_and_records_why(api):
    task = create(api)
    response = api.post(f"/tasks/{task['id']}/snooze", json={"delay_seconds": 3600, "reason": "db"})
    assert response.status_code == 200, response.text
    snoozed = response.json()
    moved = datetime.fromisoformat(snoozed["next_run_at"]) - datetime.fromisoformat(
        task["next_run_at"]
    )
    assert moved == timedelta(hours=1)
    assert snoozed["snooze_reason"] == "db" and snoozed["snoozed_until"] == snoozed["next_run_at"]
    for delay in (0, 604801, "soon"):
        bad = api.post(f"/tasks/{task['id']}/snooze", json={"delay_seconds": delay})
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == [
            "body",
            "delay_seconds",
        ]


def test_pause_resume_and_cancel_which_cannot_be_undone(api):
    task = create(api)
    paused = api.post(f"/tasks/{task['id']}/pause").json()
    assert paused["status"] == "paused" and paused["next_run_at"] is None
    assert api.post(f"/tasks/{task['id']}/pause").status_code == 409
    resumed = api.post(f"/tasks/{task['id']}/resume").json()
    assert resumed["status"] == "active" and resumed["next_run_at"] == task["next_run_at"]
    canceled = api.post(f"/tasks/{task['id']}/cancel").json()
    assert canceled["status"] == "canceled" and canceled["next_run_at"] is None
    for action in ("resume", "run_now", "pause", "cancel", "snooze"):
        response = api.post(f"/tasks/{task['id']}/{action}", json={"delay_seconds": 5})
        assert response.status_code == 409, (action, response.text)
        assert "canceled" in response.json()["detail"]
    assert api.put(f"/tasks/{task['id']}", json={"title": "again"}).status_code == 409


def test_cancel_is_final_for_the_runs_too_queued_running_and_retrying(system, api):
    key = f"cancel-{uuid4().hex[:6]}"
    sleepy = create(
        api, concurrency_key=key, payload={"workflow": "sleep", "parameters": {"seconds": 900}}
    )
    failing = create(api, payload={"workflow": "fail"}, max_retries=20, backoff_strategy="linear")
    for task in (sleepy, sleepy, failing):
        assert api.post(f"/tasks/{task['id']}/run_now").status_code == 202

    def statuses(task: dict, wanted: list[str]) -> list[dict] | None:
        shown = runs(api, task["id"])
        return shown if sorted(r["status"] for r in shown) == wanted else None

    running, queued = sorted(
        wait_until(lambda: statuses(sleepy, ["queued", "running"]), what="one running, one queued"),
        key=lambda r: r["status"] != "running",
    )
    wait_until(
        lambda: system.store.query(
            "SELECT 1 FROM dispatcher_executions WHERE job_id = %s", (running["job_id"],)
        ),
        what="the running run's steps to run",
    )
    [retrying] = wait_until(lambda: statuses(failing, ["retrying"]), what="a run waiting to retry")

    for task in (sleepy, failing):
        canceled = api.post(f"/tasks/{task['id']}/cancel")
        assert canceled.status_code == 200 and canceled.json()["status"] == "canceled"
    # At once, in the runs list too (read your writes): no run of either is left.
    assert {r["status"] for r in runs(api, sleepy["id"]) + runs(api, failing["id"])} == {"canceled"}
    wait_until(  # the running one's steps were stopped: its dispatcher forgot the attempt
        lambda: (
            not system.store.query(
                "SELECT 1 FROM dispatcher_executions WHERE job_id = %s", (running["job_id"],)
            )
        ),
        what="the running run's steps to stop",
    )
    time.sleep(2)  # had anything survived, the queued run would start, the retry would come
    for run in (running, queued, retrying):
        kinds = [type(e).__name__ for e in system.events(run["job_id"])]
        assert kinds[-1] == "JobCancelled", (run["status"], kinds)
        assert kinds.count("JobCancelled") == 1
    assert "JobStarted" not in [type(e).__name__ for e in system.events(queued["job_id"])]
    assert api.post(f"/tasks/{sleepy['id']}/cancel").status_code == 409


# --- runs --------------------------------------------------------------------------------------


def test_run_now_runs_once_as_a_job_of_the_task_engine_dialect(system, api):
    task = create(api)
    response = api.post(f"/tasks/{task['id']}/run_now")
    assert response.status_code == 202, response.text
    requested = response.json()
    assert requested["task_id"] == task["id"] and requested["status"] == "requested"
    [run] = finished_runs(api, task["id"], 1)
    assert run["id"] == requested["run_id"] and run["trigger"] == "run_now"
    assert run["status"] == "succeeded" and run["attempts"] == 1
    assert run["started_at"] and run["finished_at"]
    assert api.get(f"/tasks/{task['id']}").json()["next_run_at"] == task["next_run_at"]
    with system.client() as engine:  # the same tenant, in the Task Engine dialect
        job = engine.get(f"/jobs/{run['job_id']}").json()
        assert job["workflow"] == "echo" and job["queue_state"] == "completed"
        assert job["parameters"] == {"report": "nightly"}


def test_a_seconds_cron_fires_every_time_and_pause_stops_it(api):
    task = create(api, schedule_expr="*/2 * * * * *", payload={"workflow": "noop"})
    finished_runs(api, task["id"], 2)
    api.post(f"/tasks/{task['id']}/pause")
    fired = len(runs(api, task["id"]))
    assert all(r["trigger"] == "schedule" for r in runs(api, task["id"]))
    moments = [r["scheduled_for"] for r in runs(api, task["id"])]
    assert len(set(moments)) == len(moments)
    assert all(datetime.fromisoformat(m).second % 2 == 0 for m in moments)
    time.sleep(3)  # long enough for one more fire, had it not paused
    # Read from the task's list row plus the events after it: the same as a whole fold.
    shown = wait_until(
        lambda: (lambda t: t if t["run_count"] == len(runs(api, task["id"])) else None)(
            api.get(f"/tasks/{task['id']}").json()
        )
    )
    assert shown["status"] == "paused" and shown["last_run_at"] is not None
    assert len(runs(api, task["id"])) <= fired + 1  # one may have been firing as it paused


def test_events_start_the_matching_active_event_tasks(api):
    topic = f"files.new.{uuid4().hex[:6]}"
    matching = create(api, schedule_kind="event", schedule_expr=topic)
    paused = create(api, schedule_kind="event", schedule_expr=topic)
    other = create(api, schedule_kind="event", schedule_expr="files.deleted")
    any_topic = create(api, schedule_kind="event", schedule_expr=None)
    assert any_topic["next_run_at"] is None
    api.post(f"/tasks/{paused['id']}/pause")
    response = api.post("/events", json={"topic": topic, "payload": {"file": "a.csv"}})
    assert response.status_code == 202, response.text
    assert response.json()["topic"] == topic
    [run] = finished_runs(api, matching["id"], 1)
    assert run["trigger"] == "event" and run["event_id"] == response.json()["id"]
    [caught] = finished_runs(api, any_topic["id"], 1)  # no topic: it runs on every topic
    assert caught["event_id"] == run["event_id"]
    api.post(f"/tasks/{any_topic['id']}/cancel")
    assert runs(api, paused["id"]) == [] and runs(api, other["id"]) == []
    bad = api.post("/events", json={"payload": {}})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "topic"]


def test_a_failing_run_is_retried_max_retries_times_with_its_backoff(system, api):
    task = create(api, payload={"workflow": "fail"}, max_retries=2, backoff_strategy="linear")
    api.post(f"/tasks/{task['id']}/run_now")
    [run] = finished_runs(api, task["id"], 1)
    assert run["status"] == "failed" and run["attempts"] == 3
    retries = [e for e in system.events(run["job_id"]) if isinstance(e, JobRetryScheduled)]
    delays = [(e.retry_at - e.at).total_seconds() for e in retries]
    assert [round(d) for d in delays] == [1, 2]  # linear: retry_delay * n


def test_dedupe_skips_a_run_within_the_window_and_records_it(api):
    key = f"dedupe-{uuid4().hex[:6]}"
    first = create(api, dedupe_key=key, dedupe_window_seconds=3600)
    second = create(api, dedupe_key=key, dedupe_window_seconds=3600)
    api.post(f"/tasks/{first['id']}/run_now")
    [ran] = finished_runs(api, first["id"], 1)
    api.post(f"/tasks/{second['id']}/run_now")
    [skipped] = finished_runs(api, second["id"], 1)
    assert skipped["status"] == "skipped" and skipped["job_id"] is None
    assert skipped["duplicate_of"] == ran["job_id"] and key in skipped["reason"]


def test_one_run_per_concurrency_key_runs_at_a_time(system, api):
    key = f"db-{uuid4().hex[:6]}"
    sleepy = {"workflow": "sleep", "parameters": {"seconds": 1}}
    tasks = [create(api, concurrency_key=key, payload=sleepy) for _ in range(3)]
    for task in tasks:
        api.post(f"/tasks/{task['id']}/run_now")
    done = [finished_runs(api, task["id"], 1)[0] for task in tasks]
    jobs = {run["job_id"] for run in done}
    timeline = [
        (type(e).__name__, e.job_id)
        for e in system.events()
        if isinstance(e, (JobAdmitted, JobSucceeded)) and e.job_id in jobs
    ]
    running = 0
    for kind, _ in timeline:
        running += 1 if kind == "JobAdmitted" else -1
        assert running <= 1, timeline
    assert len(timeline) == 6


# --- tenants -------------------------------------------------------------------------------------


def test_another_client_sees_none_of_these_tasks(system, api):
    task = create(api)
    with bearer(system, OTHER) as other:
        assert all(t["id"] != task["id"] for t in other.get("/tasks").json())
        for method, path in [
            ("GET", ""),
            ("PUT", ""),
            ("GET", "/runs"),
            ("POST", "/run_now"),
            ("POST", "/snooze"),
            ("POST", "/pause"),
            ("POST", "/resume"),
            ("POST", "/cancel"),
        ]:
            response = other.request(
                method, f"/tasks/{task['id']}{path}", json={"delay_seconds": 5, "title": "x"}
            )
            assert response.status_code == 404, (method, path, response.text)
            assert response.json() == {"detail": "Task not found"}
    assert api.get(f"/tasks/{task['id']}").json()["status"] == "active"
