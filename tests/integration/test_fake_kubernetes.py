"""The fake Kubernetes API server driven by kubernetes-asyncio: what the executor will see."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
from kubernetes_asyncio import client, config, watch
from kubernetes_asyncio.client.exceptions import ApiException

from tests.support.fake_kubernetes import FakeKubernetes

NS = "default"


def unique(prefix: str = "attempt") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def job_body(name: str, backoff_limit: int = 0, **labels: str) -> client.V1Job:
    pod_labels = {"taskengine.dev/attempt": name, **labels}
    container = client.V1Container(name="main", image="busybox:1.36", command=["true"])
    return client.V1Job(
        metadata=client.V1ObjectMeta(name=name, labels={"app": "taskengine", **labels}),
        spec=client.V1JobSpec(
            backoff_limit=backoff_limit,
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=pod_labels),
                spec=client.V1PodSpec(restart_policy="Never", containers=[container]),
            ),
        ),
    )


async def take(stream: watch.Watch, count: int, timeout: float = 5.0) -> list[dict]:
    """The next `count` events of a watch stream, failing at the deadline."""
    events: list[dict] = []
    async with asyncio.timeout(timeout):
        async for event in stream:
            events.append(event)
            if len(events) == count:
                break
    return events


async def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    """Polls `check` until it holds, failing at the deadline."""
    async with asyncio.timeout(timeout):
        while True:
            if check():
                return
            await asyncio.sleep(0.02)


def kinds(events: list[dict]) -> list[str]:
    return [e["type"] for e in events]


@pytest.fixture
def fake() -> Iterator[FakeKubernetes]:
    with FakeKubernetes() as server:
        yield server


async def api_client(fake: FakeKubernetes, path: Path, context: str) -> client.ApiClient:
    configuration = client.Configuration()
    await config.load_kube_config(
        config_file=str(path), context=context, client_configuration=configuration
    )
    return client.ApiClient(configuration)


@pytest.fixture
async def kube(fake: FakeKubernetes, tmp_path: Path) -> AsyncIterator[client.ApiClient]:
    path = fake.kubeconfig(tmp_path / "kubeconfig", contexts=("fake-a", "fake-b"))
    async with await api_client(fake, path, "fake-a") as api:
        yield api


async def test_discovery_answers_like_an_api_server(kube):
    version = await client.VersionApi(kube).get_code()
    assert version.git_version.startswith("v1.")
    assert (await client.CoreApi(kube).get_api_versions()).versions == ["v1"]
    groups = await client.ApisApi(kube).get_api_versions()
    assert [g.name for g in groups.groups] == ["batch"]


async def test_created_job_is_filled_in_read_back_and_listed_by_label(fake, kube):
    batch = client.BatchV1Api(kube)
    name, other = unique(), unique()
    created = await batch.create_namespaced_job(NS, job_body(name, team="a"))
    await batch.create_namespaced_job(NS, job_body(other, team="b"))

    assert created.metadata.uid and created.metadata.creation_timestamp
    assert int(created.metadata.resource_version) > 0
    assert created.spec.template.metadata.labels["job-name"] == name
    assert created.spec.template.metadata.labels["controller-uid"] == created.metadata.uid
    assert created.spec.selector.match_labels == {
        "batch.kubernetes.io/controller-uid": created.metadata.uid
    }
    read = await batch.read_namespaced_job(name, NS)
    assert read.metadata.uid == created.metadata.uid
    listed = await batch.list_namespaced_job(NS, label_selector="app=taskengine,team in (a)")
    assert [j.metadata.name for j in listed.items] == [name]
    assert int(listed.metadata.resource_version) == fake.resource_version
    assert {j["metadata"]["name"] for j in fake.jobs()} == {name, other}
    posted = [r for r in fake.requests if r.method == "POST"]
    assert posted[0].path == f"/apis/batch/v1/namespaces/{NS}/jobs"
    assert posted[0].cluster == "fake-a"
    assert posted[0].body["spec"]["template"]["spec"]["restartPolicy"] == "Never"


async def test_api_errors_are_status_objects(kube):
    batch = client.BatchV1Api(kube)
    name = unique()
    await batch.create_namespaced_job(NS, job_body(name))

    with pytest.raises(ApiException) as duplicate:
        await batch.create_namespaced_job(NS, job_body(name))
    assert duplicate.value.status == 409
    assert '"reason": "AlreadyExists"' in duplicate.value.body
    with pytest.raises(ApiException) as missing:
        await batch.read_namespaced_job(unique(), NS)
    assert missing.value.status == 404
    invalid = job_body(unique())
    invalid.spec.template.spec.restart_policy = "Always"
    with pytest.raises(ApiException) as refused:
        await batch.create_namespaced_job(NS, invalid)
    assert refused.value.status == 422
    assert "spec.template.spec.restartPolicy" in refused.value.body


async def test_job_watch_streams_the_lifecycle_in_order(fake, kube):
    batch = client.BatchV1Api(kube)
    name = unique()
    since = (await batch.list_namespaced_job(NS)).metadata.resource_version
    await batch.create_namespaced_job(NS, job_body(name))

    async with watch.Watch() as jobs:
        stream = jobs.stream(
            batch.list_namespaced_job,
            NS,
            resource_version=since,
            field_selector=f"metadata.name={name}",
        )
        [added] = await take(stream, 1)
        fake.run(name)
        [started] = await take(stream, 1)
        fake.succeed(name)
        [completed] = await take(stream, 1)
        fake.vanish(name)
        [deleted] = await take(stream, 1)
        assert fake.open_watches == 1
    await eventually(lambda: fake.open_watches == 0)  # the server saw the client hang up

    assert kinds([added, started, completed, deleted]) == [
        "ADDED",
        "MODIFIED",
        "MODIFIED",
        "DELETED",
    ]
    assert started["object"].status.active == 1 and started["object"].status.start_time
    done = completed["object"].status
    assert done.succeeded == 1 and done.active is None and done.completion_time
    assert [(c.type, c.reason) for c in done.conditions] == [
        ("SuccessCriteriaMet", "CompletionsReached"),
        ("Complete", "CompletionsReached"),
    ]
    versions = [
        int(e["object"].metadata.resource_version) for e in (added, started, completed, deleted)
    ]
    assert versions == sorted(versions)


async def test_pod_watch_by_job_name_sees_the_container_exit(fake, kube):
    core = client.CoreV1Api(kube)
    name = unique()
    await client.BatchV1Api(kube).create_namespaced_job(NS, job_body(name))
    fake.run(name)
    fake.fail(name, exit_code=3)

    async with watch.Watch() as pods:
        stream = pods.stream(core.list_namespaced_pod, NS, label_selector=f"job-name={name}")
        [current] = await take(stream, 1)  # no resourceVersion: the current state, as ADDED

    pod = current["object"]
    assert current["type"] == "ADDED" and pod.status.phase == "Failed"
    assert pod.metadata.labels["taskengine.dev/attempt"] == name
    assert pod.metadata.owner_references[0].kind == "Job"
    terminated = pod.status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.reason) == (3, "Error")
    job = await client.BatchV1Api(kube).read_namespaced_job(name, NS)
    assert job.status.failed == 1
    assert [(c.type, c.reason) for c in job.status.conditions][-1] == (
        "Failed",
        "BackoffLimitExceeded",
    )


async def test_terminal_states_look_like_real_ones(fake, kube):
    batch, core = client.BatchV1Api(kube), client.CoreV1Api(kube)
    oom, evicted, late, retried = (unique(p) for p in ("oom", "evicted", "late", "retried"))
    for name in (oom, evicted, late):
        await batch.create_namespaced_job(NS, job_body(name))
    await batch.create_namespaced_job(NS, job_body(retried, backoff_limit=1))

    fake.oom_kill(oom)
    [pod] = (await core.list_namespaced_pod(NS, label_selector=f"job-name={oom}")).items
    terminated = pod.status.container_statuses[0].state.terminated
    assert (terminated.reason, terminated.exit_code) == ("OOMKilled", 137)

    fake.evict(evicted)
    [pod] = (await core.list_namespaced_pod(NS, label_selector=f"job-name={evicted}")).items
    assert (pod.status.phase, pod.status.reason) == ("Failed", "Evicted")
    assert "DisruptionTarget" in [c.type for c in pod.status.conditions]

    fake.run(late)
    fake.deadline_exceeded(late)
    job = await batch.read_namespaced_job(late, NS)
    assert (job.status.conditions[-1].type, job.status.conditions[-1].reason) == (
        "Failed",
        "DeadlineExceeded",
    )
    assert (await core.list_namespaced_pod(NS, label_selector=f"job-name={late}")).items == []

    fake.fail(retried)  # within backoffLimit: not failed yet, waiting for the next pod
    assert (await batch.read_namespaced_job(retried, NS)).status.conditions is None
    fake.succeed(retried)
    job = await batch.read_namespaced_job(retried, NS)
    assert (job.status.failed, job.status.succeeded, job.status.conditions[-1].type) == (
        1,
        1,
        "Complete",
    )
    assert len(fake.pods(retried)) == 2


async def test_delete_propagation_decides_what_happens_to_pods(fake, kube):
    batch, core = client.BatchV1Api(kube), client.CoreV1Api(kube)
    background, foreground, default = unique(), unique(), unique()
    for name in (background, foreground, default):
        await batch.create_namespaced_job(NS, job_body(name))
        fake.run(name)

    await batch.delete_namespaced_job(background, NS, propagation_policy="Background")
    body = client.V1DeleteOptions(propagation_policy="Foreground")
    await batch.delete_namespaced_job(foreground, NS, body=body)
    await batch.delete_namespaced_job(default, NS)

    pods = (await core.list_namespaced_pod(NS)).items
    assert {p.metadata.labels["job-name"] for p in pods} == {default}  # the API default orphans
    assert pods[0].metadata.owner_references is None
    assert fake.jobs() == []
    assert [(d.name, d.propagation_policy) for d in fake.deletions] == [
        (background, "Background"),
        (foreground, "Foreground"),
        (default, "Orphan"),
    ]
    deletes = [r for r in fake.requests if r.method == "DELETE"]
    assert deletes[0].query["propagationPolicy"] == "Background"
    assert deletes[1].body["propagationPolicy"] == "Foreground"


async def test_a_dropped_watch_resumes_from_its_last_resource_version(fake, kube):
    batch = client.BatchV1Api(kube)
    name = unique()
    since = (await batch.list_namespaced_job(NS)).metadata.resource_version
    await batch.create_namespaced_job(NS, job_body(name))

    async with watch.Watch() as jobs:
        stream = jobs.stream(batch.list_namespaced_job, NS, resource_version=since)
        [added] = await take(stream, 1)
        fake.drop_watches()
        fake.run(name)  # while nobody watches
        with pytest.raises(aiohttp.ClientPayloadError):
            await take(stream, 1)
        last = jobs.resource_version

    assert last == added["object"].metadata.resource_version
    async with watch.Watch() as jobs:
        stream = jobs.stream(batch.list_namespaced_job, NS, resource_version=last)
        fake.succeed(name)
        events = await take(stream, 2)
    assert kinds(events) == ["MODIFIED", "MODIFIED"]
    assert events[0]["object"].status.active == 1
    assert events[1]["object"].status.succeeded == 1


async def test_a_cleanly_ended_watch_reconnects_by_itself(fake, kube):
    batch = client.BatchV1Api(kube)
    name = unique()
    await batch.create_namespaced_job(NS, job_body(name))

    async with watch.Watch() as jobs:
        stream = jobs.stream(batch.list_namespaced_job, NS)  # no timeout: watches forever
        [added] = await take(stream, 1)
        fake.drop_watches(abrupt=False)
        fake.run(name)
        [started] = await take(stream, 1)

    assert (added["type"], started["type"]) == ("ADDED", "MODIFIED")
    watches = [r for r in fake.requests if "watch" in r.query]
    assert (
        len(watches) == 2
        and watches[1].query["resourceVersion"] == added["object"].metadata.resource_version
    )


async def test_compacted_history_is_410_and_a_relist_recovers(fake, kube):
    batch = client.BatchV1Api(kube)
    name = unique()
    since = (await batch.list_namespaced_job(NS)).metadata.resource_version
    await batch.create_namespaced_job(NS, job_body(name))
    fake.compact()

    async with watch.Watch() as jobs:
        stream = jobs.stream(batch.list_namespaced_job, NS, resource_version=since)
        with pytest.raises(ApiException) as expired:
            await take(stream, 1)
    assert expired.value.status == 410
    retried = [r for r in fake.requests if r.query.get("resourceVersion") == since]
    assert len(retried) == 2  # kubernetes-asyncio retries a 410 once before raising

    listed = await batch.list_namespaced_job(NS)
    assert [j.metadata.name for j in listed.items] == [name]
    async with watch.Watch() as jobs:
        stream = jobs.stream(
            batch.list_namespaced_job, NS, resource_version=listed.metadata.resource_version
        )
        fake.run(name)
        [started] = await take(stream, 1)
    assert started["type"] == "MODIFIED"


async def test_timeout_seconds_ends_the_stream_after_a_bookmark(kube):
    core = client.CoreV1Api(kube)
    async with watch.Watch() as pods:
        stream = pods.stream(
            core.list_namespaced_pod, NS, timeout_seconds=1, allow_watch_bookmarks=True
        )
        events = await take(stream, 10)
    assert kinds(events) == ["BOOKMARK"]
    assert pods.resource_version == events[0]["raw_object"]["metadata"]["resourceVersion"]


async def test_each_context_is_its_own_cluster(fake, kube, tmp_path):
    path = fake.kubeconfig(tmp_path / "kubeconfig", contexts=("fake-a", "fake-b"))
    name = unique()
    async with await api_client(fake, path, "fake-b") as other:
        await client.BatchV1Api(other).create_namespaced_job(NS, job_body(name))

    assert fake.cluster_of(name) == "fake-b"
    assert fake.jobs(cluster="fake-a") == []
    assert (await client.BatchV1Api(kube).list_namespaced_job(NS)).items == []

    fake.token = "rotated"
    with pytest.raises(ApiException) as refused:
        await client.BatchV1Api(kube).list_namespaced_job(NS)
    assert refused.value.status == 401
