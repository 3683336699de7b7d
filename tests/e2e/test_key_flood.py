"""A flood of wrong keys cannot starve authentication (issue 12, reproduction 5).

24 threads send wrong keys for client B's name while B keeps listing its jobs: B's requests
all succeed and stay fast, B's job is listed, completed and called back, the attacker gets 429
with `Retry-After` in each dialect's error shape, a client flooded from other addresses still
gets in from its own, and a key stored as PBKDF2 (as an older store has it) logs in once and
is then stored as HMAC.

The system trusts 127.0.0.1 as a proxy, so a test speaks from any address with
`X-Forwarded-For`; requests without it come from 127.0.0.1 itself.
"""

from __future__ import annotations

import base64
import json
import statistics
import subprocess
import sys
import time

import httpx
import pytest
from taskengine_cli.clients import register
from taskengine_contracts.events import ClientRegistered, ClientRevoked
from taskengine_core.clients import hash_key, key_secret, new_key
from taskengine_core.ids import client_stream

from tests.support.bystander import client_b_job
from tests.support.receiver import CallbackReceiver
from tests.support.system import BIN, OTHER, WEBHOOK_KEY, System, running_system
from tests.support.waiting import wait_until

ATTACKERS = 24
BURST = 5
SECRET = key_secret(WEBHOOK_KEY)


@pytest.fixture(scope="module")
def system(postgres_url):
    env = {
        "TASKENGINE_TRUSTED_PROXIES": "127.0.0.1",
        "TASKENGINE_AUTH_FAILURE_BURST": str(BURST),
        # A token every 10 s: a bucket emptied by a test stays empty while it looks.
        "TASKENGINE_AUTH_FAILURES_PER_MINUTE": "6",
    }
    with running_system(postgres_url, "key-flood", env=env) as system:
        yield system


def from_address(address: str, headers: dict[str, str]) -> dict[str, str]:
    return {**headers, "X-Forwarded-For": address}


def timed_gets(http: httpx.Client, count: int, pause: float = 0.0) -> list[float]:
    """Seconds each `GET /jobs` took; every one must succeed."""
    took = []
    for _ in range(count):
        started = time.perf_counter()
        response = http.get("/jobs")
        took.append(time.perf_counter() - started)
        assert response.status_code == 200, response.text
        time.sleep(pause)
    return took


FLOOD = """
import json, secrets, sys, threading, time, httpx
url, name, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
stop, answers = threading.Event(), []
def attack():
    with httpx.Client(timeout=30) as http:
        while not stop.is_set():
            key = secrets.token_hex(24)
            response = http.get(url, headers={"client": name, "api-key": key})
            answers.append((response.status_code, response.headers.get("retry-after")))
workers = [threading.Thread(target=attack) for _ in range(threads)]
for worker in workers:
    worker.start()
while len(answers) < 50:
    time.sleep(0.05)
print("flooding", flush=True)
sys.stdin.read()
stop.set()
for worker in workers:
    worker.join()
print(json.dumps(answers), flush=True)
"""


class Flood:
    """`ATTACKERS` threads in a process of their own (so they do not hold this process's GIL
    while B is timed), each sending a new wrong key for `name` until the block ends."""

    def __init__(self, system: System, name: str):
        self.args = [sys.executable, "-c", FLOOD, system.url + "/jobs", name, str(ATTACKERS)]
        self.answers: list[tuple[int, str | None]] = []

    def __enter__(self) -> Flood:
        self.process = subprocess.Popen(
            self.args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.process.stdout is not None
        assert self.process.stdout.readline().strip() == "flooding"
        return self

    def __exit__(self, *exc: object) -> None:
        out, _ = self.process.communicate(timeout=60)
        self.answers = [tuple(answer) for answer in json.loads(out)]


def test_a_key_flood_for_b_from_its_own_address_leaves_b_answered_quickly(system):
    b = system.client(OTHER)
    timed_gets(b, 5)  # B has logged in (and warmed its connection)
    before = timed_gets(b, 40)
    with CallbackReceiver() as receiver, Flood(system, OTHER[0]) as flood:
        during = timed_gets(b, 60, pause=0.02)
        job = client_b_job(b, receiver, timeout=30)  # and B's work flows meanwhile
    flooded = len(flood.answers)
    statuses = {status for status, _ in flood.answers}
    print(
        f"\nB's GET /jobs median: {statistics.median(before) * 1000:.1f} ms before,"
        f" {statistics.median(during) * 1000:.1f} ms during {flooded} wrong keys from"
        f" {ATTACKERS} threads (p90 {statistics.quantiles(during, n=10)[-1] * 1000:.1f} ms);"
        f" B's job listed {job.listed:.2f}s, completed {job.completed:.2f}s, called back"
        f" {job.called_back:.2f}s after its submit"
    )
    # Before, each wrong key cost a PBKDF2 on the store's threads: B's median was 240-420 ms.
    assert statistics.median(during) < 0.2
    assert statuses <= {401, 429} and 429 in statuses
    assert all(int(after) >= 1 for status, after in flood.answers if status == 429 and after)
    assert all(after for status, after in flood.answers if status == 429)


def test_an_address_over_its_limit_gets_429_with_retry_after_in_every_dialects_shape(system):
    attacker = "198.51.100.66"
    wrong = new_key()
    for _ in range(BURST + 2):
        httpx.get(
            system.url + "/jobs",
            headers=from_address(attacker, {"client": OTHER[0], "api-key": wrong}),
            timeout=30,
        )
    basic = base64.b64encode(f"{OTHER[0]}:{wrong}".encode()).decode()
    calls = {
        "/jobs": {"client": OTHER[0], "api-key": wrong},
        "/tasks": {"Authorization": f"Bearer {wrong}"},
        "/api/worktasks": {"Authorization": f"Bearer {wrong}"},
        "/apis/v1/tasks": {"Authorization": f"Basic {basic}"},
    }
    bodies = {}
    for path, headers in calls.items():
        response = httpx.get(system.url + path, headers=from_address(attacker, headers))
        assert response.status_code == 429, (path, response.text)
        assert int(response.headers["retry-after"]) >= 1
        bodies[path] = response.json()
    limited = "too many failed authentication attempts: retry in "
    assert set(bodies["/jobs"]) == {"error"} and bodies["/jobs"]["error"].startswith(limited)
    assert set(bodies["/tasks"]) == {"detail"} and bodies["/tasks"]["detail"].startswith(limited)
    worktasks = bodies["/api/worktasks"]
    assert set(worktasks) == {"error"} and worktasks["error"].startswith(limited)
    drove = bodies["/apis/v1/tasks"]
    assert (drove["status"], drove["data"]) == ("FAILED", {})
    assert drove["message"].startswith(limited)
    # Any name tried from that address is refused before any check while it waits...
    other_name = from_address(attacker, {"client": "someone-else", "api-key": new_key()})
    assert httpx.get(system.url + "/jobs", headers=other_name).status_code == 429
    # ...and another address is not affected.
    elsewhere = from_address("203.0.113.99", {"client": "someone-else", "api-key": wrong})
    assert httpx.get(system.url + "/jobs", headers=elsewhere).status_code == 401


def test_a_client_whose_name_is_flooded_from_elsewhere_gets_in_from_its_own_address(system):
    name, key = "carol", new_key()
    register(system.store, name, key, secret=SECRET)
    # Many addresses, a few wrong keys each: the name runs out, no address does.
    answers = []
    for n in range(1, BURST + 3):
        headers = from_address(f"198.51.100.{n}", {"client": name, "api-key": new_key()})
        answers.append(httpx.get(system.url + "/jobs", headers=headers).status_code)
    assert set(answers) == {401, 429} and answers[-1] == 429
    mine = from_address("203.0.113.7", {"client": name, "api-key": key})
    response = httpx.get(system.url + "/jobs", headers=mine)
    assert response.status_code == 200, response.text


def test_a_pbkdf2_key_logs_in_is_rehashed_to_hmac_and_revoking_still_works(system):
    name, key = "legacy", new_key()
    register(system.store, name, key)  # no secret: what an older store holds
    stream = client_stream(name)
    [old] = system.store.stream(stream)
    assert isinstance(old, ClientRegistered) and old.key_hash.startswith("pbkdf2_sha256$")
    mine = from_address("203.0.113.8", {"client": name, "api-key": key})
    assert httpx.get(system.url + "/jobs", headers=mine, timeout=30).status_code == 200
    events = system.store.stream(stream)
    assert [type(e) for e in events] == [ClientRegistered, ClientRegistered]
    assert events[-1].key_hash == hash_key(key, SECRET)
    assert (events[-1].key_lookup, events[-1].key_hint) == (old.key_lookup, old.key_hint)
    # The projector's row carries the new hash; the key keeps working.
    wait_until(
        lambda: (
            system.store.query("SELECT key_hash FROM rm_clients WHERE name = %s", (name,))
            == [{"key_hash": hash_key(key, SECRET)}]
        ),
        timeout=15,
        what="rm_clients to hold the HMAC hash",
    )
    assert httpx.get(system.url + "/jobs", headers=mine, timeout=30).status_code == 200
    revoked = subprocess.run(
        [str(BIN / "taskengine"), "clients", "revoke", name],
        env=system.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert revoked.returncode == 0, revoked.stderr
    assert isinstance(system.store.stream(stream)[-1], ClientRevoked)
    wait_until(
        lambda: httpx.get(system.url + "/jobs", headers=mine, timeout=30).status_code == 401,
        timeout=15,
        what="the revoked key to be refused",
    )
