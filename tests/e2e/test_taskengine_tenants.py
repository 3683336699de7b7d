"""Tenant isolation on every endpoint of the Task Engine API (seed 002, issue 3).

Two clients of one system started as `make up` starts it: `tester` (admin) and `other`. Each
owns a job in every state (0-6). Neither may see, list, log, change or rerun the other's jobs
(a 400 "not found" exactly like a missing job), every endpoint but `/` needs credentials, and
only an admin may change settings or switch schedules.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

import httpx
import pytest
from taskengine_contracts.events import JobSubmitted
from taskengine_core.ids import SCHEDULES_STREAM, SETTINGS_STREAM, job_stream

from tests.support.system import ADMIN, OTHER, System, running_system
from tests.support.waiting import wait_until

CREDENTIALS = {ADMIN[0]: ADMIN, OTHER[0]: OTHER}
BOTH_WAYS = pytest.mark.parametrize(
    ("owner", "intruder"), [(ADMIN[0], OTHER[0]), (OTHER[0], ADMIN[0])]
)
# The kind of each fixture job and the `queue_state` it holds for the whole module.
KINDS = {
    "done": "completed",
    "timed_out": "completed",
    "pending": "pending",
    "running": "started",
    "queued": "queued",
    "paused": "paused",
    "scheduled": "scheduled",
    "broken": "broken",
}
LATER = "2099-01-01T00:00:00.000"
MISSING_JOB = 987654321012


def secret(name: str, kind: str = "") -> str:
    """The content id inside a job's parameters: must never reach another tenant."""
    return f"{name}-secret-{kind}"


def style(kind: str, who: tuple[str, str]) -> dict[str, str]:
    """The headers of one of the gateway's credential styles."""
    name, key = who
    basic = base64.b64encode(f"{name}:{key}".encode()).decode()
    return {
        "client+api-key": {"client": name, "api-key": key},
        "client+x-api-key": {"client": name, "x-api-key": key},
        "bearer": {"Authorization": f"Bearer {key}"},
        "basic": {"Authorization": f"Basic {basic}"},
    }[kind]


STYLES = ["client+api-key", "client+x-api-key", "bearer", "basic"]


@dataclass
class World:
    system: System
    http: dict[str, httpx.Client]
    ids: dict[str, dict[str, int]]

    def call(self, method, path, headers, body=None, params=None):  # type: ignore[no-untyped-def]
        url = self.system.url + path
        return httpx.request(method, url, headers=headers, json=body, params=params, timeout=30)

    def listed(self, name: str, **params) -> list[dict]:  # type: ignore[no-untyped-def]
        response = self.http[name].get("/jobs", params={"limit": 1000, **params})
        assert response.status_code == 200, response.text
        return response.json()

    def footprint(self, job_ids: list[int]) -> dict:
        """What a change would leave in the event store: per-job events, new jobs, settings."""
        store = self.system.store
        events = self.system.events()
        return {
            "submitted": sum(isinstance(e, JobSubmitted) for e in events),
            "jobs": {j: len(store.stream(job_stream(j))) for j in job_ids},
            "settings": len(store.stream(SETTINGS_STREAM)),
            "schedules": len(store.stream(SCHEDULES_STREAM)),
        }

    def owner_view(self, name: str, job_id: int) -> tuple[dict, int]:
        """The owner's view of its job (minus the shared queue position) and its log size."""
        view = self.http[name].get(f"/jobs/{job_id}").json()
        view.pop("position"), view.pop("top_of_queue")
        return view, len(self.http[name].get(f"/logs/{job_id}").json())


def submit(http: httpx.Client, workflow: str, kind: str, **body) -> int:  # type: ignore[no-untyped-def]
    name = http.headers["client"]
    parameters = {"content_id": secret(name, kind), **body.pop("parameters", {})}
    response = http.post(
        "/job", json={"job": {"workflow": workflow}, "parameters": parameters, **body}
    )
    assert response.status_code == 200, response.text
    return response.json()["id"]


def in_states(world: World, name: str, expected: dict[int, str]) -> bool:
    rows = {row["id"]: row["queue_state"] for row in world.listed(name)}
    return all(rows.get(job) == state for job, state in expected.items())


@pytest.fixture(scope="module")
def world(postgres_url):
    """Both clients own a job in every state; the two sleeps hold both slots (max_jobs 2)."""
    # Every refusal here is a failed key check from one address: the failure limit (tested in
    # test_key_flood) would answer 429 after the 20th, so it is raised out of the way.
    no_limit = {"TASKENGINE_AUTH_FAILURE_BURST": "100000"}
    with running_system(postgres_url, "tenants", env=no_limit) as system:
        http = {name: system.client(who) for name, who in CREDENTIALS.items()}
        try:
            admin = http[ADMIN[0]]
            # A failed attempt waits an hour for its retry: a stable `pending` (state 3) job.
            assert admin.post("/settings", json={"name": "retry_delay", "setting": 3600}).is_success
            ids: dict[str, dict[str, int]] = {name: {} for name in http}
            for name, client in http.items():
                ids[name]["done"] = submit(client, "echo", "done")
                ids[name]["timed_out"] = submit(
                    client, "sleep", "timed_out", parameters={"seconds": 30, "timeout": 0.2}
                )
                ids[name]["pending"] = submit(client, "fail", "pending")
            world = World(system, http, ids)
            for name in http:
                expected = {ids[name][k]: KINDS[k] for k in ("done", "timed_out", "pending")}
                wait_until(lambda n=name, e=expected: in_states(world, n, e), what=f"{name} ended")
            for name, client in http.items():
                ids[name]["running"] = submit(
                    client, "sleep", "running", parameters={"seconds": 300}
                )
            for name, client in http.items():
                running = {ids[name]["running"]: "started"}
                wait_until(lambda n=name, e=running: in_states(world, n, e), what="a started job")
                ids[name]["queued"] = submit(client, "noop", "queued")
                ids[name]["paused"] = submit(client, "noop", "paused")
                ids[name]["scheduled"] = submit(client, "noop", "scheduled", run_at=LATER)
                ids[name]["broken"] = submit(client, "noop", "broken", run_at=LATER)
                for kind, state in (("paused", "paused"), ("broken", "broken")):
                    response = client.patch(f"/jobs/{ids[name][kind]}", json={"queue_state": state})
                    assert response.status_code == 200, response.text
            for name in http:
                expected = {job: KINDS[kind] for kind, job in ids[name].items()}
                wait_until(lambda n=name, e=expected: in_states(world, n, e), what=f"{name}'s jobs")
                [failed] = world.listed(name, state=2, failed=1)
                assert failed["id"] == ids[name]["timed_out"]
            yield world
        finally:
            for client in http.values():
                client.close()


# --- credentials ---------------------------------------------------------------------------

AUTHENTICATED = [
    ("GET", "/health", None),
    ("GET", "/dashboard", None),
    ("POST", "/job", {"job": {"workflow": "noop"}}),
    ("GET", "/jobs", None),
    ("GET", "/jobs/{job}", None),
    ("PATCH", "/jobs/{job}", {"priority": 1}),
    ("POST", "/jobs/{job}/rerun", None),
    ("GET", "/logs/{job}", None),
    ("GET", "/schedules", None),
    ("PUT", "/scheduler", {"schedule": "queue_scheduled_jobs", "active": False}),
    ("POST", "/settings", {"name": "max_jobs", "setting": 5}),
]
BAD_CREDENTIALS = {
    "none": {},
    "client without key": {"client": ADMIN[0]},
    "wrong key": {"client": ADMIN[0], "api-key": "wrong-key-0000000000"},
    "other's key naming the admin": {"client": ADMIN[0], "api-key": OTHER[1]},
    "admin's key naming other": {"client": OTHER[0], "api-key": ADMIN[1]},
    "unknown client": {"client": "nobody", "api-key": OTHER[1]},
    "bearer, wrong key": {"Authorization": "Bearer wrong-key-0000000000"},
    "bearer, no key": {"Authorization": "Bearer"},
    "basic naming the admin with other's key": style("basic", (ADMIN[0], OTHER[1])),
    "basic, malformed": {"Authorization": "Basic !!not-base64!!"},
}


def test_the_alive_check_needs_no_credentials(world):
    response = httpx.get(world.system.url + "/")
    assert response.status_code == 200 and response.json() == {"result": "alive"}


@pytest.mark.parametrize("credentials", BAD_CREDENTIALS)
@pytest.mark.parametrize(("method", "path", "body"), AUTHENTICATED, ids=lambda v: str(v))
def test_every_endpoint_refuses_missing_or_bad_credentials_with_401(
    world, credentials, method, path, body
):
    job = world.ids[ADMIN[0]]["queued"]
    before = world.footprint([job]) if method != "GET" else None
    response = world.call(method, path.format(job=job), BAD_CREDENTIALS[credentials], body)
    assert response.status_code == 401, response.text
    assert set(response.json()) == {"error"} and isinstance(response.json()["error"], str)
    if before is not None:
        assert world.footprint([job]) == before


@pytest.mark.parametrize("header_style", STYLES)
@BOTH_WAYS
def test_every_header_style_acts_as_its_own_client_only(world, header_style, owner, intruder):
    headers = style(header_style, CREDENTIALS[intruder])
    listed = world.call("GET", "/jobs", headers, params={"limit": 1000})
    assert listed.status_code == 200, listed.text
    own = {row["id"] for row in world.listed(intruder)}
    assert {row["id"] for row in listed.json()} == own >= set(world.ids[intruder].values())
    for path in ("/jobs/{job}", "/logs/{job}"):
        response = world.call("GET", path.format(job=world.ids[owner]["done"]), headers)
        assert response.status_code == 400, response.text


@BOTH_WAYS
def test_a_client_header_cannot_borrow_another_clients_identity_in_other_styles(
    world, owner, intruder
):
    """The intruder's own key in Bearer/Basic plus a `client` header naming the owner."""
    name, key = CREDENTIALS[intruder]
    for headers in (
        {"client": owner, "Authorization": f"Bearer {key}"},
        {"client": owner} | style("basic", (name, key)),
    ):
        for kind, job in world.ids[owner].items():
            response = world.call("GET", f"/jobs/{job}", headers)
            assert response.status_code == 401, (kind, response.text)
        assert world.call("GET", "/jobs", headers).status_code == 401


# --- jobs, logs, lists and the dashboard ---------------------------------------------------


def not_found(job: int) -> dict:
    return {"error": f"job {job} not found"}


@BOTH_WAYS
@pytest.mark.parametrize("path", ["/jobs/{job}", "/logs/{job}"])
def test_reading_another_clients_job_or_log_is_not_found_like_a_missing_job(
    world, owner, intruder, path
):
    intruder_http = world.http[intruder]
    for kind, job in world.ids[owner].items():
        response = intruder_http.get(path.format(job=job))
        assert response.status_code == 400 and response.json() == not_found(job), kind
        assert world.http[owner].get(path.format(job=job)).status_code == 200
    missing = intruder_http.get(path.format(job=MISSING_JOB))
    assert missing.status_code == 400 and missing.json() == not_found(MISSING_JOB)


@BOTH_WAYS
@pytest.mark.parametrize(
    "body",
    [
        {"priority": 1},
        {"priority": "2", "client": "{owner}", "run_at": "2030-09-09T14:30:00.000"},
        {"queue_state": "paused"},
        {"queue_state": "broken"},
        {"queue_state": "queued"},
        {"persist": True},
        {"run_at": "2020-01-01T00:00:00.000"},
        {"client": "{intruder}"},
    ],
    ids=lambda body: ",".join(body),
)
def test_changing_another_clients_job_is_not_found_and_changes_nothing(
    world, owner, intruder, body
):
    body = {
        k: v.format(owner=owner, intruder=intruder) if k == "client" else v for k, v in body.items()
    }
    jobs = world.ids[owner]
    before = world.footprint(list(jobs.values()))
    views = {job: world.owner_view(owner, job) for job in jobs.values()}
    for kind, job in jobs.items():
        response = world.http[intruder].patch(f"/jobs/{job}", json=body)
        assert response.status_code == 400, kind
        assert response.json() == {"id": job} | not_found(job), kind
    assert world.footprint(list(jobs.values())) == before
    assert {job: world.owner_view(owner, job) for job in jobs.values()} == views


@BOTH_WAYS
def test_rerunning_another_clients_job_is_not_found_and_creates_nothing(world, owner, intruder):
    jobs = world.ids[owner]
    before = world.footprint(list(jobs.values()))
    views = {job: world.owner_view(owner, job) for job in jobs.values()}
    intruders_jobs = {row["id"] for row in world.listed(intruder)}
    for kind, job in jobs.items():
        response = world.http[intruder].post(f"/jobs/{job}/rerun")
        assert response.status_code == 400 and response.json() == not_found(job), kind
    assert world.footprint(list(jobs.values())) == before
    assert {job: world.owner_view(owner, job) for job in jobs.values()} == views
    assert {row["id"] for row in world.listed(intruder)} == intruders_jobs


def test_an_owner_cannot_hand_its_job_to_another_client(world):
    job = world.ids[ADMIN[0]]["scheduled"]
    before = world.footprint([job])
    response = world.http[ADMIN[0]].patch(f"/jobs/{job}", json={"client": OTHER[0]})
    assert response.status_code == 400 and response.json()["id"] == job
    assert world.footprint([job]) == before
    assert world.http[OTHER[0]].get(f"/jobs/{job}").status_code == 400


def state_filter(state: int):  # type: ignore[no-untyped-def]
    return lambda v, i: {"state": state}


FILTERS = {
    "no filter": lambda v, i: {},
    "asc, all": lambda v, i: {"asc": 1},
    "job_ids=theirs": lambda v, i: {"job_ids": ",".join(map(str, v.values()))},
    "job_ids=theirs+mine": lambda v, i: {"job_ids": f"{v['done']},{i['done']},{v['queued']}"},
    "search=their content id": lambda v, i: {"search": "{victim}-secret-done"},
    "search=their prefix": lambda v, i: {"search": "{victim}-secret"},
    "client=them": lambda v, i: {"client": "{victim}"},
    "client=them, state=0": lambda v, i: {"client": "{victim}", "state": 0},
    **{f"state={n}": state_filter(n) for n in range(7)},
    "state=2, failed=1": lambda v, i: {"state": 2, "failed": 1},
    "state=2, failed=0": lambda v, i: {"state": 2, "failed": 0},
    "persist=0": lambda v, i: {"persist": 0},
    "order_by=client": lambda v, i: {"order_by": "client", "asc": 1},
    "from..to": lambda v, i: {"from": "2000-01-01T00:00:00", "to": "2100-01-01T00:00:00"},
}


@BOTH_WAYS
@pytest.mark.parametrize("name", FILTERS)
def test_no_list_filter_shows_another_clients_jobs(world, owner, intruder, name):
    params = FILTERS[name](world.ids[owner], world.ids[intruder])
    params = {k: str(v).format(victim=owner) for k, v in params.items()}
    # The filter finds the owner's jobs for the owner (so it is not vacuous) ...
    owners_ids = {row["id"] for row in world.listed(owner)}
    found = world.listed(owner, **params)
    assert found and {row["id"] for row in found} <= owners_ids
    # ... and none of them, nor their parameters, for anyone else.
    response = world.http[intruder].get("/jobs", params={"limit": 1000, **params})
    assert response.status_code == 200, response.text
    assert {row["client"] for row in response.json()} <= {intruder}
    assert not {row["id"] for row in response.json()} & owners_ids
    assert secret(owner) not in response.text


@BOTH_WAYS
def test_the_dashboard_lists_only_the_callers_jobs(world, owner, intruder):
    ids = world.ids[intruder]
    mine = {row["id"] for row in world.listed(intruder)}
    theirs = {row["id"] for row in world.listed(owner)}
    response = world.http[intruder].get("/dashboard")
    assert response.status_code == 200
    board = response.json()
    for listing, kind in (("started", "running"), ("queued", "queued"), ("scheduled", "scheduled")):
        listed = {job["id"] for job in board[listing]}
        assert ids[kind] in listed and listed <= mine and not listed & theirs, listing
        assert {job["client"] for job in board[listing]} == {intruder}
    assert secret(owner) not in response.text and owner not in response.text


def test_health_counters_are_system_wide_totals_without_job_details(world):
    """`/health` is the engine's health (seed: "statistics about jobs and tasks"): its job
    counters count every client's jobs, the same for every caller, and name no job."""
    by_state = {
        "queued": {"state": 0},
        "started": {"state": 1},
        "completed": {"state": 2, "failed": 0},
        "failed": {"state": 2, "failed": 1},
        "pending": {"state": 3},
        "broken": {"state": 4},
        "scheduled": {"state": 5},
        "paused": {"state": 6},
    }
    totals = {
        counter: sum(len(world.listed(name, **params)) for name in CREDENTIALS)
        for counter, params in by_state.items()
    }
    assert all(count >= 2 for count in totals.values())  # one of each state per client

    def reports() -> list[dict] | None:
        found = [world.http[name].get("/health").json() for name in CREDENTIALS]
        counts = [{k: v for k, v in r["jobs"].items() if k in totals} for r in found]
        return found if all(c == totals for c in counts) else None

    for report in wait_until(reports, what="health counters equal to both clients' jobs"):
        assert set(report) == {"version", "databases", "queues", "tasks", "jobs", "rejected"}
        assert report["databases"] == {"postgres": "OK", "nats": "OK"}
        numbers = [*report["tasks"].values(), *report["jobs"].values()]
        numbers += [n for queue in report["queues"].values() for n in queue.values()]
        assert all(type(n) is int for n in numbers)  # counters only: no ids, no parameters


# --- shared settings and schedules ---------------------------------------------------------


def test_every_client_reads_the_same_schedules(world):
    listings = [world.http[name].get("/schedules") for name in CREDENTIALS]
    assert all(r.status_code == 200 for r in listings)
    assert listings[0].json() == listings[1].json()


@pytest.mark.parametrize("header_style", STYLES)
@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/settings", {"name": "max_jobs", "setting": 5}),
        ("POST", "/settings", {"name": "tenant_probe", "setting": "x"}),
        ("PUT", "/scheduler", {"schedule": "queue_scheduled_jobs", "active": False}),
    ],
    ids=["setting", "new setting", "scheduler"],
)
def test_only_an_admin_changes_settings_and_schedules(world, header_style, method, path, body):
    before = world.footprint([])
    response = world.call(method, path, style(header_style, OTHER), body)
    assert response.status_code == 403 and set(response.json()) == {"error"}
    assert world.footprint([]) == before
    assert world.http[ADMIN[0]].get("/dashboard").json()["max_jobs"] == 2
    duty = world.http[ADMIN[0]].get("/schedules").json()["schedules"]["queue_scheduled_jobs"]
    assert duty["active"] is True
    # The same request from the admin, in the same style, is allowed.
    allowed = {**body, "active": True} if path == "/scheduler" else {**body, "setting": 2}
    admin = world.call(method, path, style(header_style, ADMIN), allowed)
    assert admin.status_code == 200 and admin.json()["result"] == "ok"


# --- submitting ----------------------------------------------------------------------------


@BOTH_WAYS
def test_a_job_is_submitted_only_for_the_caller(world, owner, intruder):
    before = world.footprint([])
    refused = world.http[intruder].post(
        "/job", json={"client": owner, "job": {"workflow": "noop"}, "run_at": LATER}
    )
    assert refused.status_code == 403 and "error" in refused.json()
    assert world.footprint([]) == before

    job = submit(world.http[intruder], "noop", "submitted", run_at=LATER, client=intruder)
    assert world.http[intruder].get(f"/jobs/{job}").json()["client"] == intruder
    assert world.http[owner].get(f"/jobs/{job}").json() == not_found(job)
    wait_until(lambda: in_states(world, intruder, {job: "scheduled"}), what="the new job listed")
    assert job not in {row["id"] for row in world.listed(owner)}
