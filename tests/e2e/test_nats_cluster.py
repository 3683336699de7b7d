"""On a 3-node NATS cluster with the stream at 3 replicas, kill -9 of the stream's leader under
load loses nothing, starts nothing twice, and the system goes on: no service dies of it, and
jobs submitted afterwards complete on the two nodes left."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import nats
import pytest
from nats.js.api import StreamInfo
from taskengine_contracts import subjects
from taskengine_contracts.events import Event, JobEvent, JobStarted
from taskengine_runtime.bus import servers

from tests.support.audit import audit
from tests.support.servers import nats_cluster, scratch_dir
from tests.support.system import ADMIN, System, running_system
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(300)

JOBS = 300
PACE = 0.02
"""Seconds between two submissions: a steady load over several seconds, not one burst."""
KILL_AFTER = 100
"""Acknowledged submissions before the stream's leader is killed."""


def stream_info(url: str) -> StreamInfo:
    async def read() -> StreamInfo:
        nc = await nats.connect(servers(url), max_reconnect_attempts=1, connect_timeout=2)
        try:
            return await nc.jetstream().stream_info(subjects.STREAM)
        finally:
            await nc.close()

    return asyncio.run(read())


class Load:
    """Jobs submitted one every PACE seconds from a background thread; `accepted` holds the ids
    the API acknowledged (a failed submission was not accepted, so nothing is owed for it)."""

    def __init__(self, url: str, count: int) -> None:
        self.url, self.count = url, count
        self.accepted: set[int] = set()
        self.refused: list[str] = []
        self.lock = threading.Lock()

    def submit(self, http: httpx.Client, n: int) -> None:
        body = {"job": {"workflow": "echo"}, "parameters": {"n": n}}
        try:
            response = http.post("/job", json=body)
        except httpx.HTTPError as error:
            self.refused.append(repr(error))
            return
        with self.lock:
            if response.status_code == 200:
                self.accepted.add(response.json()["id"])
            else:
                self.refused.append(f"{response.status_code} {response.text[:200]}")

    def run(self) -> None:
        headers = {"client": ADMIN[0], "api-key": ADMIN[1]}
        with (
            httpx.Client(base_url=self.url, headers=headers, timeout=30) as http,
            ThreadPoolExecutor(8) as pool,
        ):
            for n in range(self.count):
                pool.submit(self.submit, http, n)
                time.sleep(PACE)

    def acknowledged(self) -> int:
        with self.lock:
            return len(self.accepted)


def histories(events: list[Event], jobs: list[int]) -> dict[int, list[str]]:
    """What happened to `jobs`, to explain a failure."""
    told: dict[int, list[str]] = {job_id: [] for job_id in jobs}
    for event in events:
        if isinstance(event, JobEvent) and event.job_id in told:
            told[event.job_id].append(repr(event)[:300])
    return told


def finished(system: System, accepted: set[int], problem: list[str]) -> dict[str, int] | None:
    try:
        return audit(system.events(), accepted)
    except AssertionError as error:
        problem[:] = [str(error)]
        return None


def test_kill_9_of_the_stream_leader_under_load_loses_and_repeats_nothing(postgres_url):
    root = scratch_dir("te-cluster-")
    try:
        run_through_a_leader_kill(postgres_url, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run_through_a_leader_kill(postgres_url: str, root: Path) -> None:
    with (
        nats_cluster(root, size=3) as cluster,
        running_system(
            postgres_url,
            "nats-cluster",
            env={"TASKENGINE_NATS_REPLICAS": "3"},
            nats_url=cluster.url,
        ) as system,
    ):
        before = stream_info(cluster.url)
        assert before.config.num_replicas == 3
        assert before.cluster is not None and before.cluster.leader
        with system.client() as client:
            response = client.post("/settings", json={"name": "max_jobs", "setting": 50})
            assert response.status_code == 200
        processes = system.pids()

        load = Load(system.url, JOBS)
        submitting = threading.Thread(target=load.run)
        submitting.start()
        try:
            wait_until(
                lambda: load.acknowledged() >= KILL_AFTER,
                timeout=120,
                what=f"{KILL_AFTER} acknowledged submissions",
            )
            leader = cluster.node(stream_info(cluster.url).cluster.leader)  # type: ignore[union-attr]
            os.kill(leader.pid or 0, signal.SIGKILL)
        finally:
            submitting.join(timeout=240)
        accepted = load.accepted
        # The gateway answers from PostgreSQL: the bus losing a node refuses no submission.
        assert len(accepted) == JOBS, load.refused[:5]

        # The two left elect a new leader; the stream still has its 3 replicas configured.
        def new_leader() -> StreamInfo | None:
            try:
                info = stream_info(cluster.url)
            except Exception:
                return None
            led = info.cluster is not None and info.cluster.leader not in (None, leader.server_name)
            return info if led else None

        wait_until(new_leader, timeout=60, every=0.5, what="a new stream leader")

        problem: list[str] = []
        try:
            states = wait_until(
                lambda: finished(system, accepted, problem),
                timeout=180,
                every=1.0,
                what="every acknowledged job to finish",
            )
        except AssertionError:
            raise AssertionError(f"{problem}\n{system.service_errors()}") from None
        assert states == {"succeeded": JOBS}, states
        events = system.events()
        started = Counter(e.job_id for e in events if isinstance(e, JobStarted))
        twice = sorted(job_id for job_id in accepted if started[job_id] != 1)
        told = "\n".join(
            f"job {job_id}:\n  " + "\n  ".join(lines)
            for job_id, lines in histories(events, twice[:2]).items()
        )
        assert not twice, f"{len(twice)} jobs started twice:\n{told}\n{system.service_errors()}"

        # The bus holds each stored event once: what the relay published again after the
        # failover was dropped by the (replicated) duplicate window, nothing acknowledged lost.
        stored = len(system.events())
        wait_until(
            lambda: new_leader() and stream_info(cluster.url).state.messages == stored,
            timeout=60,
            every=0.5,
            what="the stream to hold every stored event once",
        )

        # No service died of it: each waited out the election and reconnected.
        assert system.pids() == processes, system.service_errors()

        # And it goes on: new jobs are accepted and completed on the two nodes left.
        after = Load(system.url, 20)
        after.run()
        assert len(after.accepted) == 20, after.refused[:5]
        states = wait_until(
            lambda: finished(system, after.accepted, problem),
            timeout=120,
            every=1.0,
            what="the jobs submitted after the kill to finish",
        )
        assert states == {"succeeded": 20}, states
