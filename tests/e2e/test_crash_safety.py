"""Nothing accepted is lost: kill -9 every process in turn while 200 jobs are in flight."""

from __future__ import annotations

import asyncio
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import nats
import pytest
from taskengine_contracts import subjects

from tests.support.audit import audit, audited_when_final
from tests.support.system import ADMIN, BIN
from tests.support.waiting import wait_until

SERVICES = ("relay", "projector", "scheduler", "admission", "dispatcher", "notifier", "gateway")


def submit_all(url: str, bodies: list[dict]) -> set[int]:
    """Submits concurrently; returns the ids the API acknowledged (failures are not accepted)."""

    def submit(body: dict) -> int | None:
        headers = {"client": ADMIN[0], "api-key": ADMIN[1]}
        for _ in range(50):
            try:
                response = httpx.post(url + "/job", json=body, headers=headers, timeout=10)
            except httpx.HTTPError:
                time.sleep(0.2)  # the gateway is being restarted
                continue
            return response.json()["id"] if response.status_code == 200 else None
        return None

    with ThreadPoolExecutor(16) as pool:
        return {job_id for job_id in pool.map(submit, bodies) if job_id is not None}


def submitted_while_killing(system, bodies: list[dict], names: list[str], pause: float) -> set[int]:  # type: ignore[no-untyped-def]
    """Submits `bodies` (`submit_all`) while each process in `names` is killed with -9 in
    turn, `pause` seconds apart, and restarted by the supervisor; the ids acknowledged."""
    with ThreadPoolExecutor(1) as background:
        submitted = background.submit(submit_all, system.url, bodies)
        for name in names:
            time.sleep(pause)
            old = system.kill(name)
            system.wait_restarted(name, old)
        return submitted.result(timeout=180)


def stream_message_count(nats_url: str) -> int:
    async def count() -> int:
        nc = await nats.connect(nats_url)
        info = await nc.jetstream().stream_info(subjects.STREAM)
        await nc.close()
        return info.state.messages

    return asyncio.run(count())


@pytest.mark.parametrize(
    "replicas",
    ["", "gateway=2,admission=2,scheduler=2,dispatcher=2,notifier=2"],
    ids=["one-of-each", "replicated"],
)
def test_kill_9_of_every_service_in_turn_loses_and_duplicates_nothing(system_factory, replicas):
    system = system_factory(TASKENGINE_REPLICAS=replicas)
    with system.client() as client:
        for name, value in (("max_jobs", 10), ("retry_delay", 0), ("retry_limit", 5)):
            assert (
                client.post("/settings", json={"name": name, "setting": value}).status_code == 200
            )
    bodies = [
        {"job": {"workflow": "sleep" if n % 2 else "echo"}, "parameters": {"seconds": 0.3, "n": n}}
        for n in range(200)
    ]
    # The relay once more at the end, while events are still flowing from the store to the bus.
    accepted = submitted_while_killing(system, bodies, [*SERVICES, "relay"], pause=1.0)
    assert len(accepted) >= 190, f"only {len(accepted)} of 200 submissions were accepted"

    states = audited_when_final(system, accepted)
    assert states == {"succeeded": len(accepted)}, states
    assert audit(system.events(), accepted)

    # The bus holds each stored event exactly once: re-publishes after relay kills were dropped.
    stored = len(system.events())
    wait_until(
        lambda: stream_message_count(system.nats_url) == stored,
        timeout=30,
        what="the stream to hold every stored event once",
    )

    # Read models survived the projector kill: replay from position 0 gives the live state.
    wait_until(
        lambda: system.store.tracked("projector") >= system.store.max_position(),
        what="the projector to catch up",
    )
    replay = subprocess.run(
        [str(BIN / "taskengine"), "replay"],
        env=system.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert replay.returncode == 0 and "identical" in replay.stdout, replay.stdout + replay.stderr
