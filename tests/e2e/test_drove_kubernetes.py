"""DOCKER tasks of the container-task API (seed 004, Drove) on the Kubernetes executor, with the
system as `make up` starts it against the fake Kubernetes API server: each runs as a plain Job
of its image (no worker reports), which the test plays through the fake; the dispatcher ends
the task as the Job's and pod's status say."""

from __future__ import annotations

from collections.abc import Iterator
from uuid import uuid4

import httpx
import pytest
from taskengine_dispatcher.executors import kube_jobs

from tests.support.fake_kubernetes import FakeKubernetes
from tests.support.system import ADMIN, System, running_system
from tests.support.waiting import wait_until

CONTEXT = "fake-drove"
NAMESPACE = "drove-tasks"
IMAGE = "ghcr.io/appform-io/test-task:1.4"
ALLOWED = "/mnt/shared"
OWN = f"{ALLOWED}/{ADMIN[0]}"
"""The client's own subdirectory of the allowed host path: the only one its tasks mount."""
OP_SPEC = {"timeout": "5m", "parallelism": 1, "failureStrategy": "STOP"}


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeKubernetes]:
    with FakeKubernetes() as server:
        yield server


@pytest.fixture(scope="module")
def system(postgres_url, fake, tmp_path_factory) -> Iterator[System]:
    kubeconfig = fake.kubeconfig(tmp_path_factory.mktemp("kube") / "config", contexts=[CONTEXT])
    env = {
        "TASKENGINE_EXECUTOR": "kubernetes",
        "KUBECONFIG": str(kubeconfig),
        "TASKENGINE_KUBE_NAMESPACE": NAMESPACE,
        "TASKENGINE_KUBE_HOST_PATHS": ALLOWED,
    }
    with running_system(postgres_url, "drove-kube", env=env) as system:
        with system.client() as admin:
            admin.post("/settings", json={"name": "max_jobs", "setting": 10})
        yield system


@pytest.fixture(scope="module")
def api(system) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=system.url, auth=ADMIN, timeout=30) as http:
        yield http


def spec(task_id: str, pull_timeout: str = "100 seconds", **fields) -> dict:  # type: ignore[no-untyped-def]
    return {
        "sourceAppName": "TEST_APP",
        "taskId": task_id,
        "executable": {"type": "DOCKER", "url": IMAGE, "dockerPullTimeout": pull_timeout},
        "resources": [{"type": "CPU", "count": 2}, {"type": "MEMORY", "sizeInMB": 512}],
        "env": {"ITERATIONS": "10"},
        "args": ["--fast"],
        **fields,
    }


def operation(api: httpx.Client, task_spec: dict) -> httpx.Response:
    body = {"type": "CREATE", "spec": task_spec, "opSpec": OP_SPEC}
    return api.post("/apis/v1/tasks/operations", json=body)


def create(api: httpx.Client, task_spec: dict) -> str:
    response = operation(api, task_spec)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "SUCCESS"
    return task_spec["taskId"]


def show(api: httpx.Client, task_id: str) -> dict:
    response = api.get(f"/apis/v1/tasks/TEST_APP/instances/{task_id}")
    assert response.status_code == 200, response.text
    return response.json()["data"]


def wait_state(system: System, api: httpx.Client, task_id: str, state: str) -> dict:
    try:
        return wait_until(
            lambda: (lambda t: t if t["state"] == state else None)(show(api, task_id)),
            timeout=60,
            what=f"task {task_id} to be {state}",
        )
    except AssertionError:
        print(system.service_errors())
        raise


def job_of(system: System, fake: FakeKubernetes, task_id: str) -> dict:
    """The Job of the task's (one) attempt, once the dispatcher created it."""
    rows = system.store.query("SELECT job_id FROM drove_task_ids WHERE task_id = %s", (task_id,))
    name = f"te-{rows[0]['job_id']}-1"

    def created() -> dict | None:
        return next((j for j in fake.jobs() if j["metadata"]["name"] == name), None)

    try:
        return wait_until(created, timeout=60, what=f"Job {name}")
    except AssertionError:
        print(system.service_errors())
        raise


def gone(fake: FakeKubernetes, name: str) -> None:
    wait_until(lambda: name not in {j["metadata"]["name"] for j in fake.jobs()}, what="deletion")
    assert [d.propagation_policy for d in fake.deletions if d.name == name] == ["Background"]


def new_id() -> str:
    return f"T-{uuid4().hex[:12]}"


def test_a_docker_task_runs_its_image_as_a_job_and_stops_successful_with_its_output(
    system, api, fake
):
    volume = {"pathInContainer": "/data", "pathOnHost": f"{OWN}/in", "mode": "READ_ONLY"}
    task_id = create(api, spec(new_id(), volumes=[volume]))
    job = job_of(system, fake, task_id)
    name = job["metadata"]["name"]
    assert job["metadata"]["namespace"] == NAMESPACE and fake.cluster_of(name) == CONTEXT
    assert job["spec"]["backoffLimit"] == 0
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and pod["automountServiceAccountToken"] is False
    [container] = pod["containers"]
    assert container["image"] == IMAGE and container["args"] == ["--fast"]
    assert "command" not in container  # the image's own entry point
    assert container["env"] == [{"name": "ITERATIONS", "value": "10"}]  # nothing of the engine's
    amounts = {"cpu": "2", "memory": "512Mi"}
    assert container["resources"] == {"requests": amounts, "limits": amounts}
    assert container["volumeMounts"] == [
        {"name": "volume-0", "mountPath": "/data", "readOnly": True}
    ]
    assert pod["volumes"] == [
        {"name": "volume-0", "hostPath": {"path": f"{OWN}/in", "type": "Directory"}}
    ]
    assert pod["securityContext"] == kube_jobs.POD_SECURITY  # whatever the image
    assert container["securityContext"] == kube_jobs.CONTAINER_SECURITY
    assert not (pod["hostNetwork"] or pod["hostPID"] or pod["hostIPC"])
    assert show(api, task_id)["state"] == "STARTING"  # until its container runs

    fake.run(name)
    assert wait_state(system, api, task_id, "RUNNING")["hostname"] == CONTEXT
    fake.write_log(name, "pulling data\nITERATIONS=10 done\n")
    fake.succeed(name)
    task = wait_state(system, api, task_id, "STOPPED")
    assert task["taskResult"] == {"status": "SUCCESSFUL", "exitCode": 0}
    assert task["errorMessage"] == ""
    download = f"/apis/v1/logfiles/tasks/TEST_APP/{task_id}/download/output.log"
    text = wait_until(lambda: api.get(download).text, what="the container's output")
    assert text == "pulling data\nITERATIONS=10 done\n"


def test_a_failing_container_stops_the_task_failed_with_its_exit_code_and_no_retry(
    system, api, fake
):
    task_id = create(api, spec(new_id()))
    name = job_of(system, fake, task_id)["metadata"]["name"]
    fake.run(name)
    fake.fail(name, exit_code=3)
    task = wait_state(system, api, task_id, "STOPPED")
    assert task["taskResult"] == {"status": "FAILED", "exitCode": 3}
    assert task["errorMessage"] == "the container exited with code 3"
    retried = name.removesuffix("-1") + "-2"
    assert retried not in {j["metadata"]["name"] for j in fake.jobs()}


def test_kill_deletes_the_job_and_stops_the_task_cancelled(system, api, fake):
    task_id = create(api, spec(new_id()))
    name = job_of(system, fake, task_id)["metadata"]["name"]
    fake.run(name)
    wait_state(system, api, task_id, "RUNNING")
    body = {"type": "KILL", "sourceAppName": "TEST_APP", "taskId": task_id, "opSpec": OP_SPEC}
    assert api.post("/apis/v1/tasks/operations", json=body).json()["status"] == "SUCCESS"
    gone(fake, name)
    task = wait_state(system, api, task_id, "STOPPED")
    assert task["taskResult"] == {"status": "CANCELLED", "exitCode": -1}


def test_a_vanished_job_leaves_the_task_lost(system, api, fake):
    task_id = create(api, spec(new_id()))
    name = job_of(system, fake, task_id)["metadata"]["name"]
    fake.run(name)
    fake.vanish(name)
    task = wait_state(system, api, task_id, "LOST")
    assert task["taskResult"] == {"status": "LOST", "exitCode": -1}
    assert task["errorMessage"] == "lost: its Job vanished"


def test_a_job_past_its_deadline_stops_the_task_timed_out(system, api, fake):
    task_id = create(api, spec(new_id()))
    name = job_of(system, fake, task_id)["metadata"]["name"]
    fake.run(name)
    fake.deadline_exceeded(name)
    task = wait_state(system, api, task_id, "STOPPED")
    assert task["taskResult"]["status"] == "TIMED_OUT"


def test_an_image_not_pulled_within_its_pull_timeout_fails_provisioning(system, api, fake):
    task_id = create(api, spec(new_id(), pull_timeout="1 second"))
    name = job_of(system, fake, task_id)["metadata"]["name"]
    fake.pull_fails(name, "ErrImagePull")
    fake.pull_fails(name, "ImagePullBackOff")
    task = wait_state(system, api, task_id, "PROVISIONING_FAILED")
    assert "taskResult" not in task
    message = task["errorMessage"]
    assert message.startswith(f"provisioning failed: the image {IMAGE} was not pulled")
    assert "(1 second)" in message and "ImagePullBackOff" in message
    gone(fake, name)


def test_configs_fail_provisioning_saying_why(system, api, fake):
    config = {"type": "INLINE", "localFilename": "/etc/task.conf", "data": "eA=="}
    task_id = create(api, spec(new_id(), configs=[config]))
    task = wait_state(system, api, task_id, "PROVISIONING_FAILED")
    assert "spec.configs" in task["errorMessage"]


@pytest.mark.parametrize(
    ("path", "mode"),
    [
        ("/etc", "READ_ONLY"),
        ("/mnt/sharedother", "READ_ONLY"),
        (f"{ALLOWED}/../../etc", "READ_ONLY"),
        ("/var/run/docker.sock", "READ_ONLY"),
        (ALLOWED, "READ_ONLY"),  # every client's data
        (f"{ALLOWED}/other-client/in", "READ_ONLY"),
        (f"{OWN}/../other-client", "READ_ONLY"),
        (f"{OWN}/./in", "READ_ONLY"),
        (f"{ALLOWED}//{ADMIN[0]}", "READ_ONLY"),
        (f"{OWN}/in", "READ_WRITE"),  # a task never writes where another task mounts
    ],
)
def test_volumes_outside_the_clients_host_paths_or_writable_are_refused_at_create(
    system, api, path, mode
):
    volume = {"pathInContainer": "/data", "pathOnHost": path, "mode": mode}
    task_id = new_id()
    response = operation(api, spec(task_id, volumes=[volume]))
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["status"] == "FAILED"
    if mode == "READ_WRITE":
        assert "mode must be READ_ONLY" in body["message"]
    else:
        assert "is not a host path this engine mounts for this client" in body["message"]
        assert f"allowed: {OWN}" in body["message"]
    missing = api.get(f"/apis/v1/tasks/TEST_APP/instances/{task_id}")
    assert missing.status_code == 404
