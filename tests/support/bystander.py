"""Client B, the bystander of the hostile-input tests: what B must still get while client A
attacks is a job accepted, listed in `GET /jobs`, completed and its callback delivered."""

from __future__ import annotations

import time
from dataclasses import dataclass

import httpx

from tests.support.receiver import CallbackReceiver
from tests.support.waiting import wait_until


@dataclass(frozen=True)
class Timings:
    """Seconds from B's submit until its job was listed, completed and called back."""

    listed: float
    completed: float
    called_back: float


def client_b_job(
    client: httpx.Client, receiver: CallbackReceiver, timeout: float, workflow: str = "noop"
) -> Timings:
    """B submits a job calling back `receiver` (Task Engine dialect) and waits, up to
    `timeout` seconds for each step, until it is listed, completed and its end called back."""
    started = time.monotonic()
    body = {"job": {"workflow": workflow}, "parameters": {"rest_endpoints": [receiver.url]}}
    response = client.post("/job", json=body)
    assert response.status_code == 200, response.text
    job_id = response.json()["id"]

    def listed() -> dict | None:
        return next((row for row in client.get("/jobs").json() if row["id"] == job_id), None)

    wait_until(listed, timeout=timeout, every=0.05, what=f"B's job {job_id} in GET /jobs")
    at_listed = time.monotonic() - started
    wait_until(
        lambda: (row := listed()) and row["queue_state"] == "completed",
        timeout=timeout,
        every=0.05,
        what=f"B's job {job_id} completed in GET /jobs",
    )
    at_completed = time.monotonic() - started
    wait_until(
        lambda: any(
            r.get("id") == job_id and r.get("event") == "complete" and r.get("step") is None
            for r in receiver.received
        ),
        timeout=timeout,
        every=0.05,
        what=f"B's job {job_id}'s completion callback",
    )
    return Timings(at_listed, at_completed, time.monotonic() - started)
