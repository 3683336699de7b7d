"""examples/subscriber, the FastStream lifecycle subscriber, run as its README says against the
system as `make up` starts it: it receives the events of jobs submitted through the gateway,
is killed, and on restart continues from its durable consumer: nothing acknowledged comes
again, nothing published while it was down is lost."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from uuid import uuid4

import nats
import pytest
from taskengine_contracts import subjects
from taskengine_contracts.events import JobPaused, encode, topic_of
from taskengine_runtime import ensure_stream

from tests.support.nats_users import SERVICES_USER, SUBSCRIBER_USER, secured_nats
from tests.support.system import running_system
from tests.support.waiting import wait_until

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "subscriber" / "subscriber.py"
NAME = "example-audit"


@pytest.fixture(scope="module")
def system(postgres_url):
    with running_system(postgres_url, "subscriber-example") as system:
        yield system


class Example:
    """The example app as a process; its stdout (one `event ...` line per event) in a file."""

    def __init__(self, nats_url: str, output: Path, **env: str):
        self.output = output
        env = {**os.environ, "TASKENGINE_NATS_URL": nats_url, "SUBSCRIBER_NAME": NAME, **env}
        with output.open("a") as out:
            self.process = subprocess.Popen(
                [sys.executable, str(EXAMPLE)], stdout=out, stderr=subprocess.STDOUT, env=env
            )

    def events(self) -> list[tuple[int, str, int]]:
        """(position, type, job) of each event it printed, in order."""
        lines = [line.split() for line in self.output.read_text().splitlines()]
        return [(int(w[1]), w[2], int(w[4])) for w in lines if w[:1] == ["event"]]

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)  # no goodbye, as in a crash
        self.process.wait(timeout=30)


def job_events(system) -> list[tuple[int, str, int]]:  # type: ignore[no-untyped-def]
    """What the store holds of jobs' lifecycle: the events the example is to print."""
    found, after = [], 0
    while batch := system.store.events_after(after, 5000):
        for item in batch:
            topic = topic_of(item.event)
            if topic.startswith("job."):
                found.append((item.position, topic, item.event.job_id))  # type: ignore[attr-defined]
        after = batch[-1].position
    return found


def acknowledged_all(nats_url: str, **login: str) -> bool:
    async def check() -> bool:
        nc = await nats.connect(nats_url, **login)
        try:
            info = await nc.jetstream().consumer_info(subjects.STREAM, NAME)
        finally:
            await nc.close()
        return info.num_ack_pending == 0 and info.ack_floor.stream_seq == info.delivered.stream_seq

    return asyncio.run(check())


def submit(system) -> int:  # type: ignore[no-untyped-def]
    with system.client() as client:
        answer = client.post("/job", json={"client": "tester", "job": {"workflow": "echo"}})
    assert answer.status_code == 200, answer.text
    return int(answer.json()["id"])


def finished(example: Example, job_id: int) -> bool:
    return (job_id, "job.succeeded") in {(job, kind) for _, kind, job in example.events()}


def test_the_example_receives_a_jobs_events_and_resumes_after_being_killed(system, tmp_path):
    output = tmp_path / "example.out"
    example = Example(system.nats_url, output)
    try:
        first = submit(system)
        wait_until(lambda: finished(example, first), timeout=90, what="the first job's events")
        wait_until(lambda: acknowledged_all(system.nats_url), what="every event acknowledged")
    finally:
        example.kill()

    second = submit(system)  # while the subscriber is down
    with system.client() as client:
        wait_until(lambda: client.get(f"/jobs/{second}").json()["queue_state"] == "completed")
    example = Example(system.nats_url, output)
    try:
        wait_until(lambda: finished(example, second), timeout=90, what="the second job's events")
    finally:
        example.kill()

    printed = example.events()
    assert len({position for position, _, _ in printed}) == len(printed), "an event came twice"
    # Every one, none lost, in store order (the first life acknowledged all it printed).
    assert printed == job_events(system)[: len(printed)]
    kinds = [kind for _, kind, job in printed if job == second]
    assert kinds[0] == "job.submitted" and kinds[-1] == "job.succeeded"


def test_the_example_runs_as_the_read_only_subscriber_user(tmp_path):
    """With deploy/nats-users.conf: as `taskengine-subscriber` it creates its durable consumer,
    pulls, acknowledges and resumes, within that user's permissions."""
    with secured_nats() as server:

        async def publish(*numbers: int) -> None:
            nc = await nats.connect(server.url, **services_login(server))
            await ensure_stream(nc.jetstream())
            for n in numbers:
                headers = {subjects.POSITION_HEADER: str(n), "Nats-Msg-Id": f"e-{n}"}
                await nc.jetstream().publish("taskengine.job.paused", paused(n), headers=headers)
            await nc.close()

        login = {
            "TASKENGINE_NATS_USER": SUBSCRIBER_USER,
            "TASKENGINE_NATS_PASSWORD": server.passwords[SUBSCRIBER_USER],
        }
        output = tmp_path / "secured.out"
        first = range(1, 201)  # two pulls' worth: in order within and across batches
        asyncio.run(publish(*first))
        example = Example(server.url, output, **login)
        try:
            wait_until(lambda: len(example.events()) == 200, timeout=60, what="the first events")
            wait_until(
                lambda: acknowledged_all(server.url, **services_login(server)),
                what="every event acknowledged",
            )
        finally:
            example.kill()
        asyncio.run(publish(201))
        example = Example(server.url, output, **login)
        try:
            wait_until(lambda: len(example.events()) >= 201, timeout=60, what="the last event")
        finally:
            example.kill()
        assert [position for position, _, _ in example.events()] == list(range(1, 202))
        assert "permissions violation" not in output.read_text()


def services_login(server) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {"user": SERVICES_USER, "password": server.passwords[SERVICES_USER]}


def paused(n: int) -> bytes:
    return encode(
        JobPaused(id=uuid4(), version=3, at=datetime.now(UTC), job_id=n, client="c", by="c")
    )
