"""`taskengine up` heals its embedded servers: kill -9 of nats-server, then of PostgreSQL.

Under a steady load of submissions by client A, each server is killed; the supervisor starts
it again on the same port and data dir. Client B's next job completes within seconds of each
kill, and every job acknowledged before, during and after finishes once, with no lifecycle
event doubled.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
from taskengine_embedded import free_port
from taskengine_store.store import EventStore

from tests.e2e.test_supervisor import processes_mentioning
from tests.support.audit import audit
from tests.support.receiver import CallbackReceiver
from tests.support.servers import scratch_dir
from tests.support.system import BIN
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(420)

A = ("heal-a", "heal-a-key-0123456789abcdef")
B = ("heal-b", "heal-b-key-0123456789abcdef")
# Generous: on a machine shared by many test runs, starting a service process (admission and
# the scheduler exit when their leader lock's connection dies) took 20-40 s.
OUTAGE_LIMIT = 120.0


def headers(client: tuple[str, str]) -> dict[str, str]:
    return {"client": client[0], "api-key": client[1]}


class Load:
    """Client A submitting jobs back to back; remembers every id the API acknowledged."""

    def __init__(self, url: str):
        self.url, self.accepted, self.refused = url, set[int](), 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, headers=headers(A), timeout=10) as http:
            n = 0
            while not self._stop.is_set():
                n += 1
                workflow = "echo" if n % 3 else "noop"
                body = {"job": {"workflow": workflow}, "parameters": {"n": n}}
                try:
                    response = http.post("/job", json=body)
                except httpx.HTTPError:
                    self.refused += 1
                    time.sleep(0.1)
                    continue
                if response.status_code == 200:
                    self.accepted.add(response.json()["id"])
                else:
                    self.refused += 1
                time.sleep(0.02)


def job_done(http: httpx.Client, job_id: int) -> bool:
    try:
        response = http.get(f"/jobs/{job_id}", timeout=5)
    except httpx.HTTPError:
        return False
    return response.status_code == 200 and response.json()["queue_state"] == "completed"


def b_job_completes(url: str, receiver: CallbackReceiver, since: float) -> float:
    """Seconds from `since` until a job B submits (retrying while refused) has completed and
    its completion callback reached `receiver`."""
    body = {"job": {"workflow": "echo"}, "parameters": {"rest_endpoints": [receiver.url]}}
    with httpx.Client(base_url=url, headers=headers(B), timeout=5) as http:

        def submitted() -> int | None:
            try:
                response = http.post("/job", json=body)
            except httpx.HTTPError:
                return None
            return response.json()["id"] if response.status_code == 200 else None

        job_id = wait_until(submitted, timeout=OUTAGE_LIMIT, every=0.2, what="B's job accepted")
        wait_until(
            lambda: job_done(http, job_id), timeout=OUTAGE_LIMIT, every=0.1, what="B's job done"
        )
        wait_until(
            lambda: any(
                r.get("id") == job_id and r.get("event") == "complete" and r.get("step") is None
                for r in receiver.received
            ),
            timeout=OUTAGE_LIMIT,
            every=0.1,
            what="B's completion callback",
        )
    return time.monotonic() - since


def nats_pid(data_dir: Path) -> int:
    [pid] = [
        p
        for p in processes_mentioning(str(data_dir / "nats"))
        if "nats-server" in Path(f"/proc/{p}/cmdline").read_text()
    ]
    return pid


def postmaster_pid(data_dir: Path) -> int:
    return int((data_dir / "postgres" / "postmaster.pid").read_text().split("\n", 1)[0])


def all_events(database_url: str) -> list:
    store = EventStore(database_url, pool_size=1)
    try:
        items, position = [], 0
        while batch := store.events_after(position, 5000):
            items.extend(batch)
            position = batch[-1].position
        return [item.event for item in items]
    finally:
        store.close()


def test_kill_9_of_the_embedded_servers_is_healed_and_loses_nothing():
    root = scratch_dir("te-heal-")
    data_dir = root / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKENGINE_")}
    env |= {
        "TASKENGINE_DATA_DIR": str(data_dir),
        "TASKENGINE_PORT": str(free_port()),
        "TASKENGINE_BOOTSTRAP_CLIENT": f"{A[0]}:{A[1]}:admin,{B[0]}:{B[1]}",
        "TASKENGINE_CALLBACK_ALLOWLIST": "127.0.0.0/8",  # B's receiver is on loopback
    }
    url = f"http://127.0.0.1:{env['TASKENGINE_PORT']}"
    log = root / "up.log"
    supervisor = subprocess.Popen(
        [str(BIN / "taskengine"), "up"],
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_until(lambda: "Ctrl-C stops everything" in log.read_text(), timeout=180, what="up")
        password = (data_dir / "postgres" / "taskengine.password").read_text().strip()
        outages = {}
        with CallbackReceiver() as receiver, Load(url) as load:
            wait_until(lambda: len(load.accepted) >= 20, what="A's load to flow")
            outages["none (baseline)"] = b_job_completes(url, receiver, time.monotonic())
            for server, pid_of in (("nats-server", nats_pid), ("postgres", postmaster_pid)):
                killed = pid_of(data_dir)
                kill_time = time.monotonic()
                os.kill(killed, signal.SIGKILL)
                outages[server] = b_job_completes(url, receiver, kill_time)
                print(f"\nB's next job completed {outages[server]:.1f}s after kill -9 of {server}")
                wait_until(lambda s=server: f"{s} is back on port" in log.read_text(), timeout=60)
                assert pid_of(data_dir) != killed
                before = len(load.accepted)
                wait_until(lambda b=before: len(load.accepted) >= b + 20, what="A's load again")
        print(f"\nB's outage: {outages}; A: {len(load.accepted)} accepted, {load.refused} refused")
        assert all(seconds < OUTAGE_LIMIT for seconds in outages.values()), outages

        endpoints = json.loads((data_dir / "run" / "endpoints.json").read_text())
        problem: list[str] = []

        def all_final() -> dict | None:
            try:
                return audit(all_events(endpoints["database_url"]), load.accepted)
            except AssertionError as error:
                problem[:] = [str(error)]
                return None

        try:
            states = wait_until(all_final, timeout=120, every=1.0, what="every job to finish")
        except AssertionError:
            raise AssertionError(f"{problem}\n{log.read_text()[-3000:]}") from None
        assert states == {"succeeded": len(load.accepted)}, states
        printed = log.read_text()
        assert "nats-server exited (killed by signal 9)" in printed
        assert "postgres exited (killed by signal 9)" in printed
        assert password not in printed and password[-4:] in printed  # the banner masks it
    finally:
        supervisor.send_signal(signal.SIGTERM)
        supervisor.wait(timeout=60)
        shutil.rmtree(root, ignore_errors=True)
