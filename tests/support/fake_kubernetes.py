"""A fake Kubernetes API server: batch/v1 Jobs and core/v1 Pods over real HTTP on loopback.

It is a fake, not a cluster: nothing runs. The test plays the Job controller and the kubelet
through the driving methods (`run`, `succeed`, `fail`, `oom_kill`, `pull_fails`, `write_log`,
...), and the fake answers any
client (kubernetes-asyncio included) in the API server's shapes: `Status` errors, one global
resourceVersion, chunked watch streams, 410 Expired after `compact()`. Each kubeconfig context is
its own cluster, told apart by a `/clusters/<context>` prefix on the server URL.
One pod per Job attempt is modelled (completions 1); a failed pod within `backoffLimit` leaves the
Job waiting for the next `run()`.
"""

from __future__ import annotations

import bisect
import copy
import hashlib
import json
import random
import re
import select
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import parse_qs, urlsplit

import yaml

Obj = dict[str, Any]  # a Kubernetes object as JSON
DEFAULT_CLUSTER = "fake"  # serves requests whose path has no /clusters/<name> prefix
NAME_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # what generateName draws from
WATCH_POLL_SECONDS = 0.2
FIRST_RESOURCE_VERSION = 1000  # never "0": a watch from "0" means "any", not "from the start"
VERSION = {  # every field: kubernetes-asyncio's VersionInfo refuses a missing one
    "major": "1",
    "minor": "31",
    "gitVersion": "v1.31.0-fake",
    "gitCommit": "0" * 40,
    "gitTreeState": "clean",
    "buildDate": "2024-08-13T07:28:49Z",
    "goVersion": "go1.22.5",
    "compiler": "gc",
    "platform": "linux/amd64",
}


class RecordedRequest(NamedTuple):
    method: str
    path: str  # without the /clusters/<name> prefix and without the query string
    body: Any  # the parsed JSON body, or None
    query: dict[str, str]
    cluster: str


class Deletion(NamedTuple):
    cluster: str
    namespace: str
    name: str
    propagation_policy: str  # as applied: a Job deleted without one orphans its pods


@dataclass(frozen=True)
class Resource:
    plural: str
    kind: str
    api_version: str
    group: str

    @property
    def qualified(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural


JOBS = Resource("jobs", "Job", "batch/v1", "batch")
PODS = Resource("pods", "Pod", "v1", "")
SECRETS = Resource("secrets", "Secret", "v1", "")
_ROUTES = [
    (re.compile(r"/apis/batch/v1(?:/namespaces/(?P<ns>[^/]+))?/jobs(?:/(?P<name>[^/]+))?"), JOBS),
    (re.compile(r"/api/v1(?:/namespaces/(?P<ns>[^/]+))?/pods(?:/(?P<name>[^/]+))?"), PODS),
    (re.compile(r"/api/v1/namespaces/(?P<ns>[^/]+)/secrets/(?P<name>[^/]+)"), SECRETS),
]
_POD_LOG = re.compile(r"/api/v1/namespaces/(?P<ns>[^/]+)/pods/(?P<name>[^/]+)/log")
_CLUSTER_PREFIX = re.compile(r"/clusters/(?P<cluster>[^/]+)(?P<rest>/.*)?")


class ApiError(Exception):
    """An API failure, answered as a Kubernetes `Status` object."""

    def __init__(self, code: int, reason: str, message: str, details: Obj | None = None) -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details

    def status(self) -> Obj:
        status: Obj = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure"}
        status.update(message=self.message, reason=self.reason, code=self.code)
        if self.details is not None:
            status["details"] = self.details
        return status


def _details(resource: Resource, name: str, **more: Any) -> Obj:
    group = {"group": resource.group} if resource.group else {}
    return {"name": name, **group, "kind": resource.plural, **more}


def _not_found(resource: Resource, name: str) -> ApiError:
    message = f'{resource.qualified} "{name}" not found'
    return ApiError(404, "NotFound", message, _details(resource, name))


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _as_sent(resource: Resource, obj: Obj) -> Obj:
    return {"kind": resource.kind, "apiVersion": resource.api_version, **copy.deepcopy(obj)}


# -- selectors ---------------------------------------------------------------------------------

_REQUIREMENT = re.compile(
    r"\s*(?P<absent>!)?\s*(?P<key>[A-Za-z0-9][-A-Za-z0-9_./]*)"
    r"(?:\s*(?P<op>==|!=|=)\s*(?P<value>[-A-Za-z0-9_.]*)"
    r"|\s+(?P<setop>in|notin)\s*\((?P<values>[^)]*)\))?\s*"
)


def _label_check(m: re.Match[str]) -> Callable[[dict[str, str]], bool]:
    key = m["key"]
    if m["absent"]:
        return lambda labels: key not in labels
    if m["op"]:
        value, equal = m["value"], m["op"] != "!="
        return lambda labels: (labels.get(key) == value) == equal
    if m["setop"]:
        values, member = {v.strip() for v in m["values"].split(",")}, m["setop"] == "in"
        return lambda labels: (labels.get(key) in values) == member
    return lambda labels: key in labels


def _field_check(part: str) -> Callable[[Obj], bool]:
    m = re.fullmatch(r"\s*([A-Za-z.]+)\s*(==|!=|=)\s*(\S*)\s*", part)
    if m is None:
        raise ApiError(400, "BadRequest", f"invalid field selector: {part!r}")
    path, equal, value = m[1].split("."), m[2] != "!=", m[3]

    def check(obj: Obj) -> bool:
        actual: Any = obj
        for step in path:
            actual = actual.get(step, "") if isinstance(actual, dict) else ""
        return (str(actual) == value) == equal

    return check


def selector(label_selector: str = "", field_selector: str = "") -> Callable[[Obj], bool]:
    """A matcher for the API's `labelSelector` (equality and set-based) and `fieldSelector`."""
    label_checks, pos = [], 0
    while pos < len(label_selector):
        m = _REQUIREMENT.match(label_selector, pos)
        if m is None or (m.end() < len(label_selector) and label_selector[m.end()] != ","):
            raise ApiError(400, "BadRequest", f"unable to parse requirement: {label_selector!r}")
        label_checks.append(_label_check(m))
        pos = m.end() + 1
    field_checks = [_field_check(p) for p in field_selector.split(",") if p.strip()]

    def matches(obj: Obj) -> bool:
        labels = obj["metadata"].get("labels") or {}
        return all(c(labels) for c in label_checks) and all(c(obj) for c in field_checks)

    return matches


# -- the Job as the API server validates and defaults it ---------------------------------------

_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_LABEL_TEXT = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")


def _job_causes(job: Obj) -> list[Obj]:
    """The validation causes an executor could earn: names, labels, restartPolicy, containers."""
    causes: list[Obj] = []

    def cause(reason: str, field: str, message: str) -> None:
        causes.append({"reason": reason, "message": message, "field": field})

    name = job["metadata"]["name"]
    if not _DNS_SUBDOMAIN.fullmatch(name) or len(name) > 63:
        why = "must be a lowercase RFC 1123 subdomain of no more than 63 characters"
        cause("FieldValueInvalid", "metadata.name", f'Invalid value: "{name}": {why}')
    template = job.get("spec", {}).get("template") or {}
    for field, labels in (
        ("metadata.labels", job["metadata"].get("labels")),
        ("spec.template.metadata.labels", (template.get("metadata") or {}).get("labels")),
    ):
        for key, value in (labels or {}).items():
            prefix, _, key_name = key.rpartition("/")
            if (prefix and not _DNS_SUBDOMAIN.fullmatch(prefix)) or not (
                key_name and len(key_name) <= 63 and _LABEL_TEXT.fullmatch(key_name)
            ):
                cause("FieldValueInvalid", field, f'Invalid value: "{key}": not a label key')
            if not isinstance(value, str) or len(value) > 63 or not _LABEL_TEXT.fullmatch(value):
                cause("FieldValueInvalid", field, f'Invalid value: "{value}": not a label value')
    pod_spec = template.get("spec") or {}
    policy, allowed = pod_spec.get("restartPolicy"), '"OnFailure", "Never"'
    if policy is None:
        message = f"Required value: valid values: {allowed}"
        cause("FieldValueRequired", "spec.template.spec.restartPolicy", message)
    elif policy not in ("OnFailure", "Never"):
        message = f'Unsupported value: "{policy}": supported values: {allowed}'
        cause("FieldValueNotSupported", "spec.template.spec.restartPolicy", message)
    if not pod_spec.get("containers"):
        cause("FieldValueRequired", "spec.template.spec.containers", "Required value")
    for i, container in enumerate(pod_spec.get("containers") or []):
        where = f"spec.template.spec.containers[{i}]"
        if not _DNS_LABEL.fullmatch(container.get("name") or ""):
            cause("FieldValueInvalid", f"{where}.name", "Invalid value")
        if not container.get("image"):
            cause("FieldValueRequired", f"{where}.image", "Required value")
    return causes


def _default_job(job: Obj, namespace: str, now: str) -> None:
    meta, uid = job["metadata"], str(uuid.uuid4())
    name = meta["name"]
    spec = job["spec"]
    template_meta = spec["template"].setdefault("metadata", {})
    user_labels = dict(template_meta.get("labels") or {})
    if not meta.get("labels") and user_labels:
        meta["labels"] = dict(user_labels)
    meta.update(namespace=namespace, uid=uid, creationTimestamp=now, generation=1)
    ids = {"batch.kubernetes.io/controller-uid": uid, "batch.kubernetes.io/job-name": name}
    template_meta["labels"] = {**user_labels, **ids, "controller-uid": uid, "job-name": name}
    for key, value in (
        ("parallelism", 1),
        ("completions", 1),
        ("backoffLimit", 6),
        ("completionMode", "NonIndexed"),
        ("suspend", False),
        ("podReplacementPolicy", "TerminatingOrFailed"),
    ):
        spec.setdefault(key, value)
    spec["selector"] = {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}
    pod_spec = spec["template"]["spec"]
    pod_spec.setdefault("dnsPolicy", "ClusterFirst")
    pod_spec.setdefault("schedulerName", "default-scheduler")
    pod_spec.setdefault("terminationGracePeriodSeconds", 30)
    for container in pod_spec["containers"]:
        tag = container["image"].rsplit("/", 1)[-1].partition(":")[2]
        pull = "Always" if tag in ("", "latest") else "IfNotPresent"
        container.setdefault("imagePullPolicy", pull)
        container.setdefault("terminationMessagePath", "/dev/termination-log")
        container.setdefault("terminationMessagePolicy", "File")
        container.setdefault("resources", {})
    job["status"] = {}


def _condition(kind: str, now: str, reason: str | None = None, message: str | None = None) -> Obj:
    condition: Obj = {"type": kind, "status": "True", "lastProbeTime": now}
    condition["lastTransitionTime"] = now
    if reason:
        condition.update(reason=reason, message=message)
    return condition


def _finished(job: Obj) -> bool:
    conditions = job["status"].get("conditions") or []
    return any(c["type"] in ("Complete", "Failed") and c["status"] == "True" for c in conditions)


def _new_pod(job: Obj, now: str) -> Obj:
    meta, template = job["metadata"], copy.deepcopy(job["spec"]["template"])
    base = f"{meta['name']}-"[:58]
    owner = {"apiVersion": "batch/v1", "kind": "Job", "name": meta["name"], "uid": meta["uid"]}
    pod_meta = {
        "name": base + "".join(random.choices(NAME_SUFFIX_ALPHABET, k=5)),
        "generateName": base,
        "namespace": meta["namespace"],
        "uid": str(uuid.uuid4()),
        "creationTimestamp": now,
        "labels": template["metadata"]["labels"],
        "ownerReferences": [{**owner, "controller": True, "blockOwnerDeletion": True}],
    }
    spec = {**template["spec"], "nodeName": "fake-node", "serviceAccountName": "default"}
    resourced = any(c.get("resources") for c in spec["containers"])
    conditions = [{**_condition("PodScheduled", now), "lastProbeTime": None}]
    status = {"phase": "Pending", "conditions": conditions}
    status["qosClass"] = "Burstable" if resourced else "BestEffort"
    return {"metadata": pod_meta, "spec": spec, "status": status}


def _run_pod(pod: Obj, now: str) -> None:
    kinds = ("PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady", "PodScheduled")
    statuses = []
    for container in pod["spec"]["containers"]:
        digest = hashlib.sha256(container["image"].encode()).hexdigest()
        statuses.append(
            {
                "name": container["name"],
                "image": container["image"],
                "imageID": f"{container['image']}@sha256:{digest}",
                "containerID": f"containerd://{uuid.uuid4().hex}{uuid.uuid4().hex}",
                "ready": True,
                "started": True,
                "restartCount": 0,
                "lastState": {},
                "state": {"running": {"startedAt": now}},
            }
        )
    pod["status"].update(
        phase="Running",
        conditions=[{**_condition(kind, now), "lastProbeTime": None} for kind in kinds],
        hostIP="10.0.0.10",
        podIP="10.244.0.10",
        startTime=now,
        containerStatuses=statuses,
    )


def _terminate_pod(pod: Obj, phase: str, exit_code: int, reason: str, now: str) -> None:
    status = pod["status"]
    status["phase"] = phase
    why = "PodCompleted" if phase == "Succeeded" else "PodFailed"
    for condition in status["conditions"]:
        if condition["type"] in ("Ready", "ContainersReady"):
            condition.update(status="False", reason=why, lastTransitionTime=now)
    for container in status["containerStatuses"]:
        started = container["state"].get("running", {}).get("startedAt", now)
        terminated = {"exitCode": exit_code, "reason": reason, "startedAt": started}
        terminated.update(finishedAt=now, containerID=container["containerID"])
        container.update(ready=False, started=False, state={"terminated": terminated})


# -- the server --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Event:
    rv: int
    type: str
    cluster: str
    resource: Resource
    obj: Obj  # as sent on a watch: with kind and apiVersion


@dataclass
class _Watch:
    cluster: str
    resource: Resource
    namespace: str | None
    matches: Callable[[Obj], bool]
    cursor: int
    generation: int

    def wants(self, event: _Event) -> bool:
        namespace = event.obj["metadata"].get("namespace")
        return (
            event.cluster == self.cluster
            and event.resource is self.resource
            and self.namespace in (None, namespace)
            and self.matches(event.obj)
        )


class FakeKubernetes:
    """A Kubernetes API server fake on 127.0.0.1; use as a context manager."""

    def __init__(self) -> None:
        self.requests: list[RecordedRequest] = []
        self.deletions: list[Deletion] = []
        self.token = uuid.uuid4().hex
        self.clusters: set[str] = {DEFAULT_CLUSTER}
        self._lock = threading.Condition()
        self._rv = FIRST_RESOURCE_VERSION
        self._compacted_rv = FIRST_RESOURCE_VERSION
        self._objects: dict[tuple[str, str, str, str], Obj] = {}
        self._logs: dict[tuple[str, str, str], str] = {}  # (cluster, namespace, pod): its log
        self._events: list[_Event] = []
        self._event_rvs: list[int] = []
        self._generation = 0
        self._drop_mode = "abrupt"
        self._open_watches = 0
        self._closed = False
        self._connections: set[socket.socket] = set()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # lifecycle ---------------------------------------------------------------------------------

    def start(self) -> FakeKubernetes:
        handler = type("Handler", (_Handler,), {"fake": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )
        self._thread.start()
        return self

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify_all()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        for connection in list(self._connections):
            _shut(connection)

    def __enter__(self) -> FakeKubernetes:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the fake first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def kubeconfig(
        self, path: str | Path, contexts: Iterable[str] = ("fake-a",), namespace: str = "default"
    ) -> Path:
        """Writes a kubeconfig with one cluster per context, each served by this fake."""
        names, path = list(contexts), Path(path)
        self.clusters.update(names)
        user = {"name": "fake-user", "user": {"token": self.token}}
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "preferences": {},
            "clusters": [
                {"name": n, "cluster": {"server": f"{self.url}/clusters/{n}"}} for n in names
            ],
            "users": [user],
            "contexts": [
                {"name": n, "context": {"cluster": n, "user": "fake-user", "namespace": namespace}}
                for n in names
            ],
            "current-context": names[0],
        }
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    # observing ---------------------------------------------------------------------------------

    @property
    def resource_version(self) -> int:
        return self._rv

    @property
    def open_watches(self) -> int:
        return self._open_watches

    def jobs(self, *, cluster: str | None = None, namespace: str | None = None) -> list[Obj]:
        """The Jobs that exist now, as a GET would show them."""
        with self._lock:
            return [
                _as_sent(JOBS, o) for c, o in self._all(JOBS, namespace) if cluster in (None, c)
            ]

    def job(self, name: str, *, namespace: str | None = None, cluster: str | None = None) -> Obj:
        with self._lock:
            return _as_sent(JOBS, self._find_job(name, namespace, cluster)[1])

    def cluster_of(self, job_name: str, *, namespace: str | None = None) -> str:
        with self._lock:
            return self._find_job(job_name, namespace, None)[0]

    def pods(
        self, job_name: str, *, namespace: str | None = None, cluster: str | None = None
    ) -> list[Obj]:
        """The pods of a Job (matched on controller-uid, like the Job controller)."""
        with self._lock:
            cluster, job = self._find_job(job_name, namespace, cluster)
            return [_as_sent(PODS, pod) for pod in self._pods_of(cluster, job)]

    # driving: the Job controller and the kubelet ------------------------------------------------

    def add_secret(
        self,
        name: str,
        *,
        namespace: str = "default",
        cluster: str | None = None,
        labels: dict[str, str] | None = None,
    ) -> None:
        """A Secret (in every known cluster unless one is named) for executors that check one."""
        with self._lock:
            for target in [cluster] if cluster else sorted(self.clusters):
                meta = {"name": name, "namespace": namespace, "uid": str(uuid.uuid4())}
                meta["creationTimestamp"] = _now()
                if labels:
                    meta["labels"] = dict(labels)
                self._commit(target, SECRETS, {"metadata": meta, "type": "Opaque", "data": {}})

    def run(
        self, job_name: str, *, namespace: str | None = None, cluster: str | None = None
    ) -> Obj:
        """Starts the Job's pod: pod ADDED Pending then MODIFIED Running; Job active=1."""
        with self._lock:
            cluster, job = self._find_job(job_name, namespace, cluster)
            if self._active_pod(cluster, job) is not None:
                raise ValueError(f"job {job_name!r} already has an active pod")
            return _as_sent(PODS, self._start_pod(cluster, job))

    def succeed(
        self,
        job_name: str,
        exit_code: int = 0,
        *,
        namespace: str | None = None,
        cluster: str | None = None,
    ) -> None:
        """The pod exits; the Job gets SuccessCriteriaMet and Complete, succeeded=1."""
        self._end_pod(job_name, namespace, cluster, "Succeeded", exit_code, "Completed")

    def fail(
        self,
        job_name: str,
        exit_code: int = 1,
        reason: str = "Error",
        *,
        namespace: str | None = None,
        cluster: str | None = None,
    ) -> None:
        """The pod fails; past backoffLimit the Job gets Failed (BackoffLimitExceeded)."""
        self._end_pod(job_name, namespace, cluster, "Failed", exit_code, reason)

    def oom_kill(
        self, job_name: str, *, namespace: str | None = None, cluster: str | None = None
    ) -> None:
        """The container is OOMKilled: terminated with exitCode 137."""
        self.fail(job_name, 137, "OOMKilled", namespace=namespace, cluster=cluster)

    def evict(
        self, job_name: str, *, namespace: str | None = None, cluster: str | None = None
    ) -> None:
        """The kubelet evicts the pod: phase Failed, reason Evicted, a DisruptionTarget."""
        message = "The node was low on resource: memory. Threshold quantity: 100Mi, available: 0."

        def evicted(pod: Obj, now: str) -> None:
            pod["status"].update(reason="Evicted", message=message)
            target = _condition("DisruptionTarget", now, "TerminationByKubelet", message)
            pod["status"]["conditions"].append(target)

        self._end_pod(job_name, namespace, cluster, "Failed", 137, "Error", evicted)

    def pull_fails(
        self,
        job_name: str,
        reason: str = "ErrImagePull",
        *,
        namespace: str | None = None,
        cluster: str | None = None,
    ) -> Obj:
        """The kubelet cannot pull the image: the Job's pod (made if it has none) stays
        Pending, its container waiting with `reason` (ErrImagePull, ImagePullBackOff)."""
        with self._lock:
            cluster, job = self._find_job(job_name, namespace, cluster)
            pod = self._active_pod(cluster, job)
            if pod is None:
                pod = self._commit(cluster, PODS, _new_pod(job, _now()), "ADDED")
                job["status"].update(active=1, ready=0, startTime=_now())
                self._commit(cluster, JOBS, job)
            image = pod["spec"]["containers"][0]["image"]
            message = f'failed to pull and unpack image "{image}": not found'
            pod["status"]["containerStatuses"] = [
                {
                    "name": c["name"],
                    "image": c["image"],
                    "imageID": "",
                    "ready": False,
                    "started": False,
                    "restartCount": 0,
                    "lastState": {},
                    "state": {"waiting": {"reason": reason, "message": message}},
                }
                for c in pod["spec"]["containers"]
            ]
            return _as_sent(PODS, self._commit(cluster, PODS, pod))

    def write_log(
        self, job_name: str, text: str, *, namespace: str | None = None, cluster: str | None = None
    ) -> None:
        """The container of the Job's newest pod prints `text` (GET .../pods/<pod>/log)."""
        with self._lock:
            cluster, job = self._find_job(job_name, namespace, cluster)
            pods = self._pods_of(cluster, job)
            if not pods:
                raise ValueError(f"job {job_name!r} has no pod: run() it first")
            pod = max(pods, key=lambda p: int(p["metadata"]["resourceVersion"]))["metadata"]
            key = (cluster, pod["namespace"], pod["name"])
            self._logs[key] = self._logs.get(key, "") + text

    def deadline_exceeded(
        self, job_name: str, *, namespace: str | None = None, cluster: str | None = None
    ) -> None:
        """activeDeadlineSeconds passed: active pods are killed and deleted, the Job Failed."""
        with self._lock:
            cluster, job = self._find_job(job_name, namespace, cluster)
            now, pod = _now(), self._active_pod(cluster, job)
            if pod is not None:
                _terminate_pod(pod, "Failed", 143, "Error", now)
                pod["metadata"].update(deletionTimestamp=now, deletionGracePeriodSeconds=30)
                self._commit(cluster, PODS, pod)
                self._commit(cluster, PODS, pod, "DELETED")
                job["status"]["failed"] = job["status"].get("failed", 0) + 1
            message = "Job was active longer than specified deadline"
            self._fail_job(cluster, job, "DeadlineExceeded", message, now)

    def vanish(
        self, job_name: str, *, namespace: str | None = None, cluster: str | None = None
    ) -> None:
        """The Job and its pods disappear behind the executor's back: DELETED events."""
        with self._lock:
            cluster, job = self._find_job(job_name, namespace, cluster)
            self._commit(cluster, JOBS, job, "DELETED")
            for pod in self._pods_of(cluster, job):
                self._commit(cluster, PODS, pod, "DELETED")

    def drop_watches(self, abrupt: bool = True) -> None:
        """Ends every open watch: abruptly (connection reset mid-stream) or as a server timeout."""
        with self._lock:
            self._generation += 1
            self._drop_mode = "abrupt" if abrupt else "clean"
            self._lock.notify_all()

    def compact(self) -> None:
        """Forgets history: a new watch from any resourceVersion before now gets 410 Expired."""
        with self._lock:
            self._compacted_rv = self._rv

    # the store ---------------------------------------------------------------------------------

    def _commit(self, cluster: str, resource: Resource, obj: Obj, kind: str = "") -> Obj:
        meta = obj["metadata"]
        key = (cluster, resource.plural, meta["namespace"], meta["name"])
        kind = kind or ("MODIFIED" if key in self._objects else "ADDED")
        self._rv += 1
        meta["resourceVersion"] = str(self._rv)
        if kind == "DELETED":
            self._objects.pop(key, None)
        else:
            self._objects[key] = obj
        self._events.append(_Event(self._rv, kind, cluster, resource, _as_sent(resource, obj)))
        self._event_rvs.append(self._rv)
        self._lock.notify_all()
        return obj

    def _all(self, resource: Resource, namespace: str | None) -> list[tuple[str, Obj]]:
        return [
            (cluster, obj)
            for (cluster, plural, ns, _), obj in sorted(self._objects.items())
            if plural == resource.plural and namespace in (None, ns)
        ]

    def _find_job(self, name: str, namespace: str | None, cluster: str | None) -> tuple[str, Obj]:
        found = [
            (c, job)
            for c, job in self._all(JOBS, namespace)
            if job["metadata"]["name"] == name and cluster in (None, c)
        ]
        if len(found) != 1:
            raise LookupError(f"{len(found)} jobs named {name!r} (namespace {namespace})")
        return found[0]

    def _pods_of(self, cluster: str, job: Obj) -> list[Obj]:
        uid = job["metadata"]["uid"]
        return [
            pod
            for c, pod in self._all(PODS, job["metadata"]["namespace"])
            if c == cluster and pod["metadata"]["labels"].get("controller-uid") == uid
        ]

    def _active_pod(self, cluster: str, job: Obj) -> Obj | None:
        active = [
            p for p in self._pods_of(cluster, job) if p["status"]["phase"] in ("Pending", "Running")
        ]
        return active[0] if active else None

    def _start_pod(self, cluster: str, job: Obj) -> Obj:
        if _finished(job):
            raise ValueError(f"job {job['metadata']['name']!r} has already finished")
        now = _now()
        pod = self._commit(cluster, PODS, _new_pod(job, now), "ADDED")
        _run_pod(pod, now)
        self._commit(cluster, PODS, pod)
        job["status"].setdefault("startTime", now)
        job["status"].update(active=1, ready=1, terminating=0, uncountedTerminatedPods={})
        self._commit(cluster, JOBS, job)
        return pod

    def _end_pod(
        self,
        job_name: str,
        namespace: str | None,
        cluster: str | None,
        phase: str,
        exit_code: int,
        reason: str,
        amend: Callable[[Obj, str], None] | None = None,
    ) -> None:
        with self._lock:
            cluster, job = self._find_job(job_name, namespace, cluster)
            pod = self._active_pod(cluster, job) or self._start_pod(cluster, job)
            now = _now()
            _terminate_pod(pod, phase, exit_code, reason, now)
            if amend is not None:
                amend(pod, now)
            self._commit(cluster, PODS, pod)
            status = job["status"]
            status.pop("active", None)
            status["ready"] = 0
            counter = "succeeded" if phase == "Succeeded" else "failed"
            status[counter] = status.get(counter, 0) + 1
            if phase == "Succeeded":
                message = "Reached expected number of succeeded pods"
                status["completionTime"] = now
                status["conditions"] = [
                    *status.get("conditions", []),
                    _condition("SuccessCriteriaMet", now, "CompletionsReached", message),
                    _condition("Complete", now, "CompletionsReached", message),
                ]
            elif status["failed"] > job["spec"]["backoffLimit"]:
                message = "Job has reached the specified backoff limit"
                self._fail_job(cluster, job, "BackoffLimitExceeded", message, now)
                return
            self._commit(cluster, JOBS, job)

    def _fail_job(self, cluster: str, job: Obj, reason: str, message: str, now: str) -> None:
        status = job["status"]
        status.pop("active", None)
        status.update(ready=0, terminating=0)
        status["conditions"] = [
            *status.get("conditions", []),
            _condition("FailureTarget", now, reason, message),
            _condition("Failed", now, reason, message),
        ]
        self._commit(cluster, JOBS, job)

    # the API -----------------------------------------------------------------------------------

    def answer(
        self, method: str, cluster: str, path: str, query: dict[str, str], body: Any
    ) -> tuple[int, Obj]:
        """The (code, JSON) answer to one non-watch request; raises ApiError."""
        if method == "GET" and (discovery := self._discovery(path)) is not None:
            return 200, discovery
        if method == "GET" and (log := _POD_LOG.fullmatch(path)):
            return 200, self._pod_log(cluster, log["ns"], log["name"], query)  # type: ignore[return-value]
        resource, namespace, name = _route(path)
        with self._lock:
            if method == "GET" and name:
                if (
                    namespace is None
                    or (key := (cluster, resource.plural, namespace, name)) not in self._objects
                ):
                    raise _not_found(resource, name)
                return 200, _as_sent(resource, self._objects[key])
            if method == "GET" and resource is not SECRETS:
                return 200, self._list(cluster, resource, namespace, query)
            if method == "POST" and resource is JOBS and namespace and not name:
                return 201, self._create_job(cluster, namespace, body)
            if method == "DELETE" and resource is JOBS and namespace and name:
                return 200, self._delete_job(cluster, namespace, name, query, body)
        message = "the server does not allow this method on the requested resource"
        raise ApiError(405, "MethodNotAllowed", message, {})

    def _pod_log(self, cluster: str, namespace: str, name: str, query: dict[str, str]) -> str:
        """A pod's log as the kubelet sends it: plain text; `tailLines`, then `limitBytes`."""
        with self._lock:
            if (cluster, "pods", namespace, name) not in self._objects:
                raise _not_found(PODS, name)
            text = self._logs.get((cluster, namespace, name), "")
        if query.get("tailLines", "").isdigit():
            tail = int(query["tailLines"])
            text = "".join(text.splitlines(keepends=True)[-tail:]) if tail else ""
        if query.get("limitBytes", "").isdigit():
            text = text.encode()[: int(query["limitBytes"])].decode(errors="ignore")
        return text

    def _discovery(self, path: str) -> Obj | None:
        def resources(group_version: str, *found: tuple[str, str]) -> Obj:
            verbs = ["create", "delete", "get", "list", "watch"]
            listed = [
                {
                    "name": p,
                    "singularName": k.lower(),
                    "namespaced": True,
                    "kind": k,
                    "verbs": verbs,
                }
                for p, k in found
            ]
            return {"kind": "APIResourceList", "groupVersion": group_version, "resources": listed}

        batch = {"groupVersion": "batch/v1", "version": "v1"}
        address = {"clientCIDR": "0.0.0.0/0", "serverAddress": self.url.removeprefix("http://")}
        return {
            "/version": VERSION,
            "/api": {
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [address],
            },
            "/apis": {
                "kind": "APIGroupList",
                "apiVersion": "v1",
                "groups": [{"name": "batch", "versions": [batch], "preferredVersion": batch}],
            },
            "/api/v1": resources("v1", ("pods", "Pod"), ("secrets", "Secret")),
            "/apis/batch/v1": resources("batch/v1", ("jobs", "Job")),
        }.get(path)

    def _list(self, cluster: str, resource: Resource, namespace: str | None, query: dict) -> Obj:
        matches = selector(query.get("labelSelector", ""), query.get("fieldSelector", ""))
        items = [
            copy.deepcopy(obj)
            for c, obj in self._all(resource, namespace)
            if c == cluster and matches(obj)
        ]
        meta = {"resourceVersion": str(self._rv)}
        return {
            "kind": f"{resource.kind}List",
            "apiVersion": resource.api_version,
            "metadata": meta,
            "items": items,
        }

    def _create_job(self, cluster: str, namespace: str, body: Any) -> Obj:
        if not isinstance(body, dict) or body.get("kind", "Job") != "Job":
            raise ApiError(400, "BadRequest", "the body is not a batch/v1 Job")
        job = copy.deepcopy(body)
        for server_owned in ("kind", "apiVersion", "status"):
            job.pop(server_owned, None)
        meta = job.setdefault("metadata", {})
        if meta.get("namespace", namespace) != namespace:
            message = "the namespace of the provided object does not match the request's"
            raise ApiError(400, "BadRequest", message)
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + "".join(random.choices(NAME_SUFFIX_ALPHABET, k=5))
        name = meta.setdefault("name", "")
        job.setdefault("spec", {}).setdefault("template", {})
        if causes := _job_causes(job):
            listed = ", ".join(f"{c['field']}: {c['message']}" for c in causes)
            message = f'Job.batch "{name}" is invalid: [{listed}]'
            details = {"name": name, "group": "batch", "kind": "Job", "causes": causes}
            raise ApiError(422, "Invalid", message, details)
        if (cluster, "jobs", namespace, name) in self._objects:
            message = f'jobs.batch "{name}" already exists'
            raise ApiError(409, "AlreadyExists", message, _details(JOBS, name))
        _default_job(job, namespace, _now())
        return _as_sent(JOBS, self._commit(cluster, JOBS, job, "ADDED"))

    def _delete_job(self, cluster: str, namespace: str, name: str, query: dict, body: Any) -> Obj:
        job = self._objects.get((cluster, "jobs", namespace, name))
        if job is None:
            raise _not_found(JOBS, name)
        options = body if isinstance(body, dict) else {}
        uid, expected = job["metadata"]["uid"], (options.get("preconditions") or {}).get("uid")
        if expected and expected != uid:
            message = (
                f"Precondition failed: UID in precondition: {expected}, UID in object meta: {uid}"
            )
            raise ApiError(409, "Conflict", message, _details(JOBS, name))
        policy = query.get("propagationPolicy") or options.get("propagationPolicy")
        if policy is None and options.get("orphanDependents") is not None:
            policy = "Orphan" if options["orphanDependents"] else "Background"
        policy = policy or "Orphan"  # batch/v1 Jobs' own default: the pods stay
        if policy not in ("Orphan", "Background", "Foreground"):
            message = f'propagationPolicy: Unsupported value: "{policy}"'
            raise ApiError(422, "Invalid", message, _details(JOBS, name))
        self.deletions.append(Deletion(cluster, namespace, name, policy))
        pods = self._pods_of(cluster, job)
        if policy == "Background":
            self._commit(cluster, JOBS, job, "DELETED")
            for pod in pods:
                self._commit(cluster, PODS, pod, "DELETED")
            return {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Success",
                "details": _details(JOBS, name, uid=uid),
            }
        finalizer = "foregroundDeletion" if policy == "Foreground" else "orphan"
        job["metadata"].update(
            deletionTimestamp=_now(), deletionGracePeriodSeconds=0, finalizers=[finalizer]
        )
        answer = _as_sent(JOBS, self._commit(cluster, JOBS, job))
        for pod in pods:
            if policy == "Foreground":
                self._commit(cluster, PODS, pod, "DELETED")
            else:
                pod["metadata"].pop("ownerReferences", None)
                self._commit(cluster, PODS, pod)
        self._commit(cluster, JOBS, job, "DELETED")
        return answer

    # watches -----------------------------------------------------------------------------------

    def open_watch(
        self, cluster: str, path: str, query: dict[str, str]
    ) -> tuple[_Watch | None, list[Obj]]:
        """(watch, first events); the watch is None when the stream is only a 410 ERROR."""
        resource, namespace, name = _route(path)
        if name or resource is SECRETS:
            raise ApiError(405, "MethodNotAllowed", "watch a collection", {})
        matches = selector(query.get("labelSelector", ""), query.get("fieldSelector", ""))
        requested = query.get("resourceVersion", "")
        with self._lock:
            if requested in ("", "0"):  # the current state as ADDED events, then changes
                cursor = self._rv
                state = [
                    o for c, o in self._all(resource, namespace) if c == cluster and matches(o)
                ]
                state.sort(key=lambda o: int(o["metadata"]["resourceVersion"]))
                first = [{"type": "ADDED", "object": _as_sent(resource, o)} for o in state]
            elif not requested.isdigit():
                raise ApiError(400, "BadRequest", f"invalid resource version: {requested!r}")
            elif int(requested) < self._compacted_rv:
                message = f"too old resource version: {requested} ({self._compacted_rv})"
                error = ApiError(410, "Expired", message).status()
                return None, [{"type": "ERROR", "object": error}]
            else:
                cursor, first = int(requested), []
            self._open_watches += 1
            return _Watch(cluster, resource, namespace, matches, cursor, self._generation), first

    def next_events(self, watch: _Watch, wait: float) -> tuple[list[Obj], str | None]:
        """Events past the watch's cursor (waiting up to `wait`), or how the watch was dropped."""
        with self._lock:
            events = self._pending(watch)
            if not events and watch.generation == self._generation and not self._closed:
                self._lock.wait(wait)
                events = self._pending(watch)
            if self._closed:
                return [], "abrupt"
            if watch.generation != self._generation:
                return [], self._drop_mode
            return events, None

    def bookmark(self, watch: _Watch) -> Obj:
        meta = {"resourceVersion": str(watch.cursor)}
        obj = {"kind": watch.resource.kind, "apiVersion": watch.resource.api_version}
        return {"type": "BOOKMARK", "object": {**obj, "metadata": meta}}

    def close_watch(self) -> None:
        with self._lock:
            self._open_watches -= 1

    def _pending(self, watch: _Watch) -> list[Obj]:
        fresh = self._events[bisect.bisect_right(self._event_rvs, watch.cursor) :]
        if fresh:
            watch.cursor = fresh[-1].rv
        return [{"type": e.type, "object": copy.deepcopy(e.obj)} for e in fresh if watch.wants(e)]


def _route(path: str) -> tuple[Resource, str | None, str | None]:
    for pattern, resource in _ROUTES:
        if m := pattern.fullmatch(path):
            return resource, m["ns"], m["name"]
    raise ApiError(404, "NotFound", "the server could not find the requested resource", {})


def _flag(query: dict[str, str], name: str) -> bool:
    """A boolean query parameter as Go's ParseBool reads it: the client sends watch=True."""
    return query.get(name, "") in ("1", "t", "T", "true", "TRUE", "True")


def _shut(connection: socket.socket) -> None:
    try:
        connection.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive and chunked watch streams, as aiohttp expects
    disable_nagle_algorithm = True  # headers and body go out in separate writes
    fake: FakeKubernetes

    def setup(self) -> None:
        super().setup()
        self.fake._connections.add(self.connection)

    def finish(self) -> None:
        self.fake._connections.discard(self.connection)
        try:
            super().finish()
        except OSError:
            pass

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet test output
        pass

    def do_GET(self) -> None:  # noqa: N802
        self._serve("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._serve("POST")

    def do_DELETE(self) -> None:  # noqa: N802
        self._serve("DELETE")

    def do_PUT(self) -> None:  # noqa: N802
        self._serve("PUT")

    def do_PATCH(self) -> None:  # noqa: N802
        self._serve("PATCH")

    def _serve(self, method: str) -> None:
        url = urlsplit(self.path)
        prefixed = _CLUSTER_PREFIX.fullmatch(url.path)
        cluster = prefixed["cluster"] if prefixed else DEFAULT_CLUSTER
        path = (prefixed["rest"] or "") if prefixed else url.path
        path = path.rstrip("/") or "/"  # discovery is asked for as /version/, /api/, /apis/
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            body, readable = (json.loads(raw) if raw else None), True
        except ValueError:
            body, readable = raw.decode(errors="replace"), False
        self.fake.requests.append(RecordedRequest(method, path, body, query, cluster))
        try:
            if not readable:
                raise ApiError(400, "BadRequest", "the request body is not JSON")
            if self.headers.get("Authorization") != f"Bearer {self.fake.token}":
                raise ApiError(401, "Unauthorized", "Unauthorized")
            if method == "GET" and _flag(query, "watch"):
                return self._watch(cluster, path, query)
            code, answer = self.fake.answer(method, cluster, path, query, body)
        except ApiError as error:
            code, answer = error.code, error.status()
        plain = isinstance(answer, str)  # a pod's log
        data = answer.encode() if plain else json.dumps(answer).encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain" if plain else "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _watch(self, cluster: str, path: str, query: dict[str, str]) -> None:
        timeout = query.get("timeoutSeconds", "")
        if timeout and not timeout.isdigit():
            raise ApiError(400, "BadRequest", f"invalid timeoutSeconds: {timeout!r}")
        deadline = time.monotonic() + int(timeout) if timeout else None
        watch, first = self.fake.open_watch(cluster, path, query)
        ending: str | None = "clean"
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for event in first:
                self._chunk(event)
            while watch is not None:
                left = deadline - time.monotonic() if deadline else WATCH_POLL_SECONDS
                if left <= 0:
                    if _flag(query, "allowWatchBookmarks"):
                        self._chunk(self.fake.bookmark(watch))
                    break
                events, dropped = self.fake.next_events(watch, min(left, WATCH_POLL_SECONDS))
                if dropped:
                    ending = dropped
                    break
                for event in events:
                    self._chunk(event)
                if not events and self._client_gone():
                    ending = None
                    break
            if ending == "clean":
                self.wfile.write(b"0\r\n\r\n")
            else:
                self.close_connection = True
                if ending == "abrupt":
                    _shut(self.connection)
        except OSError:
            self.close_connection = True
        finally:
            if watch is not None:
                self.fake.close_watch()

    def _chunk(self, event: Obj) -> None:
        data = json.dumps(event).encode() + b"\n"
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def _client_gone(self) -> bool:
        readable, _, _ = select.select([self.connection], [], [], 0)
        if not readable:
            return False
        try:
            return self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True
