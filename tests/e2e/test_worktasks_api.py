"""The work-tasks API (seed 000) against the system as `make up` starts it: every documented
request in the seed's shape, validation, tenant isolation, workers' reports (a client's key,
the shared WORKER_AUTH_TOKEN, an attempt's own token), transient failures and their retries,
logs from a remote worker, metrics and the priority order of the queue.

A work task is a job: here the local executor runs it in-process (`spawned`, then `executing`
once its first step started, as a worker would report). To act as its worker, a test submits
a task that runs long (`sleep`), waits until it runs, then reports; the in-process attempt's
own outcome is dropped later because the job has moved.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pytest
from taskengine_core.attempts import worker_token
from taskengine_core.ids import job_stream

from tests.support.system import ADMIN, OTHER, WEBHOOK_KEY, System, running_system
from tests.support.waiting import wait_until
from tests.support.worktask_clients import bearer, new_client

SHARED_TOKEN = "shared-worker-token-0123456789"
WORKTASK_KEYS = {
    "worktask_id",
    "type",
    "status",
    "priority",
    "submitted_at",
    "started_at",
    "completed_at",
    "project_id",
    "task_spec",
    "resource_requirements",
    "data_access",
    "error_message",
    "kubernetes_job_name",
    "cluster_name",
    "retry_count",
    "max_retries",
    "retry_reason",
}
STATUSES = {"queued", "scheduled", "spawned", "executing", "completed", "failed", "timeout"}
TYPES = {"pipeline_execution", "ml_training", "ml_inference", "digital_twin_update"}
SEED_BODY = {
    "type": "pipeline_execution",
    "priority": 1,
    "project_id": "proj-123",
    "task_spec": {"pipeline_id": "pipe-456", "parameters": {}},
    "resource_requirements": {"cpu": "1", "memory": "2Gi", "gpu": False},
    "data_access": {
        "input_datasets": ["dataset-1"],
        "output_location": "s3://output/",
        "storage_credentials": "creds-secret",
    },
}
WORKFLOWS = {
    "pipe-456.yaml": "name: pipe-456\nsteps:\n  - name: extract\n"
    '    run: ["python3", "-c", "print(\'extracting\')"]\n',
    "digital_twin_update.yaml": "name: digital_twin_update\nsteps:\n  - name: sync\n"
    '    run: ["true"]\n',
}
LONG = {"pipeline_id": "sleep", "parameters": {"seconds": 900}}


@pytest.fixture(scope="module")
def system(postgres_url) -> Iterator[System]:
    env = {"WORKER_AUTH_TOKEN": SHARED_TOKEN}
    with running_system(postgres_url, "worktasks", workflows=WORKFLOWS, env=env) as system:
        with system.client() as admin:
            for name, value in (("max_jobs", 20), ("retry_delay", 1), ("retry_max_delay", 1)):
                admin.post("/settings", json={"name": name, "setting": value})
        yield system


@pytest.fixture(scope="module")
def api(system) -> Iterator[httpx.Client]:
    with bearer(system, ADMIN[1]) as http:
        yield http


@pytest.fixture(scope="module")
def other(system) -> Iterator[httpx.Client]:
    with bearer(system, OTHER[1]) as http:
        yield http


@pytest.fixture(scope="module")
def shared(system) -> Iterator[httpx.Client]:
    with bearer(system, SHARED_TOKEN) as http:
        yield http


@pytest.fixture
def cleanup(shared) -> Iterator[list[str]]:
    """Work tasks a test started: ended (cancelled, if still running) when it is over, so no
    slot stays taken."""
    started: list[str] = []
    yield started
    for worktask_id in started:
        report(shared, worktask_id, "cancelled")


def submit(http: httpx.Client, **fields) -> dict:  # type: ignore[no-untyped-def]
    response = http.post("/api/worktasks", json={**SEED_BODY, **fields})
    assert response.status_code == 201, response.text
    return response.json()


def get(http: httpx.Client, worktask_id: str) -> dict:
    response = http.get(f"/api/worktasks/{worktask_id}")
    assert response.status_code == 200, response.text
    return response.json()


def report(http: httpx.Client, worktask_id: str, status: str, **fields) -> httpx.Response:  # type: ignore[no-untyped-def]
    body = {"worktask_id": worktask_id, "status": status, **fields}
    return http.post(f"/api/worktasks/{worktask_id}", json=body)


def executing(http: httpx.Client, worktask_id: str, retries: int = 0) -> dict:
    """The task once its attempt `retries + 1` runs its steps (here: `executing`)."""
    return wait_until(
        lambda: (
            lambda task: (
                task if task["status"] == "executing" and task["retry_count"] == retries else None
            )
        )(get(http, worktask_id)),
        what=f"work task {worktask_id} to execute (attempt {retries + 1})",
    )


def running(http: httpx.Client, cleanup: list[str], **fields) -> dict:  # type: ignore[no-untyped-def]
    task = submit(http, task_spec=LONG, **fields)
    cleanup.append(task["worktask_id"])
    return executing(http, task["worktask_id"])


def token(worktask_id: str, attempt: int) -> str:
    return worker_token(WEBHOOK_KEY, int(worktask_id), attempt)


def stored(system: System, worktask_id: str) -> int:
    return len(system.store.stream(job_stream(int(worktask_id))))


def submissions(system: System) -> int:
    rows = system.store.query(
        "SELECT count(*) AS n FROM stored_events WHERE topic = %s", ("job.submitted",)
    )
    return rows[0]["n"]


def iso_utc(value: str) -> datetime:
    assert value.endswith("Z"), value
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    assert moment.utcoffset() == UTC.utcoffset(None)
    return moment


# --- the seed's requests ----------------------------------------------------------------------


def test_the_seeds_submission_answers_201_with_the_whole_work_task(api):
    task = submit(api)
    assert WORKTASK_KEYS <= set(task)
    assert task["status"] == "queued" and task["worktask_id"].isdigit()
    for field in ("type", "priority", "project_id", "task_spec", "resource_requirements"):
        assert task[field] == SEED_BODY[field]
    assert task["data_access"] == SEED_BODY["data_access"]  # a Secret's name, shown
    assert (task["retry_count"], task["max_retries"], task["retry_reason"]) == (0, 3, None)
    assert task["started_at"] is None and task["completed_at"] is None
    assert task["error_message"] is None
    iso_utc(task["submitted_at"])

    def completed() -> dict | None:
        now = get(api, task["worktask_id"])
        return now if now["status"] == "completed" else None

    done = wait_until(completed, what="the seed's work task to complete")
    assert iso_utc(done["started_at"]) <= iso_utc(done["completed_at"])
    assert done["submitted_at"] == task["submitted_at"]


def test_a_work_task_is_a_job_of_the_same_client_in_the_task_engine_dialect(system, api):
    task = submit(api)
    with system.client() as engine:
        job = engine.get(f"/jobs/{task['worktask_id']}")
    assert job.status_code == 200, job.text
    assert job.json()["workflow"] == "pipe-456"


def test_queue_length_answers_the_callers_tasks_not_yet_running(api):
    response = api.get("/api/worktasks")
    assert response.status_code == 200
    assert set(response.json()) == {"queue_length"}
    assert isinstance(response.json()["queue_length"], int)


def test_without_a_pipeline_the_type_names_the_workflow_and_defaults_apply(api):
    body = {k: v for k, v in SEED_BODY.items() if k != "priority"}
    response = api.post(
        "/api/worktasks", json={**body, "type": "digital_twin_update", "task_spec": {}}
    )
    assert response.status_code == 201, response.text
    task = response.json()
    assert (task["type"], task["priority"], task["max_retries"]) == ("digital_twin_update", 1, 3)


def test_max_retries_may_be_given(api):
    assert submit(api, max_retries=5)["max_retries"] == 5


def test_a_secret_looking_value_is_never_echoed(api):
    task = submit(
        api, task_spec={"pipeline_id": "echo", "parameters": {"api_key": "sk-live-0123456789abc"}}
    )
    assert "sk-live-0123456789abc" not in str(task)
    assert "sk-live-0123456789abc" not in str(get(api, task["worktask_id"]))


# --- validation -------------------------------------------------------------------------------


def _without(field: str) -> dict:
    return {k: v for k, v in SEED_BODY.items() if k != field}


INVALID = {
    **{f"missing {field}": _without(field) for field in ("type", "project_id", "task_spec")},
    "missing resource_requirements": _without("resource_requirements"),
    "missing data_access": _without("data_access"),
    "unknown type": {**SEED_BODY, "type": "batch"},
    "priority as text": {**SEED_BODY, "priority": "high"},
    "priority as boolean": {**SEED_BODY, "priority": True},
    "empty project": {**SEED_BODY, "project_id": " "},
    "task_spec not an object": {**SEED_BODY, "task_spec": "run it"},
    "parameters not an object": {
        **SEED_BODY,
        "task_spec": {"pipeline_id": "echo", "parameters": []},
    },
    "unknown workflow": {**SEED_BODY, "task_spec": {"pipeline_id": "pipe-457"}},
    "unusable parameters": {
        **SEED_BODY,
        "task_spec": {"pipeline_id": "sleep", "parameters": {"seconds": "long"}},
    },
    "bad timeout": {**SEED_BODY, "task_spec": {"pipeline_id": "echo", "timeout": -1}},
    "resources not an object": {**SEED_BODY, "resource_requirements": ["1 cpu"]},
    "memory not a quantity": {**SEED_BODY, "resource_requirements": {"memory": "lots"}},
    "data_access not an object": {**SEED_BODY, "data_access": "s3://output/"},
    "credentials, not a Secret's name": {
        **SEED_BODY,
        "data_access": {"storage_credentials": "AKIAIOSFODNN7EXAMPLE:wJalrXUtnFEMI/K7MDENG"},
    },
    "negative max_retries": {**SEED_BODY, "max_retries": -1},
    "max_retries as text": {**SEED_BODY, "max_retries": "3"},
    "unknown field": {**SEED_BODY, "retries": 3},
}


@pytest.mark.parametrize("body", INVALID.values(), ids=INVALID.keys())
def test_an_invalid_submission_is_a_400_and_nothing_is_stored(system, api, body):
    before = submissions(system)
    response = api.post("/api/worktasks", json=body)
    assert response.status_code == 400, response.text
    assert set(response.json()) == {"error"}
    assert submissions(system) == before


@pytest.mark.parametrize("raw", [b"{", b"[]", b'"task"'])
def test_a_body_that_is_not_a_json_object_is_a_400(api, raw):
    response = api.post("/api/worktasks", content=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and set(response.json()) == {"error"}


def test_a_body_too_large_is_a_413_in_the_seed_shape(api):
    huge = {**SEED_BODY, "task_spec": {"pipeline_id": "echo", "parameters": {"x": "y" * 600_000}}}
    response = api.post("/api/worktasks", json=huge)
    assert response.status_code == 413 and set(response.json()) == {"error"}


# --- authentication and tenants ---------------------------------------------------------------


ENDPOINTS = [
    ("GET", "/api/worktasks", None),
    ("POST", "/api/worktasks", SEED_BODY),
    ("GET", "/api/worktasks/{id}", None),
    ("POST", "/api/worktasks/{id}", {"worktask_id": "{id}", "status": "completed"}),
    ("POST", "/api/worktasks/{id}/logs", {"lines": [{"step": 0, "text": "hi"}]}),
    ("GET", "/api/metrics", None),
]


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong-key-0123456789"}, {"Authorization": "Basic !!"}],
    ids=["none", "wrong key", "malformed"],
)
def test_every_endpoint_needs_credentials(system, api, headers):
    worktask_id = submit(api)["worktask_id"]
    for method, path, body in ENDPOINTS:
        url = system.url + path.replace("{id}", worktask_id)
        if isinstance(body, dict) and body.get("worktask_id"):
            body = {**body, "worktask_id": worktask_id}
        response = httpx.request(method, url, json=body, headers=headers, timeout=30)
        assert response.status_code == 401, (method, path, response.text)
        assert set(response.json()) == {"error"}


def test_another_clients_task_does_not_exist_on_any_endpoint(system, api, other, cleanup):
    task = running(api, cleanup)
    worktask_id = task["worktask_id"]
    before = stored(system, worktask_id)
    assert other.get(f"/api/worktasks/{worktask_id}").status_code == 404
    assert report(other, worktask_id, "cancelled").status_code == 404
    logs = other.post(f"/api/worktasks/{worktask_id}/logs", json={"lines": [{"text": "x"}]})
    assert logs.status_code == 404 and set(logs.json()) == {"error"}
    assert stored(system, worktask_id) == before
    assert get(api, worktask_id)["status"] == "executing"


@pytest.mark.parametrize("worktask_id", ["987654321", "task-123", "1e3"])
def test_an_unknown_work_task_is_a_404_with_an_error(api, worktask_id):
    response = api.get(f"/api/worktasks/{worktask_id}")
    assert response.status_code == 404 and set(response.json()) == {"error"}
    response = report(api, worktask_id, "completed")
    assert response.status_code == 404 and set(response.json()) == {"error"}


def test_a_job_of_another_dialect_is_not_a_work_task(system, api):
    with system.client() as engine:
        number = engine.post("/job", json={"job": {"workflow": "noop"}}).json()["id"]
    assert api.get(f"/api/worktasks/{number}").status_code == 404


# --- workers' reports -------------------------------------------------------------------------


def test_the_seeds_report_with_the_shared_token_completes_the_task(system, api, shared, cleanup):
    worktask_id = running(api, cleanup)["worktask_id"]
    executing = report(shared, worktask_id, "executing")
    assert executing.status_code == 200 and executing.json() == {"status": "updated"}
    assert get(api, worktask_id)["status"] == "executing"
    done = report(
        shared,
        worktask_id,
        "completed",
        output_location="s3://output/result.json",
        metadata={"records_processed": 1000},
    )
    assert done.status_code == 200 and done.json() == {"status": "updated"}
    task = get(api, worktask_id)
    assert task["status"] == "completed" and task["error_message"] is None
    assert task["output_location"] == "s3://output/result.json"
    assert task["metadata"] == {"records_processed": 1000}
    iso_utc(task["completed_at"])
    before = stored(system, worktask_id)
    again = report(shared, worktask_id, "failed", error_message="late")
    assert again.status_code == 409 and set(again.json()) == {"error"}
    assert stored(system, worktask_id) == before


def test_a_client_may_report_on_its_own_task(api, cleanup):
    worktask_id = running(api, cleanup)["worktask_id"]
    response = report(api, worktask_id, "completed")
    assert response.json() == {"status": "updated"}


@pytest.mark.parametrize(
    ("change", "status"),
    [({"worktask_id": "1"}, 400), ({"status": "done"}, 400), ({"metadata": "x"}, 400)],
    ids=["another id", "unknown status", "metadata not an object"],
)
def test_an_invalid_report_is_a_400_and_nothing_is_stored(
    system, api, shared, cleanup, change, status
):
    worktask_id = running(api, cleanup)["worktask_id"]
    before = stored(system, worktask_id)
    body = {"worktask_id": worktask_id, "status": "completed", **change}
    response = shared.post(f"/api/worktasks/{worktask_id}", json=body)
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error"}
    assert stored(system, worktask_id) == before


@pytest.mark.parametrize("path", ["/api/worktasks/1", "/api/worktasks/1/logs"])
def test_a_report_without_credentials_is_a_401_before_its_body_is_read(system, path):
    response = httpx.post(system.url + path, content=b"{nope", timeout=30)
    assert response.status_code == 401 and set(response.json()) == {"error"}


def test_a_worker_reads_its_task_as_submitted_while_its_attempt_runs(system, api, shared, cleanup):
    spec = {"pipeline_id": "sleep", "parameters": {"seconds": 900, "api_key": "sk-0123456789ab"}}
    worktask_id = submit(api, task_spec=spec)["worktask_id"]
    cleanup.append(worktask_id)
    executing(api, worktask_id)
    assert "sk-0123456789ab" not in str(get(api, worktask_id))  # a client sees it masked
    with bearer(system, token(worktask_id, 1)) as worker:
        seen = worker.get(f"/api/worktasks/{worktask_id}")
        assert seen.status_code == 200 and seen.json()["task_spec"] == spec
        assert shared.get(f"/api/worktasks/{worktask_id}").json()["task_spec"] == spec
        evicted = report(worker, worktask_id, "failed", error_message="Evicted")
        assert evicted.json() == {"status": "requeued_for_retry"}
        over = worker.get(f"/api/worktasks/{worktask_id}")
        assert over.status_code == 409 and set(over.json()) == {"error"}


def test_completed_after_cancelled_is_a_409_and_nothing_is_stored(system, api, shared, cleanup):
    worktask_id = running(api, cleanup)["worktask_id"]
    assert report(shared, worktask_id, "cancelled").json() == {"status": "updated"}
    task = get(api, worktask_id)
    assert task["status"] == "cancelled" and task["completed_at"]
    before = stored(system, worktask_id)
    response = report(shared, worktask_id, "completed")
    assert response.status_code == 409, response.text
    assert "cancelled" in response.json()["error"]
    assert stored(system, worktask_id) == before
    assert get(api, worktask_id)["status"] == "cancelled"


def test_a_non_transient_failure_ends_the_task_failed(api, shared, cleanup):
    worktask_id = running(api, cleanup)["worktask_id"]
    message = "step 2 crashed; its log mentions NotOOMKilledX, not a transient cause"
    response = report(shared, worktask_id, "failed", error_message=message)
    assert response.json() == {"status": "updated"}
    task = get(api, worktask_id)
    assert (task["status"], task["retry_count"], task["error_message"]) == ("failed", 0, message)
    assert task["completed_at"]


def test_a_transient_word_in_the_error_message_is_retried_with_more_memory(api, shared, cleanup):
    worktask_id = running(api, cleanup)["worktask_id"]
    response = report(shared, worktask_id, "failed", error_message="Pod OOMKilled (137)")
    assert response.status_code == 200 and response.json() == {"status": "requeued_for_retry"}
    task = get(api, worktask_id)
    assert task["status"] in ("queued", "spawned", "executing")
    assert (task["retry_count"], task["retry_reason"]) == (1, "OOMKilled")
    assert task["resource_requirements"]["memory"] == "3072Mi"  # 2Gi × 1.5


def test_oom_is_retried_with_more_memory_until_retries_run_out(system, api, cleanup):
    worktask_id = running(api, cleanup, max_retries=2)["worktask_id"]
    with bearer(system, token(worktask_id, 1)) as first:
        response = report(first, worktask_id, "failed", metadata={"reason": "OOMKilled"})
    assert response.status_code == 200 and response.json() == {"status": "requeued_for_retry"}
    task = get(api, worktask_id)
    assert task["status"] in ("queued", "spawned", "executing")
    assert (task["retry_count"], task["retry_reason"]) == (1, "OOMKilled")
    assert task["resource_requirements"]["memory"] == "3072Mi"  # 2Gi × 1.5

    executing(api, worktask_id, retries=1)
    with bearer(system, token(worktask_id, 1)) as stale:  # attempt 1 is over
        refused = report(stale, worktask_id, "completed")
    assert refused.status_code == 409 and "attempt 1" in refused.json()["error"]
    for forged in (token(worktask_id, 3), "wt_" + "A" * 43, token(str(int(worktask_id) + 1), 2)):
        with bearer(system, forged) as intruder:
            assert report(intruder, worktask_id, "completed").status_code == 401

    with bearer(system, token(worktask_id, 2)) as second:
        evicted = report(second, worktask_id, "failed", error_message="Evicted")
    assert evicted.json() == {"status": "requeued_for_retry"}
    task = executing(api, worktask_id, retries=2)
    assert task["retry_reason"] == "Evicted" and task["resource_requirements"]["memory"] == "3072Mi"

    with bearer(system, token(worktask_id, 3)) as third:
        last = report(third, worktask_id, "failed", metadata={"reason": "OOMKilled"})
    assert last.json() == {"status": "updated"}
    task = get(api, worktask_id)
    assert (task["status"], task["retry_count"], task["max_retries"]) == ("failed", 2, 2)
    assert "OOMKilled" in task["error_message"] and task["retry_reason"] == "Evicted"


def test_a_deadline_exceeded_with_no_retries_left_ends_in_timeout(system, api, cleanup):
    worktask_id = running(api, cleanup, max_retries=0)["worktask_id"]
    with bearer(system, token(worktask_id, 1)) as worker:
        response = report(worker, worktask_id, "failed", metadata={"reason": "DeadlineExceeded"})
    assert response.json() == {"status": "updated"}
    task = get(api, worktask_id)
    assert (task["status"], task["retry_count"]) == ("timeout", 0)
    assert task["completed_at"] and task["error_message"]


def test_task_spec_timeout_is_the_attempts_deadline(api, cleanup):
    spec = {"pipeline_id": "sleep", "parameters": {"seconds": 900}, "timeout": 2}
    worktask_id = submit(api, task_spec=spec, max_retries=0)["worktask_id"]
    cleanup.append(worktask_id)
    task = wait_until(
        lambda: (lambda t: t if t["status"] == "timeout" else None)(get(api, worktask_id)),
        timeout=60,
        what="the task to time out after its 2 s",
    )
    assert task["completed_at"] and "2" in task["error_message"]


def test_a_timeout_report_ends_the_task_in_timeout(api, shared, cleanup):
    worktask_id = running(api, cleanup)["worktask_id"]
    assert report(shared, worktask_id, "timeout").json() == {"status": "updated"}
    assert get(api, worktask_id)["status"] == "timeout"


def test_a_worker_may_cancel_its_task(system, api, cleanup):
    worktask_id = running(api, cleanup)["worktask_id"]
    with bearer(system, token(worktask_id, 1)) as worker:
        assert report(worker, worktask_id, "cancelled").json() == {"status": "updated"}
    assert get(api, worktask_id)["status"] == "cancelled"


# --- logs from a remote worker ----------------------------------------------------------------


def test_a_workers_lines_reach_the_jobs_log_until_its_attempt_is_over(system, api, cleanup):
    worktask_id = running(api, cleanup)["worktask_id"]
    lines = [
        {"step": 1, "severity": "INFO", "text": "loading dataset-1"},
        {"at": "2024-01-15T10:35:00Z", "step": 1, "severity": "WARN", "text": "slow disk"},
    ]
    with bearer(system, token(worktask_id, 1)) as worker:
        response = worker.post(f"/api/worktasks/{worktask_id}/logs", json={"lines": lines})
        assert response.status_code == 200 and response.json() == {"status": "logged", "lines": 2}
        too_many = worker.post(
            f"/api/worktasks/{worktask_id}/logs", json={"lines": [{"text": "x"}] * 1001}
        )
        assert too_many.status_code == 400
        bad = worker.post(
            f"/api/worktasks/{worktask_id}/logs",
            json={"lines": [{"step": 1, "severity": "LOUD", "text": "x"}]},
        )
        assert bad.status_code == 400 and set(bad.json()) == {"error"}

        with system.client() as engine:

            def logged() -> list[dict] | None:
                rows = engine.get(f"/logs/{worktask_id}").json()
                texts = [row["message"] for row in rows]
                return rows if {"loading dataset-1", "slow disk"} <= set(texts) else None

            rows = wait_until(logged, what="the worker's lines in the job's log")
        assert {row["severity_description"] for row in rows} >= {"INFO", "WARN"}

        assert report(worker, worktask_id, "completed").json() == {"status": "updated"}
        over = worker.post(f"/api/worktasks/{worktask_id}/logs", json={"lines": lines})
        assert over.status_code == 409


# --- metrics and the queue --------------------------------------------------------------------


def test_metrics_need_credentials_and_have_the_seeds_shape(api):
    metrics = api.get("/api/metrics").json()
    assert set(metrics) == {"queue", "tasks_by_status", "tasks_by_type", "timestamp"}
    assert {"length", "by_priority"} <= set(metrics["queue"])
    assert STATUSES <= set(metrics["tasks_by_status"]) and TYPES <= set(metrics["tasks_by_type"])
    iso_utc(metrics["timestamp"])


def test_a_higher_priority_is_admitted_first_and_the_queue_is_counted(system, shared):
    # 5, 7 and 8 once shared the engine's most urgent rank; each keeps its own now (8 is the
    # most a client that is not an admin may use).
    _, key = new_client(system, "wt")
    with bearer(system, key) as mine, system.client() as admin:
        admin.post("/settings", json={"name": "max_jobs", "setting": 1})
        started: list[str] = []
        try:
            blocker = submit(mine, task_spec=LONG, type="ml_training")["worktask_id"]
            started.append(blocker)
            executing(mine, blocker)
            low, high, middle = (
                submit(mine, task_spec=LONG, priority=p, type=t)["worktask_id"]
                for p, t in ((5, "ml_inference"), (8, "ml_inference"), (7, "ml_training"))
            )
            started += [low, high, middle]

            def counted() -> dict | None:
                metrics = mine.get("/api/metrics").json()
                return metrics if metrics["queue"]["length"] == 3 else None

            metrics = wait_until(counted, what="three queued tasks in the metrics")
            assert mine.get("/api/worktasks").json() == {"queue_length": 3}
            assert metrics["queue"]["by_priority"] == {"8": 1, "7": 1, "5": 1}
            assert metrics["queue"]["oldest_age_seconds"] >= 0
            by_status = metrics["tasks_by_status"]
            shown = (by_status["queued"], by_status["executing"], by_status["completed"])
            assert shown == (3, 1, 0)
            assert metrics["tasks_by_type"] == {
                "pipeline_execution": 0,
                "ml_training": 2,
                "ml_inference": 2,
                "digital_twin_update": 0,
            }
            order, current = [high, middle, low], blocker
            for place, next_up in enumerate(order):
                assert report(shared, current, "completed").status_code == 200
                executing(mine, next_up)
                assert all(get(mine, later)["status"] == "queued" for later in order[place + 1 :])
                current = next_up
            assert report(shared, current, "completed").status_code == 200

            def drained() -> dict | None:
                metrics = mine.get("/api/metrics").json()
                return metrics if metrics["tasks_by_status"]["completed"] == 4 else None

            metrics = wait_until(drained, what="four completed tasks in the metrics")
            assert metrics["queue"] == {
                "length": 0,
                "by_priority": {},
                "oldest_queued_at": None,
                "oldest_age_seconds": None,
            }
            assert mine.get("/api/worktasks").json() == {"queue_length": 0}
        finally:
            admin.post("/settings", json={"name": "max_jobs", "setting": 20})
            for worktask_id in started:
                report(shared, worktask_id, "cancelled")


# --- a rerun through the Task Engine API ------------------------------------------------------


def test_a_rerun_through_the_task_engine_api_keeps_the_work_tasks_request(system):
    who = new_client(system, "rerun")
    body = {"type": "ml_training", "resource_requirements": {"cpu": "1", "memory": "1Gi"}}
    with bearer(system, who[1]) as mine, system.client(who) as engine:
        original = submit(mine, **body)
        first = wait_until(
            lambda: (lambda task: task if task["status"] == "completed" else None)(
                get(mine, original["worktask_id"])
            ),
            what="the work task to complete",
        )
        response = engine.post(f"/jobs/{original['worktask_id']}/rerun")
        assert response.status_code == 200, response.text
        rerun = get(mine, str(response.json()["id"]))
        assert rerun["worktask_id"] != original["worktask_id"]
        for field in ("type", "project_id", "task_spec", "resource_requirements", "max_retries"):
            assert rerun[field] == original[field], field
        assert rerun["data_access"] == original["data_access"]
        assert rerun["retry_count"] == 0
        # Its own start, not the original's: none yet, or one after the original ended (the
        # rerun may start before this read).
        started, ended = rerun["started_at"], datetime.fromisoformat(first["completed_at"])
        assert started is None or datetime.fromisoformat(started) > ended
        done = wait_until(
            lambda: (lambda task: task if task["status"] == "completed" else None)(
                get(mine, rerun["worktask_id"])
            ),
            what="the rerun to complete",
        )
        assert done["completed_at"] is not None
        assert mine.get("/api/metrics").json()["tasks_by_type"] == {
            "pipeline_execution": 0,
            "ml_training": 2,
            "ml_inference": 0,
            "digital_twin_update": 0,
        }
