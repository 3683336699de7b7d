"""The Kubernetes executor (`TASKENGINE_EXECUTOR=kubernetes`) with the system as `make up`
starts it, against the fake Kubernetes API server (tests/support/fake_kubernetes.py): the only
fake. The test plays the Job controller and the kubelet through the fake, and plays the pod by
running `taskengine worker` with the environment the recorded Job gives its container, so the
worker reports to the real gateway over HTTP.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator

import httpx
import pytest
from taskengine_contracts.events import JobExecuting, JobStarted, JobSucceeded
from taskengine_core.attempts import worker_token
from taskengine_dispatcher.executors.kube_jobs import CLIENT_LABEL

from tests.support.fake_kubernetes import FakeKubernetes
from tests.support.system import ADMIN, BIN, WEBHOOK_KEY, System, running_system
from tests.support.waiting import wait_until

CONTEXTS = ("fake-a", "fake-b")
NAMESPACE = "taskengine-jobs"
WORKER_IMAGE = "registry.example/taskengine:1.2"
WORKFLOWS = {
    "custom.yaml": "name: custom\nimage: registry.example/custom:7\n"
    "steps:\n  - name: hello\n    run: echo hello\n",
}
BODY = {
    "type": "pipeline_execution",
    "priority": 1,
    "project_id": "proj-k8s",
    "resource_requirements": {"cpu": "1", "memory": "1Gi", "gpu": False},
    "data_access": {"input_datasets": ["dataset-1"], "output_location": "s3://out/k8s/"},
}


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeKubernetes]:
    with FakeKubernetes() as server:
        yield server


@pytest.fixture(scope="module")
def system(postgres_url, fake, tmp_path_factory) -> Iterator[System]:
    kubeconfig = fake.kubeconfig(tmp_path_factory.mktemp("kube") / "config", contexts=CONTEXTS)
    env = {
        "TASKENGINE_EXECUTOR": "kubernetes",
        "KUBECONFIG": str(kubeconfig),
        "TASKENGINE_KUBE_CONTEXTS": ",".join(CONTEXTS),
        "TASKENGINE_KUBE_NAMESPACE": NAMESPACE,
        "TASKENGINE_WORKER_IMAGE": WORKER_IMAGE,
        "TASKENGINE_MAX_MEMORY": "2Gi",
    }
    with running_system(postgres_url, "kube", workflows=WORKFLOWS, env=env) as system:
        with system.client() as admin:
            for name, value in (("max_jobs", 10), ("retry_delay", 1), ("retry_max_delay", 1)):
                admin.post("/settings", json={"name": name, "setting": value})
        yield system


@pytest.fixture(scope="module")
def api(system) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {ADMIN[1]}"}
    with httpx.Client(base_url=system.url, headers=headers, timeout=30) as http:
        yield http


def submit(api: httpx.Client, pipeline: str = "echo", **fields) -> str:  # type: ignore[no-untyped-def]
    spec = {"pipeline_id": pipeline, "parameters": {"word": "hi"}}
    if "timeout" in fields:
        spec["timeout"] = fields.pop("timeout")
    response = api.post("/api/worktasks", json={**BODY, "task_spec": spec, **fields})
    assert response.status_code == 201, response.text
    assert response.json()["status"] == "queued"
    return response.json()["worktask_id"]


def task(api: httpx.Client, worktask_id: str) -> dict:
    response = api.get(f"/api/worktasks/{worktask_id}")
    assert response.status_code == 200, response.text
    return response.json()


def reaches(system: System, api: httpx.Client, worktask_id: str, check) -> dict:  # type: ignore[no-untyped-def]
    def reached() -> dict | None:
        found = task(api, worktask_id)
        return found if check(found) else None

    try:
        return wait_until(reached, timeout=60, what=f"work task {worktask_id}")
    except AssertionError:
        print(system.service_errors())
        raise


def status_is(*statuses: str):  # type: ignore[no-untyped-def]
    return lambda found: found["status"] in statuses


def job_of(system: System, fake: FakeKubernetes, worktask_id: str, attempt: int) -> dict:
    """The Job of an attempt, once the dispatcher created it."""
    name = f"te-{worktask_id}-{attempt}"

    def created() -> dict | None:
        return next((j for j in fake.jobs() if j["metadata"]["name"] == name), None)

    try:
        return wait_until(created, timeout=60, what=f"Job {name}")
    except AssertionError:
        print(system.service_errors())
        raise


def play_pod(fake: FakeKubernetes, job: dict) -> int:
    """Runs the Job's pod: `taskengine worker` with the container's environment (its plain
    values: the Secret's are references); tells the fake how it exited."""
    name = job["metadata"]["name"]
    [container] = job["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["taskengine", "worker"]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    fake.run(name)
    plain = {k: os.environ[k] for k in ("PATH", "HOME", "LANG") if k in os.environ}
    done = subprocess.run(
        [str(BIN / "taskengine"), "worker"], env={**plain, **env}, timeout=60, capture_output=True
    )
    assert done.returncode == 0, done.stderr.decode()
    fake.succeed(name)
    return done.returncode


def limits(job: dict) -> dict:
    return job["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]


def no_execution_left(system: System, worktask_id: str) -> None:
    """Waits until the dispatcher let go of the task's attempts (it saw their Jobs end)."""
    query = "SELECT 1 FROM dispatcher_executions WHERE job_id = %s"
    wait_until(
        lambda: not system.store.query(query, (int(worktask_id),)),
        what=f"the dispatcher to let go of {worktask_id}",
    )


def test_a_work_task_runs_as_a_job_whose_worker_reports_it_completed(system, api, fake):
    worktask_id = submit(api)
    spawned = reaches(system, api, worktask_id, status_is("spawned"))
    name = f"te-{worktask_id}-1"
    assert spawned["kubernetes_job_name"] == name
    assert spawned["cluster_name"] in CONTEXTS
    job = job_of(system, fake, worktask_id, 1)
    assert fake.cluster_of(name) == spawned["cluster_name"]
    assert job["metadata"]["namespace"] == NAMESPACE

    play_pod(fake, job)
    done = reaches(system, api, worktask_id, status_is("completed", "failed"))
    assert done["status"] == "completed", json.dumps(done)
    assert done["retry_count"] == 0 and done["output_location"] == "s3://out/k8s/"
    no_execution_left(system, worktask_id)  # the Job's end changed nothing: it had reported
    kinds = [type(e) for e in system.events(int(worktask_id))]
    assert kinds.index(JobStarted) < kinds.index(JobExecuting) < kinds.index(JobSucceeded)
    [started] = [e for e in system.events(int(worktask_id)) if isinstance(e, JobStarted)]
    assert (started.executor, started.job_name, started.cluster, started.memory) == (
        "kubernetes",
        name,
        spawned["cluster_name"],
        "1Gi",
    )


def test_attempts_take_the_clusters_in_turn(system, api, fake):
    first, second = submit(api), submit(api)
    clusters = {
        fake.cluster_of(job_of(system, fake, i, 1)["metadata"]["name"]) for i in (first, second)
    }
    assert clusters == set(CONTEXTS)
    for worktask_id in (first, second):
        play_pod(fake, job_of(system, fake, worktask_id, 1))
        assert reaches(system, api, worktask_id, status_is("completed", "failed"))["status"] == (
            "completed"
        )


def test_the_job_asks_for_the_resources_names_the_secret_and_cancelling_deletes_it(
    system, api, fake
):
    fake.add_secret("creds-secret", namespace=NAMESPACE, labels={CLIENT_LABEL: ADMIN[0]})
    resources = {"cpu": "500m", "memory": "768Mi", "gpu": True}
    access = {**BODY["data_access"], "storage_credentials": "creds-secret"}
    worktask_id = submit(
        api, "custom", timeout=120, resource_requirements=resources, data_access=access
    )
    job = job_of(system, fake, worktask_id, 1)
    name = job["metadata"]["name"]
    labels = {"taskengine.io/task-id": worktask_id, "taskengine.io/attempt": "1"}
    assert labels.items() <= job["metadata"]["labels"].items()
    spec = job["spec"]
    assert (spec["backoffLimit"], spec["activeDeadlineSeconds"]) == (0, 180)
    assert spec["ttlSecondsAfterFinished"] == 3600
    pod = spec["template"]["spec"]
    assert labels.items() <= spec["template"]["metadata"]["labels"].items()
    assert pod["restartPolicy"] == "Never" and pod["automountServiceAccountToken"] is False
    [container] = pod["containers"]
    assert container["image"] == "registry.example/custom:7"  # the workflow's own image
    amounts = {"cpu": "500m", "memory": "768Mi", "nvidia.com/gpu": "1"}
    assert container["resources"] == {"requests": amounts, "limits": amounts}
    plain = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    assert plain["TASKENGINE_JOB_ID"] == worktask_id and plain["TASKENGINE_ATTEMPT"] == "1"
    assert plain["TASKENGINE_WORKER_TOKEN"] == worker_token(WEBHOOK_KEY, int(worktask_id), 1)
    assert plain["TASKENGINE_GATEWAY_URL"] == system.url
    assert plain["TASKENGINE_TIMEOUT"] == "120"
    assert "creds-secret" not in plain.values()
    refs = [e for e in container["env"] if "valueFrom" in e]
    assert refs and all(
        e["valueFrom"]["secretKeyRef"]["name"] == "creds-secret"
        and e["name"] == e["valueFrom"]["secretKeyRef"]["key"]
        for e in refs
    )
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= {e["name"] for e in refs}
    assert not any("DATABASE" in n or "WEBHOOK" in n for n in plain)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}

    with system.client() as engine:  # the Task Engine dialect breaks (cancels) it
        response = engine.patch(f"/jobs/{worktask_id}", json={"queue_state": "broken"})
        assert response.status_code == 200, response.text
    wait_until(lambda: name not in {j["metadata"]["name"] for j in fake.jobs()}, what="deletion")
    assert [d.propagation_policy for d in fake.deletions if d.name == name] == ["Background"]
    assert task(api, worktask_id)["status"] == "cancelled"
    no_execution_left(system, worktask_id)


@pytest.mark.parametrize(
    ("secret", "labels"),
    [
        ("unlabelled-secret", {}),
        ("other-clients-secret", {CLIENT_LABEL: "someone-else"}),
        ("no-such-secret", None),
    ],
)
def test_a_storage_secret_not_labelled_as_the_clients_own_is_refused(
    system, api, fake, secret, labels
):
    if labels is not None:
        fake.add_secret(secret, namespace=NAMESPACE, labels=labels)
    access = {**BODY["data_access"], "storage_credentials": secret}
    worktask_id = submit(api, data_access=access)
    done = reaches(system, api, worktask_id, status_is("completed", "failed"))
    assert done["status"] == "failed" and done["retry_count"] == 0
    assert done["error_message"] == (
        f"storage_credentials: the Secret {secret!r} is not labelled {CLIENT_LABEL}={ADMIN[0]}:"
        " a task may only use its own client's Secrets"
    )
    assert f"te-{worktask_id}-1" not in {j["metadata"]["name"] for j in fake.jobs()}
    no_execution_left(system, worktask_id)


def test_an_oom_killed_attempt_is_requeued_with_more_memory_up_to_the_cap(system, api, fake):
    worktask_id = submit(api)
    assert limits(job_of(system, fake, worktask_id, 1))["memory"] == "1Gi"
    fake.oom_kill(f"te-{worktask_id}-1")
    second = job_of(system, fake, worktask_id, 2)
    assert limits(second)["memory"] == "1536Mi"
    found = task(api, worktask_id)
    assert (found["retry_count"], found["retry_reason"]) == (1, "OOMKilled")
    assert found["resource_requirements"]["memory"] == "1536Mi"
    fake.oom_kill(f"te-{worktask_id}-2")
    third = job_of(system, fake, worktask_id, 3)
    assert limits(third)["memory"] == "2048Mi"  # TASKENGINE_MAX_MEMORY
    play_pod(fake, third)
    done = reaches(system, api, worktask_id, status_is("completed", "failed"))
    assert (done["status"], done["retry_count"]) == ("completed", 2), done


def test_an_evicted_attempt_is_requeued(system, api, fake):
    worktask_id = submit(api)
    fake.run(job_of(system, fake, worktask_id, 1)["metadata"]["name"])
    fake.evict(f"te-{worktask_id}-1")
    second = job_of(system, fake, worktask_id, 2)
    found = task(api, worktask_id)
    assert (found["retry_count"], found["retry_reason"]) == (1, "Evicted")
    assert found["error_message"].startswith("Evicted: The node was low on resource")
    play_pod(fake, second)
    assert reaches(system, api, worktask_id, status_is("completed", "failed"))["status"] == (
        "completed"
    )


def test_a_job_past_its_deadline_is_retried_then_ends_in_timeout(system, api, fake):
    worktask_id = submit(api, timeout=30, max_retries=1)
    for attempt in (1, 2):
        name = job_of(system, fake, worktask_id, attempt)["metadata"]["name"]
        fake.run(name)
        fake.deadline_exceeded(name)
    done = reaches(system, api, worktask_id, status_is("timeout", "failed", "completed"))
    assert (done["status"], done["retry_count"], done["retry_reason"]) == (
        "timeout",
        1,
        "DeadlineExceeded",
    ), done
    no_execution_left(system, worktask_id)


def test_a_task_out_of_retries_ends_failed(system, api, fake):
    worktask_id = submit(api, max_retries=1)
    fake.oom_kill(job_of(system, fake, worktask_id, 1)["metadata"]["name"])
    fake.oom_kill(job_of(system, fake, worktask_id, 2)["metadata"]["name"])
    done = reaches(system, api, worktask_id, status_is("failed", "completed"))
    assert done["status"] == "failed" and done["retry_count"] == 1, done
    assert done["error_message"].startswith("OOMKilled")
    assert [j for j in fake.jobs() if j["metadata"]["name"] == f"te-{worktask_id}-3"] == []


def test_a_vanished_job_or_a_worker_that_exits_unreported_loses_its_attempt(system, api, fake):
    worktask_id = submit(api)
    fake.run(job_of(system, fake, worktask_id, 1)["metadata"]["name"])
    fake.vanish(f"te-{worktask_id}-1")
    fake.fail(job_of(system, fake, worktask_id, 2)["metadata"]["name"], exit_code=1)
    third = job_of(system, fake, worktask_id, 3)
    found = task(api, worktask_id)
    assert (found["retry_count"], found["retry_reason"]) == (2, "lost")
    assert found["error_message"] == "lost: the worker exited (code 1) without a final report"
    play_pod(fake, third)
    assert reaches(system, api, worktask_id, status_is("completed", "failed"))["status"] == (
        "completed"
    )


def test_a_dispatcher_killed_right_after_creating_a_job_adopts_it_on_restart(system, api, fake):
    killed: list[int] = []
    create = fake._create_job

    def create_then_kill(*args, **kwargs):  # type: ignore[no-untyped-def]
        created = create(*args, **kwargs)  # the Job exists; its creator never hears so
        if not killed:
            killed.append(system.kill("dispatcher", signal.SIGKILL))
        return created

    fake._create_job = create_then_kill  # type: ignore[method-assign]
    try:
        worktask_id = submit(api)
        job = job_of(system, fake, worktask_id, 1)
        wait_until(lambda: killed, what="the dispatcher to be killed")
    finally:
        fake._create_job = create  # type: ignore[method-assign]
    system.wait_restarted("dispatcher", killed[0])
    log = system.data_dir / "logs" / "dispatcher.log"
    wait_until(lambda: "adopted 1 Kubernetes Job(s)" in log.read_text(), what="the adoption")
    name = f"te-{worktask_id}-1"
    ours = [
        j for j in fake.jobs() if j["metadata"]["labels"]["taskengine.io/task-id"] == worktask_id
    ]
    assert [j["metadata"]["name"] for j in ours] == [name]
    posts = [r for r in fake.requests if r.method == "POST" and r.body["metadata"]["name"] == name]
    assert len(posts) == 1

    play_pod(fake, job)
    done = reaches(system, api, worktask_id, status_is("completed", "failed"))
    assert (done["status"], done["retry_count"]) == ("completed", 0), done
    no_execution_left(system, worktask_id)


def test_a_dropped_watch_resumes_and_expired_history_is_listed_again(system, api, fake):
    worktask_id = submit(api)
    first = job_of(system, fake, worktask_id, 1)["metadata"]["name"]
    fake.drop_watches()  # connections reset mid-stream
    fake.oom_kill(first)  # while nobody watches
    second = job_of(system, fake, worktask_id, 2)["metadata"]["name"]
    assert task(api, worktask_id)["retry_reason"] == "OOMKilled"

    fake.drop_watches()
    fake.run(second)  # missed, and then forgotten: resuming from before it is 410 Gone
    fake.compact()
    compacted = len(fake.requests)
    fake.evict(second)
    third = job_of(system, fake, worktask_id, 3)
    found = task(api, worktask_id)
    assert (found["retry_count"], found["retry_reason"]) == (2, "Evicted")
    relists = [
        r
        for r in fake.requests[compacted:]
        if r.method == "GET" and r.path.endswith("/jobs") and "watch" not in r.query
    ]
    assert relists, "the dispatcher listed Jobs again after 410 Gone"
    play_pod(fake, third)
    assert reaches(system, api, worktask_id, status_is("completed", "failed"))["status"] == (
        "completed"
    )


def stray_job(fake: FakeKubernetes, name: str, task_id: str, attempt: str, cluster: str) -> None:
    """A Job with the executor's labels, made behind its back."""
    labels = {"taskengine.io/task-id": task_id, "taskengine.io/attempt": attempt}
    container = {"name": "worker", "image": WORKER_IMAGE, "args": ["taskengine", "worker"]}
    body = {
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "template": {
                "metadata": {"labels": labels},
                "spec": {"restartPolicy": "Never", "containers": [container]},
            }
        },
    }
    response = httpx.post(
        f"{fake.url}/clusters/{cluster}/apis/batch/v1/namespaces/{NAMESPACE}/jobs",
        json=body,
        headers={"Authorization": f"Bearer {fake.token}"},
    )
    assert response.status_code == 201, response.text


def test_a_restarted_dispatcher_deletes_the_jobs_of_attempts_that_are_over(system, api, fake):
    worktask_id = submit(api)
    finished = job_of(system, fake, worktask_id, 1)
    play_pod(fake, finished)
    assert reaches(system, api, worktask_id, status_is("completed", "failed"))["status"] == (
        "completed"
    )
    no_execution_left(system, worktask_id)
    stray_job(fake, f"te-{worktask_id}-7", worktask_id, "7", CONTEXTS[1])
    stray_job(fake, "te-999999-1", "999999", "1", CONTEXTS[1])  # not this engine's job

    system.wait_restarted("dispatcher", system.kill("dispatcher"))
    gone = {finished["metadata"]["name"], f"te-{worktask_id}-7"}
    wait_until(
        lambda: not gone & {j["metadata"]["name"] for j in fake.jobs()},
        what="the Jobs of attempts that are over to be deleted",
    )
    assert "te-999999-1" in {j["metadata"]["name"] for j in fake.jobs()}
    deleted = {d.name: d.propagation_policy for d in fake.deletions}
    assert {deleted[name] for name in gone} == {"Background"}


def test_jobs_of_other_dialects_run_in_the_dispatcher_and_create_no_kubernetes_job(system, fake):
    # Names, not a count: the dispatcher may still be deleting an earlier test's leftover Job.
    before = {j["metadata"]["name"] for j in fake.jobs()}
    with system.client() as engine:
        job_id = engine.post("/job", json={"job": {"workflow": "echo"}}).json()["id"]
        wait_until(
            lambda: engine.get(f"/jobs/{job_id}").json()["queue_state"] == "completed",
            what=f"job {job_id} to complete",
        )
        assert engine.get(f"/jobs/{job_id}").json()["failed"] is False
    started = [e for e in system.events(job_id) if isinstance(e, JobStarted)]
    assert [(e.executor, e.job_name) for e in started] == [("local", None)]
    assert {j["metadata"]["name"] for j in fake.jobs()} <= before  # no Job was created
