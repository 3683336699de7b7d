"""The container-task API (seed 004, Drove) against the system as `make up` starts it: the
seed's requests and shapes, every state a WORKFLOW or DOCKER task reaches, KILL and DELETE,
taskId uniqueness, log files, search, tenant isolation and bad input on every endpoint."""

from __future__ import annotations

import re
import threading
import time
from uuid import UUID, uuid4

import httpx
import pytest

from tests.support.system import ADMIN, OTHER, running_system
from tests.support.waiting import wait_until

WORKFLOWS = {
    "printenv.yaml": "name: printenv\nsteps:\n  - name: show\n"
    '    run: echo "ITERATIONS=$ITERATIONS CORES=$CORES PATH_SET=${PATH:+yes}"\n',
    "slowstep.yaml": "name: slowstep\nsteps:\n  - name: nap\n    run: sleep 30\n    timeout: 0.5\n",
}
SEED_KEYS = {
    "sourceAppName",
    "taskId",
    "instanceId",
    "executorId",
    "hostname",
    "executable",
    "resources",
    "volumes",
    "env",
    "state",
    "metadata",
    "errorMessage",
    "created",
    "updated",
}
INSTANCE_ID = re.compile(r"TI-[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}")
OP_SPEC = {"timeout": "5m", "parallelism": 1, "failureStrategy": "STOP"}


@pytest.fixture(scope="module")
def system(postgres_url):
    env = {"TASKENGINE_KUBE_HOST_PATHS": "/mnt"}  # the host paths a DOCKER task may mount
    with running_system(postgres_url, "drove", workflows=WORKFLOWS, env=env) as system:
        with system.client() as admin:
            admin.post("/settings", json={"name": "max_jobs", "setting": 10})
        yield system


def basic(system, who=ADMIN) -> httpx.Client:  # type: ignore[no-untyped-def]
    return httpx.Client(base_url=system.url, auth=who, timeout=30)


@pytest.fixture(scope="module")
def api(system):
    with basic(system) as http:
        yield http


def new_id() -> str:
    return f"T-{uuid4().hex[:12]}"


def spec(task_id: str, workflow: str = "echo", parameters=None, **fields) -> dict:  # type: ignore[no-untyped-def]
    return {
        "sourceAppName": "TEST_APP",
        "taskId": task_id,
        "executable": {"type": "WORKFLOW", "name": workflow, "parameters": parameters or {}},
        "resources": [{"type": "CPU", "count": 1}, {"type": "MEMORY", "sizeInMB": 128}],
        "volumes": [],
        "configs": [],
        "placementPolicy": {"type": "ANY"},
        "env": {"ITERATIONS": "10"},
        "args": [],
        "tags": {"owner": "tests"},
        **fields,
    }


def create(api, task_spec: dict, op_spec=OP_SPEC) -> dict:  # type: ignore[no-untyped-def]
    response = api.post(
        "/apis/v1/tasks/operations", json={"type": "CREATE", "spec": task_spec, "opSpec": op_spec}
    )
    assert response.status_code == 200, response.text
    assert response.json() == {
        "status": "SUCCESS",
        "data": {"taskId": task_spec["taskId"]},
        "message": "success",
    }
    return task_spec


def kill(api, task_id: str, app: str = "TEST_APP") -> httpx.Response:  # type: ignore[no-untyped-def]
    body = {"type": "KILL", "sourceAppName": app, "taskId": task_id, "opSpec": OP_SPEC}
    return api.post("/apis/v1/tasks/operations", json=body)


def show(api, task_id: str, app: str = "TEST_APP") -> dict:  # type: ignore[no-untyped-def]
    response = api.get(f"/apis/v1/tasks/{app}/instances/{task_id}")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "SUCCESS"
    return response.json()["data"]


def wait_state(api, task_id: str, *states: str, timeout: float = 30) -> dict:  # type: ignore[no-untyped-def]
    return wait_until(
        lambda: (lambda t: t if t["state"] in states else None)(show(api, task_id)),
        timeout=timeout,
        what=f"task {task_id} to be {' or '.join(states)}",
    )


def failed(response: httpx.Response, status: int, fragment: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status"] == "FAILED" and set(body) == {"status", "data", "message"}, body
    assert isinstance(body["data"], dict)
    assert fragment in body["message"], body
    return body


def submitted_count(system) -> int:  # type: ignore[no-untyped-def]
    rows = system.store.query(
        "SELECT count(*) AS n FROM stored_events WHERE topic = %s", ("job.submitted",)
    )
    return rows[0]["n"]


def output(api, task_id: str, app: str = "TEST_APP") -> str:  # type: ignore[no-untyped-def]
    response = api.get(f"/apis/v1/logfiles/tasks/{app}/{task_id}/download/output.log")
    assert response.status_code == 200, response.text
    return response.text


# --- ping and auth ------------------------------------------------------------------------------


def test_ping_answers_the_envelope_to_a_known_client(system, api):
    assert api.get("/apis/v1/ping").json() == {
        "status": "SUCCESS",
        "data": "pong",
        "message": "success",
    }
    with system.client() as headers:  # the other header styles work too
        assert headers.get("/apis/v1/ping").json()["status"] == "SUCCESS"
    body = failed(httpx.get(system.url + "/apis/v1/ping"), 401, "missing credentials")
    assert body["data"] == {}
    failed(httpx.get(system.url + "/apis/v1/ping", auth=(ADMIN[0], "wrong-key")), 401, "invalid")
    failed(httpx.get(system.url + "/apis/v1/tasks", auth=("nobody", "x" * 20)), 401, "invalid")


def test_unknown_endpoints_and_methods_answer_the_envelope(api):
    failed(api.get("/apis/v1/nothing/here"), 404, "no such endpoint")
    failed(api.put("/apis/v1/tasks"), 405, "not allowed")


# --- the seed's requests ------------------------------------------------------------------------


def test_the_seeds_kill_list_and_instance_requests(api):
    create(api, spec("T0012", "sleep", {"seconds": 30}))
    wait_state(api, "T0012", "RUNNING")
    response = api.post(
        "/apis/v1/tasks/operations",
        json={"type": "KILL", "sourceAppName": "TEST_APP", "taskId": "T0012", "opSpec": OP_SPEC},
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 200
    assert response.json() == {
        "status": "SUCCESS",
        "data": {"taskId": "T0012"},
        "message": "success",
    }
    task = wait_state(api, "T0012", "STOPPED")
    assert set(task) == SEED_KEYS | {"taskResult"}
    assert task["taskResult"] == {"status": "CANCELLED", "exitCode": -1}
    listed = api.get("/apis/v1/tasks").json()
    assert listed["status"] == "SUCCESS" and listed["message"] == "success"
    [row] = [t for t in listed["data"] if t["taskId"] == "T0012"]
    assert row == task
    assert api.delete("/apis/v1/tasks/TEST_APP/instances/T0012").json()["status"] == "SUCCESS"


def test_a_workflow_task_goes_pending_to_stopped_successful(api):
    task_id = new_id()
    before = int(time.time() * 1000)
    create(api, spec(task_id, "sleep", {"seconds": 1.5}))
    seen = []

    def stopped() -> dict | None:
        task = show(api, task_id)
        if task["state"] not in seen:
            seen.append(task["state"])
        return task if task["state"] == "STOPPED" else None

    task = wait_until(stopped, timeout=30, every=0.05, what="the task to stop")
    assert seen[-2:] == ["RUNNING", "STOPPED"] and seen[0] in ("PENDING", "PROVISIONING", "RUNNING")
    assert set(task) == SEED_KEYS | {"taskResult"}
    assert task["taskResult"] == {"status": "SUCCESSFUL", "exitCode": 0}
    assert INSTANCE_ID.fullmatch(task["instanceId"])
    assert UUID(task["executorId"]) and task["hostname"]
    assert task["executable"] == {
        "type": "WORKFLOW",
        "url": "workflow://sleep",
        "name": "sleep",
        "parameters": {"seconds": 1.5},
    }
    assert task["resources"] == [
        {"type": "CPU", "cores": {"0": [0]}},
        {"type": "MEMORY", "memoryInMB": {"0": 128}},
    ]
    assert task["env"] == {"ITERATIONS": "10"} and task["volumes"] == [] and task["metadata"] == {}
    assert task["errorMessage"] == ""
    assert before <= task["created"] < task["updated"] <= int(time.time() * 1000)
    # The executor of every local task is the same one.
    other = create(api, spec(new_id()))
    assert wait_state(api, other["taskId"], "STOPPED")["executorId"] == task["executorId"]


def test_the_tasks_env_reaches_its_steps_but_not_the_hosts_essentials(api):
    task_id = new_id()
    create(api, spec(task_id, "printenv", env={"ITERATIONS": "10", "CORES": "8"}))
    assert wait_state(api, task_id, "STOPPED")["taskResult"]["status"] == "SUCCESSFUL"
    text = wait_until(lambda: "ITERATIONS=" in (t := output(api, task_id)) and t, what="output")
    assert "ITERATIONS=10 CORES=8 PATH_SET=yes" in text


def test_a_failing_task_stops_failed_with_its_exit_code(api):
    task_id = new_id()
    create(api, spec(task_id, "fail", {"exit_code": 3, "message": "no luck"}))
    task = wait_state(api, task_id, "STOPPED")
    assert task["taskResult"] == {"status": "FAILED", "exitCode": 3}
    assert "exited with 3" in task["errorMessage"]


def test_a_step_timeout_stops_the_task_timed_out(api):
    task_id = new_id()
    create(api, spec(task_id, "slowstep"))
    task = wait_state(api, task_id, "STOPPED")
    assert task["taskResult"]["status"] == "TIMED_OUT"
    assert "timed out" in task["errorMessage"]


def test_the_op_spec_timeout_is_the_attempts_deadline(api):
    task_id = new_id()
    create(api, spec(task_id, "sleep", {"seconds": 120}), {**OP_SPEC, "timeout": "3 seconds"})
    task = wait_state(api, task_id, "STOPPED", timeout=60)
    assert task["taskResult"]["status"] == "TIMED_OUT"
    assert "timed out" in task["errorMessage"]


def test_a_rerun_through_the_task_engine_api_is_the_tasks_new_instance(system, api):
    task_id = new_id()
    create(api, spec(task_id, "echo", {"word": "again"}))
    first = wait_state(api, task_id, "STOPPED")
    [row] = system.store.query("SELECT job_id FROM drove_task_ids WHERE task_id = %s", (task_id,))
    with system.client() as engine:
        response = engine.post(f"/jobs/{row['job_id']}/rerun")
    assert response.status_code == 200, response.text
    rerun = response.json()["id"]

    def rerun_stopped() -> dict | None:
        task = show(api, task_id)
        return (
            task
            if task["instanceId"] != first["instanceId"] and task["state"] == "STOPPED"
            else None
        )

    again = wait_until(rerun_stopped, what="the rerun, shown under the same taskId")
    assert again["taskResult"]["status"] == "SUCCESSFUL"
    assert {k: again[k] for k in ("taskId", "sourceAppName", "resources", "env")} == {
        k: first[k] for k in ("taskId", "sourceAppName", "resources", "env")
    }
    [moved] = system.store.query("SELECT job_id FROM drove_task_ids WHERE task_id = %s", (task_id,))
    assert moved["job_id"] == rerun


def test_kill_stops_a_running_task_cancelled_and_refuses_the_rest(api):
    task_id = new_id()
    create(api, spec(task_id, "sleep", {"seconds": 30}))
    wait_state(api, task_id, "RUNNING")
    started = time.monotonic()
    assert kill(api, task_id).json() == {
        "status": "SUCCESS",
        "data": {"taskId": task_id},
        "message": "success",
    }
    task = wait_state(api, task_id, "STOPPED")
    assert task["taskResult"]["status"] == "CANCELLED" and time.monotonic() - started < 20
    failed(kill(api, task_id), 409, "nothing to kill")
    failed(kill(api, new_id()), 404, "no task")
    failed(kill(api, task_id, app="OTHER_APP"), 404, "no task")


def test_pending_tasks_are_killed_or_fail_provisioning_past_their_op_timeout(system, api):
    with system.client() as admin:
        admin.post("/settings", json={"name": "max_jobs", "setting": 1})
    blocker = create(api, spec(new_id(), "sleep", {"seconds": 60}))["taskId"]
    try:
        wait_state(api, blocker, "RUNNING")
        late = create(api, spec(new_id()), {**OP_SPEC, "timeout": "1 second"})["taskId"]
        waiting = create(api, spec(new_id()))["taskId"]
        assert show(api, late)["state"] == "PENDING" and show(api, waiting)["state"] == "PENDING"
        assert kill(api, waiting).json()["status"] == "SUCCESS"
        task = wait_state(api, waiting, "STOPPED")
        assert task["taskResult"]["status"] == "CANCELLED" and task["hostname"] == ""
        created = show(api, late)["created"]
        wait_until(lambda: time.time() * 1000 > created + 1500, what="the op timeout to pass")
        assert show(api, late)["state"] == "PENDING"
    finally:
        with system.client() as admin:
            admin.post("/settings", json={"name": "max_jobs", "setting": 10})
        kill(api, blocker)
    task = wait_state(api, late, "PROVISIONING_FAILED")
    assert "provisioning timed out" in task["errorMessage"] and "(1 second)" in task["errorMessage"]
    assert "taskResult" not in task


def test_a_docker_task_without_kubernetes_fails_provisioning_saying_what_to_set(api):
    task_id = new_id()
    executable = {
        "type": "DOCKER",
        "url": "ghcr.io/appform-io/test-task",
        "dockerPullTimeout": "100 seconds",
    }
    volume = {
        "pathInContainer": "/data",
        "pathOnHost": f"/mnt/{ADMIN[0]}/data",
        "mode": "READ_ONLY",
    }
    create(api, spec(task_id, executable=executable, volumes=[volume], args=["--fast"]))
    task = wait_state(api, task_id, "PROVISIONING_FAILED")
    assert "TASKENGINE_EXECUTOR=kubernetes" in task["errorMessage"]
    assert task["executable"] == executable and task["volumes"] == [volume]
    assert "taskResult" not in task and task["hostname"] == "" and task["executorId"] == ""


def test_an_executor_vanishing_mid_run_leaves_the_task_lost(system, api):
    task_id = new_id()
    create(api, spec(task_id, "sleep", {"seconds": 60}))
    wait_state(api, task_id, "RUNNING")
    old = system.kill("dispatcher")
    system.wait_restarted("dispatcher", old)
    task = wait_state(api, task_id, "LOST", timeout=60)
    assert task["taskResult"] == {"status": "LOST", "exitCode": -1}
    assert task["errorMessage"].startswith("lost")


# --- uniqueness and DELETE ----------------------------------------------------------------------


def test_a_task_id_is_unique_per_app_until_its_finished_instance_is_deleted(system, api):
    task_id = new_id()
    first = create(api, spec(task_id))
    count = submitted_count(system)
    failed(
        api.post("/apis/v1/tasks/operations", json={"type": "CREATE", "spec": first}),
        409,
        "exists already",
    )
    assert submitted_count(system) == count
    create(api, {**spec(task_id), "sourceAppName": "OTHER_APP"})  # another app's namespace
    instance = wait_state(api, task_id, "STOPPED")["instanceId"]
    deleted = api.delete(f"/apis/v1/tasks/TEST_APP/instances/{task_id}")
    assert deleted.json() == {
        "status": "SUCCESS",
        "data": {"taskId": task_id},
        "message": "success",
    }
    failed(api.get(f"/apis/v1/tasks/TEST_APP/instances/{task_id}"), 404, "no task")
    assert all(t["instanceId"] != instance for t in api.get("/apis/v1/tasks").json()["data"])
    failed(api.delete(f"/apis/v1/tasks/TEST_APP/instances/{task_id}"), 404, "no task")
    create(api, spec(task_id))  # the taskId is free again: a new instance
    assert wait_state(api, task_id, "STOPPED")["instanceId"] != instance


def test_delete_refuses_a_running_task(api):
    task_id = new_id()
    create(api, spec(task_id, "sleep", {"seconds": 30}))
    failed(api.delete(f"/apis/v1/tasks/TEST_APP/instances/{task_id}"), 409, "kill it first")
    kill(api, task_id)
    wait_state(api, task_id, "STOPPED")
    assert api.delete(f"/apis/v1/tasks/TEST_APP/instances/{task_id}").status_code == 200


def test_concurrent_creates_of_one_task_id_start_one_task(system, api):
    task_id = new_id()
    answers: list[int] = []

    def post() -> None:
        with basic(system) as http:
            body = {"type": "CREATE", "spec": spec(task_id), "opSpec": OP_SPEC}
            answers.append(http.post("/apis/v1/tasks/operations", json=body).status_code)

    threads = [threading.Thread(target=post) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(answers) == [200] + [409] * 5
    assert len([t for t in api.get("/apis/v1/tasks").json()["data"] if t["taskId"] == task_id]) == 1


# --- log files ----------------------------------------------------------------------------------


def test_log_files_list_read_and_download_the_tasks_output(api):
    task_id = new_id()
    create(api, spec(task_id, "printenv"))
    wait_state(api, task_id, "STOPPED")
    text = wait_until(lambda: "ITERATIONS=10" in (t := output(api, task_id)) and t, what="output")
    base = f"/apis/v1/logfiles/tasks/TEST_APP/{task_id}"
    assert api.get(f"{base}/list").json() == {"files": ["output.log"]}
    assert api.get(f"{base}/read/output.log").json() == {"data": "", "offset": len(text)}
    assert api.get(f"{base}/read/output.log?offset=-1").json() == {"data": "", "offset": len(text)}
    assert api.get(f"{base}/read/output.log?offset=0").json() == {"data": text, "offset": 0}
    part = api.get(f"{base}/read/output.log", params={"offset": 3, "length": 5}).json()
    assert part == {"data": text[3:8], "offset": 3}
    assert api.get(f"{base}/read/output.log?offset={len(text) + 10}").json()["data"] == ""
    download = api.get(f"{base}/download/output.log")
    assert download.headers["content-disposition"] == "attachment; filename=output.log"
    assert download.text == text and text.endswith("\n")
    for query, fragment in (
        ("offset=abc", "offset"),
        ("offset=-2", "offset"),
        ("length=0", "length"),
    ):
        failed(api.get(f"{base}/read/output.log?{query}"), 400, fragment)
    failed(api.get(f"{base}/read/other.log"), 404, "no log file")
    failed(api.get(f"{base}/download/other.log"), 404, "no log file")
    failed(api.get(f"/apis/v1/logfiles/tasks/TEST_APP/{new_id()}/list"), 404, "no task")


# --- search -------------------------------------------------------------------------------------


def test_search_redirects_a_form_and_answers_json_with_the_instances(api):
    task_id = new_id()
    create(api, spec(task_id))
    form = {"taskSearchAppName": "TEST_APP", "taskSearchTaskID": task_id}
    response = api.post("/apis/v1/tasks/search", data=form)
    assert response.status_code == 303
    assert response.headers["location"] == f"/apis/v1/tasks/TEST_APP/instances/{task_id}"
    assert api.get(response.headers["location"]).json()["data"]["taskId"] == task_id
    failed(
        api.post("/apis/v1/tasks/search", data={**form, "taskSearchTaskID": new_id()}),
        404,
        "no task",
    )
    failed(api.post("/apis/v1/tasks/search", data={"taskSearchAppName": "TEST_APP"}), 400, "taskId")
    found = api.post("/apis/v1/tasks/search", json={"sourceAppName": "TEST_APP", "taskId": task_id})
    assert found.json()["status"] == "SUCCESS"
    assert [t["taskId"] for t in found.json()["data"]] == [task_id]
    by_app = api.post("/apis/v1/tasks/search", json={"sourceAppName": "TEST_APP"}).json()["data"]
    assert task_id in [t["taskId"] for t in by_app] and {t["sourceAppName"] for t in by_app} == {
        "TEST_APP"
    }
    assert api.post("/apis/v1/tasks/search", json={"taskId": new_id()}).json()["data"] == []
    failed(api.post("/apis/v1/tasks/search", json={}), 400, "search by")
    failed(api.post("/apis/v1/tasks/search", json={"appName": "x"}), 400, "search by")
    failed(api.post("/apis/v1/tasks/search", json={"taskId": "a b"}), 400, "taskId")
    failed(api.post("/apis/v1/tasks/search", content=b"{"), 400, "malformed JSON")


# --- tenants --------------------------------------------------------------------------------------


def test_a_client_sees_and_touches_only_its_own_tasks(system, api):
    task_id = new_id()
    create(api, spec(task_id, "printenv"))
    wait_state(api, task_id, "STOPPED")
    with basic(system, OTHER) as other:
        assert all(t["taskId"] != task_id for t in other.get("/apis/v1/tasks").json()["data"])
        failed(other.get(f"/apis/v1/tasks/TEST_APP/instances/{task_id}"), 404, "no task")
        failed(kill(other, task_id), 404, "no task")
        failed(other.delete(f"/apis/v1/tasks/TEST_APP/instances/{task_id}"), 404, "no task")
        base = f"/apis/v1/logfiles/tasks/TEST_APP/{task_id}"
        for path in ("list", "read/output.log", "download/output.log"):
            failed(other.get(f"{base}/{path}"), 404, "no task")
        form = {"taskSearchAppName": "TEST_APP", "taskSearchTaskID": task_id}
        failed(other.post("/apis/v1/tasks/search", data=form), 404, "no task")
        assert other.post("/apis/v1/tasks/search", json={"taskId": task_id}).json()["data"] == []
        create(other, spec(task_id))  # its own namespace: the same ids are free
        assert show(other, task_id)["instanceId"] != show(api, task_id)["instanceId"]


# --- bad input ------------------------------------------------------------------------------------

WORKFLOW = {"type": "WORKFLOW", "name": "echo"}
BAD_CREATES = [
    ({"spec": {"sourceAppName": None}}, "sourceAppName is required"),
    ({"spec": {"sourceAppName": "a b", "taskId": "x"}}, "sourceAppName"),
    ({"spec": {"taskId": "x/y"}}, "taskId"),
    ({"spec": {"executable": None}}, "executable must be an object"),
    ({"spec": {"executable": {"type": "SHELL", "command": "rm -rf /"}}}, "DOCKER or WORKFLOW"),
    (
        {
            "spec": {
                "executable": {"type": "WORKFLOW", "name": "inline", "parameters": {"steps": []}}
            }
        },
        "not allowed",
    ),
    ({"spec": {"executable": {"type": "WORKFLOW", "name": "nope"}}}, "unknown workflow"),
    (
        {"spec": {"executable": {"type": "WORKFLOW", "name": "echo", "parameters": []}}},
        "parameters",
    ),
    (
        {
            "spec": {
                "executable": {"type": "WORKFLOW", "name": "fail", "parameters": {"exit_code": 0}}
            }
        },
        "exit_code",
    ),
    ({"spec": {"executable": {**WORKFLOW, "url": "workflow://sleep"}}}, "url"),
    ({"spec": {"executable": {"type": "DOCKER"}}}, "url"),
    ({"spec": {"executable": {"type": "DOCKER", "url": "a b"}}}, "url"),
    (
        {"spec": {"executable": {"type": "DOCKER", "url": "img", "dockerPullTimeout": "soon"}}},
        "dockerPullTimeout",
    ),
    ({"spec": {"resources": None}}, "resources is required"),
    ({"spec": {"resources": [{"type": "CPU", "count": 1}]}}, "MEMORY"),
    (
        {"spec": {"resources": [{"type": "CPU", "count": 0}, {"type": "MEMORY", "sizeInMB": 1}]}},
        "count",
    ),
    ({"spec": {"resources": [{"type": "GPU", "count": 1}]}}, "CPU or MEMORY"),
    ({"spec": {"env": {"PATH": "/tmp"}}}, "reserved"),
    ({"spec": {"env": {"LD_PRELOAD": "/tmp/x.so"}}}, "reserved"),
    ({"spec": {"env": {"TASKENGINE_DATABASE_URL": "x"}}}, "reserved"),
    ({"spec": {"env": {"lower": "x"}}}, "not a name"),
    ({"spec": {"env": {"N": 1}}}, "must be a string"),
    ({"spec": {"env": []}}, "env must map"),
    (
        {"spec": {"volumes": [{"pathInContainer": "/d", "pathOnHost": "/", "mode": "READ_WRITE"}]}},
        "DOCKER executables only",
    ),
    ({"spec": {"args": ["--x"]}}, "DOCKER executables only"),
    (
        {
            "spec": {
                "executable": {"type": "DOCKER", "url": "img"},
                "volumes": [{"pathInContainer": "/d", "pathOnHost": "/etc", "mode": "READ_ONLY"}],
            }
        },
        f"not a host path this engine mounts for this client (allowed: /mnt/{ADMIN[0]})",
    ),
    ({"spec": {"args": "x"}}, "args"),
    ({"spec": {"tags": {"a": 1}}}, "tags"),
    ({"spec": {"surprise": 1}}, "unknown field spec.surprise"),
    ({"opSpec": {"timeout": "5 fortnights"}}, "opSpec.timeout"),
    ({"opSpec": {"timeout": "0s"}}, "opSpec.timeout"),
    ({"opSpec": {"timeout": 300}}, "opSpec.timeout"),
    ({"opSpec": {"parallelism": 0}}, "parallelism"),
    ({"opSpec": {"failureStrategy": "RETRY"}}, "failureStrategy"),
    ({"opSpec": "5m"}, "opSpec must be an object"),
    ({"extra": True}, "unknown field extra"),
]


def bad_create(change: dict) -> dict:
    body = {"type": "CREATE", "spec": spec(new_id(), volumes=[], args=[]), "opSpec": dict(OP_SPEC)}
    for part in ("spec", "opSpec"):
        if isinstance(change.get(part), dict) and isinstance(body[part], dict):
            body[part] = {**body[part], **change[part]}
        elif part in change:
            body[part] = change[part]
    body.update({k: v for k, v in change.items() if k not in ("spec", "opSpec")})
    return body


def test_bad_operations_are_refused_whole_and_store_nothing(system, api):
    count = submitted_count(system)
    for change, fragment in BAD_CREATES:
        body = failed(api.post("/apis/v1/tasks/operations", json=bad_create(change)), 400, fragment)
        assert body["data"]["validationErrors"] == [body["message"]]
    for raw, fragment in (
        (b"not json", "malformed JSON"),
        (b"[]", "JSON object"),
        (b'{"type": "CREATE", "spec": {"taskId": "a\\u0000"}}', "NUL"),
        (b'{"type": "DESTROY"}', "CREATE or KILL"),
        (b'{"type": "CREATE"}', "spec is required"),
        (b'{"type": "KILL", "sourceAppName": "TEST_APP"}', "taskId is required"),
        (b'{"type": "KILL", "sourceAppName": "A", "taskId": "B", "force": 1}', "unknown field"),
    ):
        failed(api.post("/apis/v1/tasks/operations", content=raw), 400, fragment)
    too_big = b'{"type": "CREATE", "spec": {"taskId": "' + b"x" * 600_000 + b'"}}'
    failed(api.post("/apis/v1/tasks/operations", content=too_big), 413, "too large")
    assert submitted_count(system) == count
    failed(api.get("/apis/v1/tasks/TEST_APP/instances/a%20b"), 404, "no task")
    failed(api.get(f"/apis/v1/tasks/TEST_APP/instances/{'x' * 300}"), 404, "no task")
