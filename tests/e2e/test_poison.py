"""Garbage published on every subject (reproduction #4, widened) while client B works: B's
job is submitted, listed, completed and its callback delivered within seconds; `/health`
counts what was set aside and `taskengine events --rejected` lists it."""

from __future__ import annotations

import json
import subprocess
import time

from tests.support.garbage import EVENT_SUBJECTS, KINDS, publish_garbage
from tests.support.receiver import CallbackReceiver
from tests.support.system import ADMIN, BIN, OTHER, System
from tests.support.waiting import wait_until

CONSUMERS = ("admission", "dispatcher", "notifier", "scheduler")


def rejected_listing(system: System) -> list[dict]:
    done = subprocess.run(
        [str(BIN / "taskengine"), "events", "--rejected"],
        env=system.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def run_job(client, receiver: CallbackReceiver, timeout: float) -> float:  # type: ignore[no-untyped-def]
    """Submits a job calling back `receiver`; seconds until it is listed, completed and its
    completion callback delivered."""
    started = time.monotonic()
    body = {"job": {"workflow": "noop"}, "parameters": {"rest_endpoints": [receiver.url]}}
    response = client.post("/job", json=body)
    assert response.status_code == 200, response.text
    job_id = response.json()["id"]
    wait_until(
        lambda: (
            job_id in {j["id"] for j in client.get("/jobs", params={"state": 0}).json()}
            or client.get(f"/jobs/{job_id}").json()["queue_state"] == "completed"
        ),
        timeout=timeout,
        what=f"job {job_id} listed",
    )
    wait_until(
        lambda: client.get(f"/jobs/{job_id}").json()["queue_state"] == "completed",
        timeout=timeout,
        what=f"job {job_id} completed",
    )
    wait_until(
        lambda: any(
            r.get("id") == job_id and r.get("event") == "complete" and r.get("step") is None
            for r in receiver.received
        ),
        timeout=timeout,
        what=f"job {job_id}'s completion callback",
    )
    return time.monotonic() - started


def test_garbage_on_every_subject_leaves_another_client_unaffected(
    engine_root, nats_url, database_url
):
    # Started here to allow a slow start on a loaded machine; B's timings below are what count.
    system = System(engine_root, nats_url, database_url).start(timeout=300)
    try:
        attack(system)
    finally:
        system.stop()


def attack(system: System) -> None:
    with (
        CallbackReceiver() as receiver,
        system.client(ADMIN) as a,
        system.client(OTHER) as b,
    ):
        before = run_job(b, receiver, timeout=120)  # every service up and consuming
        # Client A: a job whose parameters PostgreSQL's jsonb refuses (U+0000), then garbage.
        nul = a.post("/job", json={"job": {"workflow": "noop"}, "parameters": {"x": "a\x00b"}})
        sent = publish_garbage(system.nats_url)
        assert sent == len(EVENT_SUBJECTS) * KINDS
        during = [run_job(b, receiver, timeout=30) for _ in range(3)]

        def counted() -> dict | None:
            report = b.get("/health").json()
            by_consumer = report["rejected"]["by_consumer"]
            return report if all(by_consumer[name] > 0 for name in CONSUMERS) else None

        report = wait_until(counted, timeout=30, what="the set-aside messages counted")
    assert all(set(q) == {"workers", "working", "pending"} for q in report["queues"].values())
    rejected = report["rejected"]
    assert rejected["total"] == sum(rejected["by_consumer"].values())
    listing = rejected_listing(system)
    assert len(listing) == rejected["total"]
    bus = [row for row in listing if row["consumer"] in CONSUMERS]
    assert all(row["stream_seq"] and row["subject"] in EVENT_SUBJECTS for row in bus)
    assert all(row["error"] for row in listing)
    assert {row["subject"] for row in bus} >= {
        "taskengine.job.queued",
        "taskengine.job.admitted",
        "taskengine.job.submitted",
    }
    if nul.status_code == 200:  # stored: the projector set it aside instead of stalling
        assert rejected["by_consumer"]["projector"] == 1
    else:  # refused as bad input
        assert 400 <= nul.status_code < 500, nul.text
    print(f"B before the garbage: {before:.2f}s; during: {', '.join(f'{d:.2f}s' for d in during)}")
