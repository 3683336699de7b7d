"""Garbage published on every subject (reproduction #4, widened) while client B works: B's
job is submitted, listed, completed and its callback delivered within seconds; `/health`
counts what was set aside and `taskengine events --rejected` lists it."""

from __future__ import annotations

import json
import subprocess

from tests.support.bystander import client_b_job
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
        before = client_b_job(
            b, receiver, timeout=120
        ).called_back  # every service up and consuming
        # Client A: a job whose parameters PostgreSQL's jsonb refuses (U+0000), then garbage.
        nul = a.post("/job", json={"job": {"workflow": "noop"}, "parameters": {"x": "a\x00b"}})
        sent = publish_garbage(system.nats_url)
        assert sent == len(EVENT_SUBJECTS) * KINDS
        during = [client_b_job(b, receiver, timeout=30).called_back for _ in range(3)]

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
