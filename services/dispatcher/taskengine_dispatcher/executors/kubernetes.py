"""The Kubernetes executor (`TASKENGINE_EXECUTOR=kubernetes`): each attempt runs as a batch/v1
Job whose container is `taskengine worker`, which reports to the gateway as the process
executor's worker does; its reports move the job.

The dispatcher creates the Job (named from the job and attempt: a second create is
AlreadyExists, which is success), watches Jobs and pods and, once the Job or its pod ended,
ends the attempt as their status says (`kube_jobs.verdict`) unless the worker's report ended
it first. Both are listed, then watched from the list's resourceVersion: a dropped watch
resumes where it was, a 410 Gone lists again. Cancelling deletes the Job. Jobs outlive their
dispatcher: a restarted one watches again those of attempts still running (`adopt`) and
deletes those of attempts that are over.

A container run (a Drove DOCKER task) runs as a plain Job of its image (kube_containers.py):
nothing reports, so the dispatcher records that it runs (JobExecuting, once its container
started), ends it as its Job says, gives up (and deletes the Job) when its image was not
pulled within its run's pull timeout, and stores the pod's log as its output before ending it.

The clusters are kubeconfig contexts (`TASKENGINE_KUBE_CONTEXTS`, default the current one;
`KUBECONFIG`, default ~/.kube/config), else the cluster the dispatcher runs in; attempts take
them in turn.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Coroutine
from typing import Any

from kubernetes_asyncio.client.exceptions import ApiException
from taskengine_core.attempts import LOST, worker_token
from taskengine_core.config import KUBERNETES, EngineSettings
from taskengine_core.ids import job_stream
from taskengine_core.jobs import Job, JobState
from taskengine_core.steps import Outcome
from taskengine_core.workflows import workflow
from taskengine_runtime import Runtime

from taskengine_dispatcher.executors import (
    Placement,
    Sink,
    Start,
    kube_clusters,
    kube_containers,
    kube_jobs,
)
from taskengine_dispatcher.executors.kube_clusters import (
    FIRST_RETRY,
    JOBS,
    PODS,
    REQUEST_TIMEOUT,
    RETRY_CAP,
    UNREACHABLE,
    Cluster,
    describe,
    message,
)
from taskengine_dispatcher.executors.kube_containers import ContainerRun
from taskengine_dispatcher.executors.kube_jobs import Obj
from taskengine_dispatcher.executors.process import gateway_url

log = logging.getLogger(__name__)

EXECUTOR = KUBERNETES
"""An adopted container's timeout when its run gives none (the dispatcher's default)."""
CREATE_PATIENCE = 60.0
"""How long a Job's creation is retried (cluster unreachable, 5xx) before the attempt is lost."""
SYNC_WAIT = 15.0
"""How long a starting dispatcher waits for its first lists before adopting Jobs."""


class JobAttempt:
    """An attempt's Job: ended by its worker's reports, else as the Job's status says (a
    container's: by its status alone)."""

    reports = True

    def __init__(
        self,
        executor: KubernetesExecutor,
        job_id: int,
        attempt: int,
        body: Obj | None,
        placement: Placement,
        container: ContainerRun | None = None,
        secret: tuple[str, str] | None = None,
    ):
        self.executor = executor
        self.job_id = job_id
        self.attempt = attempt
        self.placement = placement
        assert placement.cluster is not None and placement.job_name is not None
        self.cluster: str = placement.cluster
        self.name: str = placement.job_name
        self.body = body
        self.created = body is None
        """The Job exists (created, or adopted: `body` None)."""
        self.ended: asyncio.Future[Outcome | None] = asyncio.get_running_loop().create_future()
        self.reading = False
        self.pods_read = False
        self.container = container
        """A DOCKER task's run (no worker reports it), else None."""
        self.started = False
        self.pull_failing_since: float | None = None
        self.pull_check: asyncio.TimerHandle | None = None
        self.discard = False
        """Its Job is deleted once it ended (its image was not pulled)."""
        self.secret = secret
        """(Secret, client): the `storage_credentials` Secret its Job names, checked before the
        Job is created to be labelled as that client's."""

    def stop(self) -> None:
        """Its job was cancelled or broken: the Job is deleted (see `run`)."""
        if not self.ended.done():
            self.ended.set_result(None)

    async def run(self) -> Outcome | None:
        """Creates the Job and waits until it ended; returns how (None: stopped)."""
        return await self.executor.supervise(self)

    async def after_end(self) -> None:
        pass


def worker_env(config: EngineSettings, job_id: int, attempt: int, timeout: float) -> dict[str, str]:
    """What the Job's worker is told: its task, attempt, token and where to report."""
    return {
        "TASKENGINE_JOB_ID": str(job_id),
        "TASKENGINE_ATTEMPT": str(attempt),
        "TASKENGINE_WORKER_TOKEN": worker_token(config.webhook_key, job_id, attempt),
        "TASKENGINE_GATEWAY_URL": gateway_url(config),
        "TASKENGINE_TIMEOUT": f"{timeout:g}",
        "TASKENGINE_INLINE_STEPS": "true" if config.inline_steps else "false",
        "TASKENGINE_STEP_USER": config.step_user,
        "TASKENGINE_STEP_SAME_USER": "true" if config.step_same_user else "false",
        "TASKENGINE_LOG_LEVEL": config.log_level,
    }


class KubernetesExecutor:
    """Runs each remote attempt as a Job on one of the clusters, in turn."""

    name = EXECUTOR
    runs_as = "Kubernetes Job(s)"

    def __init__(self, runtime: Runtime, clusters: list[Cluster]):
        self.runtime = runtime
        self.namespace = runtime.config.kube_namespace
        self.clusters = {cluster.name: cluster for cluster in clusters}
        self.turn = itertools.count()
        self.attempts: dict[tuple[str, str], JobAttempt] = {}
        self.tasks: set[asyncio.Task] = set()
        self.watches: list[asyncio.Task] = []

    # --- placing attempts -------------------------------------------------------------------

    def attempt(self, start: Start, sink: Sink) -> JobAttempt:
        """The attempt's Job, to be created by `run`: a container's, or a worker's."""
        config = self.runtime.config
        names = list(self.clusters)
        cluster = names[next(self.turn) % len(names)]
        name = kube_jobs.job_name(start.ref.job_id, start.attempt)
        run, job_id = start.submitted.run, start.ref.job_id
        container = kube_containers.container_run(run, start.timeout)
        if container is not None:
            body = kube_containers.manifest(
                name=name,
                job_id=job_id,
                run=run,
                attempt=start.attempt,
                timeout=start.timeout,
                ttl=config.kube_job_ttl,
            )
            placement = Placement(EXECUTOR, None, cluster, name)
            return JobAttempt(self, job_id, start.attempt, body, placement, container)
        start.steps()  # a workflow that cannot run fails the attempt before its Job exists
        body = kube_jobs.manifest(
            name=name,
            job_id=job_id,
            attempt=start.attempt,
            image=workflow(start.submitted.workflow).image or config.worker_image,
            env=worker_env(config, job_id, start.attempt, start.timeout),
            requirements=run.resources,
            memory=start.memory,
            secret=run.secret,
            secret_keys=[k.strip() for k in config.kube_secret_keys.split(",") if k.strip()],
            timeout=start.timeout,
            ttl=config.kube_job_ttl,
        )
        owned = (run.secret, start.submitted.client) if run.secret else None
        placement = Placement(EXECUTOR, start.memory, cluster, name)
        return JobAttempt(self, job_id, start.attempt, body, placement, secret=owned)

    def adopt(self, job: Job, attempt: int) -> JobAttempt | None:
        """The existing Job of an attempt the store says still runs, to watch again; None when
        the attempt is over or its cluster is not configured any more."""
        if (
            job.state != JobState.RUNNING
            or job.attempt != attempt
            or job.executor != EXECUTOR
            or job.cluster not in self.clusters
            or not job.job_name
        ):
            return None
        placement = Placement(EXECUTOR, job.memory, job.cluster, job.job_name)
        timeout = job.timeout or self.runtime.config.attempt_timeout
        container = kube_containers.container_run(job.run, timeout)
        return JobAttempt(self, job.job_id, attempt, None, placement, container)

    # --- running one attempt ----------------------------------------------------------------

    async def supervise(self, attempt: JobAttempt) -> Outcome | None:
        key = (attempt.cluster, attempt.name)
        self.attempts[key] = attempt
        try:
            cluster = self.clusters[attempt.cluster]
            if not attempt.created:
                failure = await self._create(attempt)
                if failure is not None:
                    return failure
            elif JOBS in cluster.listed and attempt.name not in cluster.jobs:
                self._spawn(self._confirm(attempt))  # adopted, but not in the list
            self._examine(attempt)
            outcome = await attempt.ended
            if outcome is None or attempt.discard:
                await self._delete(cluster, attempt.name)
            elif attempt.container:
                await self._store_output(attempt)
            return outcome
        finally:
            if attempt.pull_check:
                attempt.pull_check.cancel()
            if self.attempts.get(key) is attempt:
                del self.attempts[key]

    async def _create(self, attempt: JobAttempt) -> Outcome | None:
        """Creates the Job (retried while the cluster does not answer); a failure's outcome,
        or None once it exists (or the attempt was stopped meanwhile)."""
        cluster = self.clusters[attempt.cluster]
        loop = asyncio.get_running_loop()
        give_up, delay = loop.time() + CREATE_PATIENCE, FIRST_RETRY
        while not attempt.ended.done():
            try:
                if attempt.secret and (refusal := await self._refuse_secret(cluster, attempt)):
                    return Outcome("failed", refusal)
                body: Any = attempt.body  # the API takes a Job's JSON as well as a V1Job
                await cluster.batch.create_namespaced_job(
                    self.namespace, body, _request_timeout=REQUEST_TIMEOUT
                )
                problem = None
            except ApiException as error:
                if error.status in (400, 422):  # the work task asks for what cannot be
                    return Outcome("failed", f"Kubernetes refused its Job: {message(error)}")
                problem = None if error.status == 409 else f"{error.status} {message(error)}"
            except UNREACHABLE as error:
                problem = f"{type(error).__name__}: {error}"
            if problem is None:  # created, or AlreadyExists: an earlier create of ours landed
                attempt.created = True
                log.info("job %s: Job %s on %s", attempt.job_id, attempt.name, cluster.name)
                return None
            if loop.time() + delay > give_up:
                self._spawn(self._delete(cluster, attempt.name))  # had one landed unseen
                why = f"lost: its Job could not be created on {cluster.name}: {problem}"
                return Outcome("failed", why, transient=LOST)
            log.warning("job %s: creating Job %s: %s", attempt.job_id, attempt.name, problem)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_CAP)
        return None

    async def _refuse_secret(self, cluster: Cluster, attempt: JobAttempt) -> str | None:
        """Why the attempt may not use its `storage_credentials` Secret, or None: it carries
        the label naming the attempt's client. A missing Secret is refused alike (no answer
        says whether another client's exists)."""
        assert attempt.secret is not None
        name, client = attempt.secret
        try:
            secret = await cluster.core.read_namespaced_secret(
                name, self.namespace, _request_timeout=REQUEST_TIMEOUT
            )
            labels = secret.metadata.labels
        except ApiException as error:
            if error.status == 403:  # the operator's Role does not grant it: no retry helps
                return (
                    f"storage_credentials: the dispatcher may not read Secrets in namespace"
                    f" {self.namespace} (its Role needs get on secrets): {message(error)}"
                )
            if error.status != 404:
                raise
            labels = None
        return kube_jobs.secret_refusal(name, labels, client)

    def _examine(self, attempt: JobAttempt) -> None:
        """Ends the attempt if its Job or pod ended (reading its pods first when the Job says
        it ended before the pod's own watch did)."""
        if attempt.ended.done() or not attempt.created:
            return
        cluster = self.clusters[attempt.cluster]
        job, pod = cluster.jobs.get(attempt.name), cluster.pods.get(attempt.name)
        if kube_jobs.finished(job) and not kube_jobs.settled(pod) and not attempt.pods_read:
            if not attempt.reading:
                attempt.reading = True
                self._spawn(self._read_pods(attempt))
            return
        if attempt.container:
            self._watch_container(attempt, pod)
        self._decide(attempt, self._verdict(attempt, job, pod))

    def _verdict(
        self, attempt: JobAttempt, job: Obj | None, pod: Obj | None, gone: bool = False
    ) -> Outcome | None:
        if attempt.container:
            return kube_containers.verdict(job, pod, attempt.container.timeout, gone=gone)
        return kube_jobs.verdict(job, pod, gone=gone)

    def _decide(self, attempt: JobAttempt, outcome: Outcome | None) -> None:
        if outcome is not None and not attempt.ended.done():
            log.info("job %s: Job %s ended: %s", attempt.job_id, attempt.name, outcome.reason)
            attempt.ended.set_result(outcome)

    async def _read_pods(self, attempt: JobAttempt) -> None:
        cluster = self.clusters[attempt.cluster]
        try:
            listing = await cluster.core.list_namespaced_pod(
                self.namespace,
                label_selector=kube_jobs.attempt_selector(attempt.job_id, attempt.attempt),
                _request_timeout=REQUEST_TIMEOUT,
            )
            for pod in cluster.api.sanitize_for_serialization(listing)["items"]:
                _keep_pod(cluster.pods, attempt.name, pod.get("status") or {})
        except (ApiException, *UNREACHABLE) as error:
            log.warning("job %s: reading its pods: %s", attempt.job_id, describe(error))
        attempt.reading, attempt.pods_read = False, True
        self._examine(attempt)

    async def _confirm(self, attempt: JobAttempt) -> None:
        """Reads a Job a list did not show: gone, it is lost."""
        cluster = self.clusters[attempt.cluster]
        try:
            job = await cluster.batch.read_namespaced_job(
                attempt.name, self.namespace, _request_timeout=REQUEST_TIMEOUT
            )
        except ApiException as error:
            if error.status != 404:
                log.warning("job %s: reading its Job: %s", attempt.job_id, describe(error))
                return
            pod = cluster.pods.get(attempt.name)
            self._decide(attempt, self._verdict(attempt, None, pod, gone=True))
            return
        except UNREACHABLE as error:
            log.warning("job %s: reading its Job: %s", attempt.job_id, describe(error))
            return
        cluster.jobs[attempt.name] = cluster.api.sanitize_for_serialization(job).get("status", {})
        self._examine(attempt)

    # --- DOCKER tasks: nothing reports for them --------------------------------------------

    def _watch_container(self, attempt: JobAttempt, pod: Obj | None) -> None:
        """Records that its container started; ends the attempt once its image failed to
        pull for longer than its pull timeout (the check runs again when that is due)."""
        run = attempt.container
        assert run is not None
        if not attempt.started and kube_containers.running(pod):
            attempt.started = True
            self._spawn(self._executing(attempt))
        problem = kube_containers.pull_failure(pod)
        if problem is None:
            return
        loop = asyncio.get_running_loop()
        if attempt.pull_failing_since is None:
            attempt.pull_failing_since = loop.time()
            attempt.pull_check = loop.call_later(
                run.pull_timeout.seconds + 0.05, self._examine, attempt
            )
        elif loop.time() - attempt.pull_failing_since >= run.pull_timeout.seconds:
            attempt.discard = True
            self._decide(attempt, kube_containers.pull_failed(run, problem))

    async def _executing(self, attempt: JobAttempt) -> None:
        """JobExecuting for a DOCKER task whose container started (Drove shows it RUNNING)."""
        by = f"{attempt.cluster}/{attempt.name}"
        try:
            await self.runtime.call(
                kube_containers.record_executing,
                self.runtime.store,
                attempt.job_id,
                attempt.attempt,
                by,
            )
        except Exception:  # the store is unreachable: the task runs all the same
            log.exception("job %s: recording that its container runs failed", attempt.job_id)

    async def _store_output(self, attempt: JobAttempt) -> None:
        """Stores the end of the pod's log as the attempt's output lines (ExecutionLogged),
        before its end is recorded; a pod gone already has none."""
        cluster = self.clusters[attempt.cluster]
        try:
            text = await cluster.pod_logs(
                self.namespace,
                kube_jobs.attempt_selector(attempt.job_id, attempt.attempt),
                kube_jobs.TASK_CONTAINER,
                kube_containers.OUTPUT_LINES,
                kube_containers.OUTPUT_BYTES,
            )
            events = kube_containers.output(attempt.job_id, attempt.attempt, text)
            if events:
                await self.runtime.call(self.runtime.store.commit_unmoved, events)
        except (ApiException, *UNREACHABLE) as error:
            log.warning("job %s: reading its pod's log: %s", attempt.job_id, describe(error))
        except Exception:  # the store is unreachable: the output is lost, the outcome is not
            log.exception("job %s: storing its output failed", attempt.job_id)

    async def _delete(self, cluster: Cluster, name: str) -> None:
        """Deletes a Job and (in the background) its pods; gone already is fine."""
        for delay in (FIRST_RETRY, 1.0, RETRY_CAP, None):
            try:
                await cluster.batch.delete_namespaced_job(
                    name,
                    self.namespace,
                    propagation_policy="Background",
                    _request_timeout=REQUEST_TIMEOUT,
                )
                log.info("Job %s on %s deleted", name, cluster.name)
                return
            except ApiException as error:
                if error.status == 404:
                    return
                problem = describe(error)
            except UNREACHABLE as error:
                problem = describe(error)
            if delay is None:
                log.warning("Job %s on %s not deleted: %s", name, cluster.name, problem)
                return
            await asyncio.sleep(delay)

    # --- watching ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Lists and watches every cluster; returns once each listed (or SYNC_WAIT passed)."""
        for cluster in self.clusters.values():
            for kind in (JOBS, PODS):
                watching = cluster.watch(kind, self.namespace, self._listed, self._observed)
                self.watches.append(asyncio.create_task(watching))
        waits = {c.name: asyncio.create_task(c.synced.wait()) for c in self.clusters.values()}
        await asyncio.wait(waits.values(), timeout=SYNC_WAIT)
        for name, waiting in waits.items():
            if not waiting.done():
                log.warning("dispatcher: cluster %s did not answer yet; watching on", name)
                waiting.cancel()

    async def close(self) -> None:
        for task in [*self.watches, *self.tasks]:
            task.cancel()
        await asyncio.gather(*self.watches, *self.tasks, return_exceptions=True)
        for cluster in self.clusters.values():
            await cluster.api.close()

    def _listed(self, cluster: Cluster, kind: str, items: list[Obj]) -> None:
        mine = [a for a in self.attempts.values() if a.cluster == cluster.name]
        if kind == JOBS:
            first = JOBS not in cluster.listed
            cluster.jobs = {
                kube_jobs.job_name(*key): item.get("status") or {}
                for item in items
                if (key := kube_jobs.attempt_of(item))
            }
            if first:
                self._spawn(self._sweep(cluster, items))
            for attempt in mine:  # gone while unwatched: make sure before calling it lost
                if attempt.created and attempt.name not in cluster.jobs:
                    self._spawn(self._confirm(attempt))
        else:
            pods: dict[str, Obj] = {}
            for item in items:
                if key := kube_jobs.attempt_of(item):
                    _keep_pod(pods, kube_jobs.job_name(*key), item.get("status") or {})
            for attempt in mine:  # a pod deleted while unwatched: its last status still counts
                if attempt.name in cluster.pods:
                    _keep_pod(pods, attempt.name, cluster.pods[attempt.name])
            cluster.pods = pods
        cluster.listed.add(kind)
        if cluster.listed == {JOBS, PODS}:
            cluster.synced.set()
        for attempt in mine:
            self._examine(attempt)

    def _observed(self, cluster: Cluster, kind: str, change: str, obj: Obj) -> None:
        key = kube_jobs.attempt_of(obj)
        if key is None:
            return
        name = kube_jobs.job_name(*key)
        attempt = self.attempts.get((cluster.name, name))
        if kind == PODS:
            if change != "DELETED":  # a deleted pod's last status still says how it ended
                _keep_pod(cluster.pods, name, obj.get("status") or {})
        elif change != "DELETED":
            cluster.jobs[name] = obj.get("status") or {}
        else:
            cluster.jobs.pop(name, None)
            pod = cluster.pods.pop(name, None)
            if attempt is not None and attempt.created:
                self._decide(attempt, self._verdict(attempt, None, pod, gone=True))
            return
        if attempt is not None:
            self._examine(attempt)

    async def _sweep(self, cluster: Cluster, items: list[Obj]) -> None:
        """Deletes the Jobs a starting dispatcher finds whose attempts the store says are over
        (a Job the store does not know is left alone: it may be another engine's)."""
        found = {
            key: kube_jobs.job_name(*key)
            for item in items
            if (key := kube_jobs.attempt_of(item))
            and (cluster.name, kube_jobs.job_name(*key)) not in self.attempts
        }
        if not found:
            return
        try:
            over = await self.runtime.call(self._over, list(found))
        except Exception:  # the store is unreachable: the Jobs' TTL cleans up after them
            log.exception("dispatcher: checking the Jobs found on %s failed", cluster.name)
            return
        for key in over:
            log.info("dispatcher: Job %s on %s: its attempt is over", found[key], cluster.name)
            await self._delete(cluster, found[key])

    def _over(self, keys: list[tuple[int, int]]) -> set[tuple[int, int]]:
        jobs = self.runtime.store.jobs({job_stream(job_id) for job_id, _ in keys})
        return {
            (job_id, attempt)
            for job_id, attempt in keys
            if (job := jobs.get(job_stream(job_id))) is not None
            and (job.state != JobState.RUNNING or job.attempt != attempt)
        }

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)


def _keep_pod(pods: dict[str, Obj], name: str, status: Obj) -> None:
    """Keeps a pod's status, unless it would hide one that says how the worker ended."""
    if kube_jobs.settled(status) or not kube_jobs.settled(pods.get(name)):
        pods[name] = status


async def connect(runtime: Runtime) -> KubernetesExecutor:
    """The executor on the configured clusters, watching them (see the module's docs)."""
    clusters = await kube_clusters.connect(runtime.config)
    where = ", ".join(cluster.name for cluster in clusters)
    log.info(
        "dispatcher: Kubernetes Jobs in namespace %s on %s", runtime.config.kube_namespace, where
    )
    executor = KubernetesExecutor(runtime, clusters)
    await executor.start()
    return executor
