"""The whole system on a NATS that requires credentials (deploy/nats-users.conf, as in
production): the services connect as the services' user (TASKENGINE_NATS_USER / _PASSWORD) and
a job goes through every consumer; the container probe connects the same way; the lifecycle
subscriber user follows the job's events."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Iterator

import nats
import pytest
from nats.js import api
from taskengine_contracts import subjects

from tests.support.nats_users import (
    SERVICES_USER,
    SUBSCRIBER_INBOX,
    SUBSCRIBER_USER,
    SecuredNats,
    secured_nats,
)
from tests.support.system import BIN, System
from tests.support.waiting import wait_until


@pytest.fixture(scope="module")
def server() -> Iterator[SecuredNats]:
    with secured_nats() as started:
        yield started


@pytest.fixture
def system(server, engine_root, database_url) -> Iterator[System]:
    env = {
        "TASKENGINE_NATS_URL": server.url,  # no credentials in the URL: the settings carry them
        "TASKENGINE_NATS_USER": SERVICES_USER,
        "TASKENGINE_NATS_PASSWORD": server.passwords[SERVICES_USER],
    }
    # The harness itself resets the stream with a URL that names the user.
    started = System(engine_root, server.url_of(SERVICES_USER), database_url, **env).start()
    try:
        yield started
    finally:
        started.stop()


async def lifecycle(server: SecuredNats, job_id: int) -> list[str]:
    """The job's event types, read as a lifecycle subscriber reads them."""
    nc = await nats.connect(
        server.url,
        user=SUBSCRIBER_USER,
        password=server.passwords[SUBSCRIBER_USER],
        inbox_prefix=SUBSCRIBER_INBOX,
    )
    try:
        sub = await nc.jetstream().subscribe(
            subjects.JOBS,
            stream=subjects.STREAM,
            ordered_consumer=True,
            deliver_policy=api.DeliverPolicy.ALL,
        )
        seen: list[str] = []
        while "job.succeeded" not in seen:
            event = json.loads((await sub.next_msg(timeout=10)).data)
            if event.get("job_id") == job_id:
                seen.append(event["type"])
        return seen
    finally:
        await nc.close()


def test_a_job_goes_through_every_service_connected_with_credentials(server, system):
    with system.client() as client:
        response = client.post("/job", json={"job": {"workflow": "noop"}})
        assert response.status_code == 200, response.text
        job = response.json()["id"]
        wait_until(
            lambda: client.get(f"/jobs/{job}").json().get("queue_state") == "completed",
            timeout=60,
            what="the job to complete",
        )
        wait_until(  # the list is a projection: it follows the job's own stream shortly
            lambda: job in [j["id"] for j in client.get("/jobs").json()],
            timeout=30,
            what="the job in GET /jobs",
        )

        def healthy() -> dict | None:
            report = client.get("/health").json()
            queues = report.get("queues", {})
            return report if queues and all(q["workers"] >= 1 for q in queues.values()) else None

        report = wait_until(healthy, timeout=20, what="every service's heartbeat")
    assert report["databases"] == {"postgres": "OK", "nats": "OK"}

    seen = asyncio.run(lifecycle(server, int(job)))
    assert seen[0] == "job.submitted" and seen[-1] == "job.succeeded"

    # The container health check, with the same settings: heard; with a wrong password: not.
    probe = [str(BIN / "taskengine"), "probe", "dispatcher", "--instance", "dispatcher-0"]
    done = subprocess.run(probe, env=system.env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr
    denied = {**system.env, "TASKENGINE_NATS_PASSWORD": "wrong"}
    done = subprocess.run(probe, env=denied, capture_output=True, text=True, timeout=30)
    assert done.returncode == 1, done.stdout + done.stderr
