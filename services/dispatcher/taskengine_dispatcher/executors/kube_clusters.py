"""The Kubernetes executor's clusters: an API client per kubeconfig context (or the cluster the
dispatcher runs in), and what the Jobs and pods there look like, kept by list + watch.

A watch goes on from the resourceVersion of the list before it (or of the last event it
delivered): a dropped connection resumes where it was, a 410 Gone (history compacted) lists
again, and so does every RESYNC seconds, as a backstop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.config import ConfigException, incluster_config, kube_config
from taskengine_core.config import EngineSettings

from taskengine_dispatcher.executors import kube_jobs
from taskengine_dispatcher.executors.kube_jobs import Obj

log = logging.getLogger(__name__)

IN_CLUSTER = "in-cluster"
"""The cluster's name when the dispatcher runs in it (no kubeconfig)."""
JOBS, PODS = "jobs", "pods"
REQUEST_TIMEOUT = 30
WATCH_SECONDS = 240
"""How long one watch request lasts before it is made again (from where it was)."""
RESYNC = 600.0
"""Seconds between two full lists of a kind: a backstop, should a watch ever miss a change."""
FIRST_RETRY, RETRY_CAP = 0.2, 5.0
UNREACHABLE = (aiohttp.ClientError, TimeoutError, OSError)
"""What a request to a cluster that did not answer raises."""

Listed = Callable[["Cluster", str, list[Obj]], None]
Observed = Callable[["Cluster", str, str, Obj], None]


@dataclass
class Cluster:
    """One cluster's API and what its lists and watches said, by Job name."""

    name: str
    api: client.ApiClient
    jobs: dict[str, Obj] = field(default_factory=dict)
    """Each Job's `status`."""
    pods: dict[str, Obj] = field(default_factory=dict)
    """The `status` of each Job's pod, kept after the pod is deleted (until its Job is)."""
    listed: set[str] = field(default_factory=set)
    """The kinds listed at least once; `synced` is set once both are."""
    synced: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.batch = client.BatchV1Api(self.api)
        self.core = client.CoreV1Api(self.api)

    async def watch(self, kind: str, namespace: str, listed: Listed, observed: Observed) -> None:
        """Lists `kind` (JOBS or PODS) with the executor's label, then watches it: `listed`
        gets each full list, `observed` each change (ADDED, MODIFIED, DELETED). Forever."""
        api = self.batch.list_namespaced_job if kind == JOBS else self.core.list_namespaced_pod
        loop = asyncio.get_running_loop()
        version: str | None = None
        listed_at, delay = 0.0, FIRST_RETRY
        while True:
            try:
                if version is None or loop.time() - listed_at > RESYNC:
                    listing = await api(
                        namespace,
                        label_selector=kube_jobs.SELECTOR,
                        _request_timeout=REQUEST_TIMEOUT,
                    )
                    raw = self.api.sanitize_for_serialization(listing)
                    version, listed_at = raw["metadata"]["resourceVersion"], loop.time()
                    listed(self, kind, raw["items"])
                    delay = FIRST_RETRY
                async with watch.Watch(return_type="object") as stream:
                    async for event in stream.stream(
                        api,
                        namespace,
                        label_selector=kube_jobs.SELECTOR,
                        resource_version=version,
                        allow_watch_bookmarks=True,
                        timeout_seconds=WATCH_SECONDS,
                        _request_timeout=WATCH_SECONDS + REQUEST_TIMEOUT,
                    ):
                        version = stream.resource_version or version
                        if event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                            observed(self, kind, event["type"], event["raw_object"])
                        delay = FIRST_RETRY
                continue  # the server ended this watch: the next one goes on from `version`
            except ApiException as error:
                if error.status == 410:
                    log.info("dispatcher: %s on %s: history expired; listing", kind, self.name)
                    version = None
                    continue
                problem = describe(error)
            except UNREACHABLE as error:
                problem = describe(error)
            log.warning("dispatcher: watching %s on %s: %s", kind, self.name, problem)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_CAP)

    async def pod_logs(
        self, namespace: str, selector: str, container: str, lines: int, limit: int
    ) -> str:
        """The end (`lines`, at most `limit` bytes) of the logs of `container` in the pods
        `selector` picks, as the kubelet sent them."""
        listing = await self.core.list_namespaced_pod(
            namespace, label_selector=selector, _request_timeout=REQUEST_TIMEOUT
        )
        text = ""
        for pod in listing.items:
            response: Any = await self.core.read_namespaced_pod_log(  # a response, not str
                pod.metadata.name,
                namespace,
                container=container,
                tail_lines=lines,
                limit_bytes=limit,
                _preload_content=False,  # as sent: a log is no JSON to parse
                _request_timeout=REQUEST_TIMEOUT,
            )
            async with response:
                if response.status == 200:
                    text += (await response.read()).decode(errors="replace")
        return text


def message(error: ApiException) -> str:
    """The API's own message of a failed request (its `Status`), at most 300 characters."""
    try:
        return str(json.loads(error.body or "{}").get("message") or error.reason)[:300]
    except (ValueError, AttributeError):
        return str(error.reason)[:300]


def describe(error: BaseException) -> str:
    if isinstance(error, ApiException):
        return f"{error.status} {message(error)}"
    return f"{type(error).__name__}: {error}"


def _kubeconfig(config: EngineSettings) -> str:
    """The kubeconfig file(s) to read, or "" when there are none (in a cluster)."""
    files = config.kubeconfig or os.path.expanduser("~/.kube/config")
    return files if any(Path(f).expanduser().is_file() for f in files.split(os.pathsep)) else ""


async def connect(config: EngineSettings) -> list[Cluster]:
    """The clusters: the contexts of `TASKENGINE_KUBE_CONTEXTS` (default the current one) of
    the kubeconfig (`KUBECONFIG`, default ~/.kube/config); without one, the cluster the
    dispatcher runs in. Exits when there is none to use."""
    contexts = [c.strip() for c in config.kube_contexts.split(",") if c.strip()]
    files = _kubeconfig(config)
    apis: dict[str, client.ApiClient] = {}
    try:
        if contexts or files:
            if not contexts:
                _, current = kube_config.list_kube_config_contexts(files)
                if current is None:
                    raise ConfigException("the kubeconfig has no current context")
                contexts = [current["name"]]
            for context in contexts:
                configuration = client.Configuration()
                await kube_config.load_kube_config(
                    config_file=files,
                    context=context,
                    client_configuration=configuration,
                    persist_config=False,
                )
                apis[context] = client.ApiClient(configuration)
        else:
            configuration = client.Configuration()
            incluster_config.load_incluster_config(client_configuration=configuration)
            apis[IN_CLUSTER] = client.ApiClient(configuration)
    except (ConfigException, OSError, KeyError, TypeError) as error:
        for api in apis.values():
            await api.close()
        raise SystemExit(
            f"dispatcher: the Kubernetes executor has no cluster to use: {error} (set KUBECONFIG"
            " and TASKENGINE_KUBE_CONTEXTS, or run it in a cluster)"
        ) from None
    return [Cluster(name, api) for name, api in apis.items()]
