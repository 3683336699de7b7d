"""Issue 12, reproductions 1 and 2, against the system as `make up` starts it: while client A
sends a schedule that never fires or jobs with 300 kB parameters, client B's jobs are listed,
complete and are called back within seconds, and A gets its answer (a 422 for the schedule) quickly.

Each test prints B's latencies (submit -> listed in `GET /jobs`, -> completed there, -> its
completion callback delivered).
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from uuid import uuid4

import httpx
import pytest

from tests.support.bystander import Timings, client_b_job
from tests.support.receiver import CallbackReceiver
from tests.support.system import ADMIN, OTHER, running_system
from tests.support.waiting import wait_until

NEVER = "DTSTART:20260101T000000Z\nRRULE:FREQ=SECONDLY;BYHOUR=1;BYMONTH=4;BYMONTHDAY=31"
"""April has no 31st: the gateway's loop searched for a first fire for over a minute."""
B_ROUNDS = 4
WITHIN = 20.0
"""Seconds B's job may take to be listed and to complete while A attacks (normally < 2)."""


@pytest.fixture(scope="module")
def system(postgres_url):
    with running_system(postgres_url, "hostile") as system:
        yield system


@pytest.fixture(scope="module")
def receiver():
    with CallbackReceiver() as receiver:
        yield receiver


class Attack:
    """Client A sending one request after another on a thread until stopped."""

    def __init__(self, send: Callable[[], httpx.Response]):
        self.send = send
        self.answers: list[tuple[httpx.Response, float]] = []
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                response = self.send()
            except BaseException as error:  # noqa: BLE001 - reported by the test
                self.errors.append(error)
                return
            self.answers.append((response, time.monotonic() - started))

    def __enter__(self) -> Attack:
        self._thread.start()
        wait_until(lambda: self.answers or self.errors, timeout=60, what="A's first answer")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


def b_round(client: httpx.Client, receiver: CallbackReceiver) -> Timings:
    """B's job: seconds until it is listed in `GET /jobs`, completed, and called back."""
    return client_b_job(client, receiver, timeout=WITHIN)


def report(name: str, alone: list[Timings], rounds: list[Timings], attack: Attack) -> None:
    def figures(measured: list[Timings]) -> str:
        listed = [t.listed for t in measured]
        done = [t.completed for t in measured]
        called = [t.called_back for t in measured]
        return (
            f"listed median {statistics.median(listed):.2f}s max {max(listed):.2f}s,"
            f" completed median {statistics.median(done):.2f}s max {max(done):.2f}s,"
            f" called back median {statistics.median(called):.2f}s max {max(called):.2f}s"
        )

    a_times = [seconds for _, seconds in attack.answers]
    print(  # the figures of the closing note
        f"\n[{name}] B alone: {figures(alone)}; B under attack: {figures(rounds)};"
        f" A: {len(a_times)} requests, answered in median {statistics.median(a_times):.2f}s"
        f" max {max(a_times):.2f}s"
    )


@pytest.mark.timeout(240)
def test_a_never_firing_rrule_is_refused_quickly_while_b_jobs_flow(system, receiver):
    headers = {"Authorization": f"Bearer {OTHER[1]}"}
    body = {
        "title": "never",
        "description": "",
        "schedule_kind": "rrule",
        "schedule_expr": NEVER,
        "payload": {"workflow": "noop"},
        "created_by": str(uuid4()),
    }
    with system.client(ADMIN) as b:
        alone = [b_round(b, receiver) for _ in range(2)]
    with (
        httpx.Client(base_url=system.url, headers=headers, timeout=120) as a,
        system.client(ADMIN) as b,
        Attack(lambda: a.post("/tasks", json=body)) as attack,
    ):
        rounds = [b_round(b, receiver) for _ in range(B_ROUNDS)]
        started = time.monotonic()
        assert b.get("/").status_code == 200  # the loop answers meanwhile
        assert time.monotonic() - started < 5
        # B's own schedule is accepted and listed meanwhile.
        bearer = {"Authorization": f"Bearer {ADMIN[1]}"}
        task = b.post("/tasks", json={**body, "schedule_expr": "FREQ=HOURLY"}, headers=bearer)
        assert task.status_code == 201, task.text
        wait_until(
            lambda: [
                t for t in b.get("/tasks", headers=bearer).json() if t["id"] == task.json()["id"]
            ],
            timeout=WITHIN,
            what="B's task in GET /tasks",
        )
    assert not attack.errors, attack.errors
    report("never-firing rrule", alone, rounds, attack)
    assert len(attack.answers) >= 2
    for response, seconds in attack.answers:
        assert response.status_code == 422, response.text
        [detail] = response.json()["detail"]
        assert detail["loc"] == ["body", "schedule_expr"]
        assert "no fire found within" in detail["msg"] and "FREQ=YEARLY" in detail["msg"]
        assert seconds < WITHIN
    with httpx.Client(base_url=system.url, headers=headers, timeout=30) as a:
        assert a.get("/tasks").json() == []  # nothing of A's was stored


@pytest.mark.timeout(300)
def test_jobs_with_300_kb_parameters_leave_b_listed_and_completed_within_seconds(system, receiver):
    values = iter(["a" * 300_000, "token=" + "a" * 300_000] * 1000)  # the masking's two paths

    def big_job() -> httpx.Response:
        body = {"job": {"workflow": "noop"}, "parameters": {"x": next(values)}}
        return a.post("/job", json=body)

    with system.client(ADMIN) as b:
        alone = [b_round(b, receiver) for _ in range(2)]
    with (
        system.client(OTHER) as a,
        system.client(ADMIN) as b,
        Attack(big_job) as attack,
    ):
        rounds = [b_round(b, receiver) for _ in range(B_ROUNDS)]
        wait_until(lambda: len(attack.answers) >= 4, timeout=60, what="A's fourth big job")
    assert not attack.errors, attack.errors
    report("300 kB parameters", alone, rounds, attack)
    accepted = [r.json()["id"] for r, _ in attack.answers if r.status_code < 300]
    assert len(accepted) == len(attack.answers) >= 4
    # A's own jobs are listed too (the projector did not stall on them), and complete.
    wait_until(
        lambda: (
            {r["id"] for r in a_jobs(system) if r["queue_state"] == "completed"} >= set(accepted)
        ),
        timeout=60,
        what="A's big jobs listed and completed",
    )


def a_jobs(system) -> list[dict]:  # type: ignore[no-untyped-def]
    with system.client(OTHER) as a:
        return a.get("/jobs", params={"limit": 500}).json()


def test_a_client_sending_more_bytes_than_its_budget_waits_then_gets_429_alone(system):
    """16 bodies of 400 kB at once (6.4 MB) from A, against 2 MB/s and a 2 MB burst: the first
    go through (some waiting their turn), the rest are refused whole with 429 and Retry-After
    in the dialect's shape; B is answered at once meanwhile."""
    size = 400_000
    before = {r["id"] for r in a_jobs(system)}
    body = {"job": {"workflow": "noop"}, "parameters": {"x": "a" * size}}
    with ThreadPoolExecutor(16) as pool:
        flood = pool.map(
            post_as(system, "/job", body, {"client": OTHER[0], "api-key": OTHER[1]}), range(16)
        )
        with system.client(ADMIN) as b:
            started = time.monotonic()
            assert b.post("/job", json={"job": {"workflow": "noop"}}).status_code == 200
            b_took = time.monotonic() - started
        answers = list(flood)
    refused = [r for r in answers if r.status_code == 429]
    accepted = [r.json()["id"] for r in answers if r.status_code == 200]
    assert len(refused) + len(accepted) == 16 and refused and len(accepted) >= 5
    for response in refused:
        assert int(response.headers["retry-after"]) >= 1
        assert set(response.json()) == {"error"}
        assert response.json()["error"].startswith("too much data: at most 2097152 request")
    assert b_took < 5.0, b_took  # B's budget is its own (normally milliseconds)
    wait_until(
        lambda: {r["id"] for r in a_jobs(system)} - before == set(accepted),
        timeout=60,
        what="exactly A's accepted jobs listed",
    )
    time.sleep(3)  # A's bucket refills
    # The scheduled-tasks dialect words it in its own shape.
    task = {"title": "x" * size}
    bearer = {"Authorization": f"Bearer {OTHER[1]}"}
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(post_as(system, "/tasks", task, bearer), range(16)))
    limited = [r for r in answers if r.status_code == 429]
    assert limited and all(set(r.json()) == {"detail"} for r in limited)
    assert limited[0].json()["detail"].startswith("too much data")


def post_as(  # type: ignore[no-untyped-def]
    system, path: str, body: dict, headers: dict[str, str]
) -> Callable[[int], httpx.Response]:
    def post(_: int) -> httpx.Response:
        return httpx.post(system.url + path, json=body, headers=headers, timeout=30)

    return post
