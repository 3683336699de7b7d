"""The dashboard (`/ui`) in a real browser against the system as `make up` starts it: sign in
with a client's key, submit a job from the page, watch it complete live (no reload), open its
timeline; a wrong key cannot sign in; a client sees only its own jobs, an admin every one.

The browser is the system's chromium (`/usr/bin/chromium`, driven by playwright); where there
is none the browser tests skip (the socket's and the banner's still run). Screenshots are kept
in `.artefacts/dashboard/` (git-ignored).
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.support.receiver import CallbackReceiver
from tests.support.system import ADMIN, OTHER, System, running_system
from tests.support.waiting import wait_until
from tests.support.worktask_clients import new_client

CHROMIUM = Path(os.environ.get("TASKENGINE_TEST_CHROMIUM", "/usr/bin/chromium"))
ARTEFACTS = Path(__file__).resolve().parents[2] / ".artefacts" / "dashboard"
MAX_SOCKETS = 3
LIVE = 60_000
"""Milliseconds the page may take to show what the engine did (a busy machine)."""


@pytest.fixture(scope="module")
def system(postgres_url) -> Iterator[System]:
    env = {"TASKENGINE_MAX_SOCKETS_PER_CLIENT": str(MAX_SOCKETS)}
    with running_system(postgres_url, "dashboard", env=env) as system:
        yield system


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip(
            f"no browser at {CHROMIUM}: the dashboard's browser tests drive the system's"
            " chromium (apt-get install chromium)"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM))
        yield browser
        browser.close()


@pytest.fixture
def page(browser) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1180, "height": 760})
    page = context.new_page()
    yield page
    context.close()


def shot(page, name: str, height: int | None = None) -> Path:
    """A screenshot kept as a test artefact: the whole page, or its top `height` pixels."""
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTEFACTS / f"{name}.png"
    if height is None:
        page.screenshot(path=str(path), full_page=True)
    else:
        page.screenshot(path=str(path), clip={"x": 0, "y": 0, "width": 1180, "height": height})
    return path


def sign_in(page, system: System, who: tuple[str, str]) -> None:
    page.goto(system.url + "/ui")
    page.fill("#client-name", who[0])
    page.fill("#api-key", who[1])
    page.click("#sign-in-form button[type=submit]")


def submit(http: httpx.Client, workflow: str = "echo", **parameters: object) -> int:
    body = {"job": {"workflow": workflow}, "parameters": parameters}
    response = http.post("/job", json=body)
    assert response.status_code == 200, response.text
    return int(response.json()["id"])


def test_the_banner_names_the_dashboard(system):
    banner = wait_until(lambda: "Ctrl-C" in system.log() and system.log(), what="the banner")
    assert f"dashboard   {system.url}/ui" in banner
    endpoints = json.loads((system.data_dir / "run" / "endpoints.json").read_text())
    assert endpoints["dashboard_url"] == f"{system.url}/ui"


WORKTASK = {
    "type": "ml_inference",
    "project_id": "proj-ui",
    "task_spec": {"pipeline_id": "echo", "parameters": {"say": "hi"}},
    "resource_requirements": {"cpu": "1", "memory": "1Gi"},
    "data_access": {"input_datasets": ["dataset-1"]},
}
SCHEDULED = {
    "title": "Nightly <report>",
    "description": "shown as text",
    "schedule_kind": "cron",
    "schedule_expr": "0 3 * * *",
    "payload": {"workflow": "echo", "parameters": {"report": "nightly"}},
    "created_by": str(uuid.uuid4()),
}
DROVE = {
    "type": "CREATE",
    "spec": {
        "sourceAppName": "UI_APP",
        "taskId": "T-ui-1",
        "executable": {"type": "WORKFLOW", "name": "echo", "parameters": {}},
        "resources": [{"type": "CPU", "count": 1}, {"type": "MEMORY", "sizeInMB": 128}],
        "volumes": [],
        "configs": [],
        "placementPolicy": {"type": "ANY"},
        "env": {},
        "args": [],
        "tags": {},
    },
    "opSpec": {"timeout": "5m", "parallelism": 1, "failureStrategy": "STOP"},
}


def one_job_of_each_dialect(system: System, who: tuple[str, str]) -> tuple[dict[str, int], str]:
    """A job submitted through each of the four dialects by `who`: {dialect: job id}, and the
    scheduled task whose run one of them is."""
    bearer = {"Authorization": f"Bearer {who[1]}"}
    with (
        system.client(who) as engine,
        httpx.Client(base_url=system.url, headers=bearer, timeout=30) as http,
        httpx.Client(base_url=system.url, auth=who, timeout=30) as basic,
    ):
        ids = {"taskengine": submit(engine, note="Task Engine API")}
        created = http.post("/api/worktasks", json=WORKTASK)
        assert created.status_code == 201, created.text
        ids["worktasks"] = int(created.json()["worktask_id"])
        task = http.post("/tasks", json=SCHEDULED)
        assert task.status_code == 201, task.text
        task_id = task.json()["id"]
        assert http.post(f"/tasks/{task_id}/run_now").status_code == 202

        def run_job() -> int | None:
            runs = http.get(f"/tasks/{task_id}/runs").json()
            return runs[0]["job_id"] if runs and runs[0].get("job_id") else None

        ids["tasks"] = wait_until(run_job, timeout=60, what="the scheduled task's run")
        drove = basic.post("/apis/v1/tasks/operations", json=DROVE)
        assert drove.status_code == 200, drove.text
        [drove_job] = engine.get("/ui/api/jobs", params={"dialect": "drove"}).json()
        ids["drove"] = drove_job["id"]
    return ids, task_id


def test_the_job_list_shows_and_filters_the_four_dialects_and_the_scheduled_tasks(system, page):
    from playwright.sync_api import expect

    ids, task_id = one_job_of_each_dialect(system, OTHER)
    sign_in(page, system, OTHER)
    page.click("nav a[href='#/jobs']")
    for job_id in ids.values():
        expect(page.locator(f"tr[data-job='{job_id}']")).to_be_visible(timeout=LIVE)
    for dialect, job_id in ids.items():
        page.select_option("#filters select[name=dialect]", dialect)
        expect(page.locator(f"tr[data-job='{job_id}']")).to_be_visible(timeout=LIVE)
        for other in set(ids.values()) - {job_id}:
            expect(page.locator(f"tr[data-job='{other}']")).to_have_count(0, timeout=LIVE)
    page.select_option("#filters select[name=dialect]", "")
    page.select_option("#filters select[name=state]", "succeeded")
    expect(page.locator("#jobs [data-state]").first).to_be_visible(timeout=LIVE)
    shown = page.locator("#jobs [data-state]").all_inner_texts()
    assert shown and set(shown) == {"succeeded"}

    page.goto(f"{system.url}/ui#/jobs/{ids['drove']}")
    expect(page.locator("dl.facts")).to_contain_text("T-ui-1", timeout=LIVE)
    page.click("nav a[href='#/tasks']")
    row = page.locator(f"tr[data-task='{task_id}']")
    expect(row).to_contain_text("Nightly <report>", timeout=LIVE)
    expect(row.locator(".next-fire")).to_contain_text("03:00:00Z")
    shot(page, "tasks")
    assert page.locator("#error").is_hidden()


def test_sign_in_submit_a_job_watch_it_complete_live_and_open_its_timeline(system, page):

    with CallbackReceiver() as receiver:
        watch_a_job_live(system, page, receiver)


def watch_a_job_live(system: System, page: Any, receiver: CallbackReceiver) -> None:
    from playwright.sync_api import expect

    sign_in(page, system, ADMIN)
    expect(page.locator("#signed-in-as")).to_have_text(f"{ADMIN[0]} (admin: all clients)")
    expect(page.locator("#live")).to_have_text("live", timeout=LIVE)
    assert ADMIN[1] not in page.url
    page.evaluate("window.notReloaded = true")

    page.click("nav a[href='#/jobs']")
    page.fill("#submit-job input[name=workflow]", "sleep")
    parameters = {"seconds": 3, "note": "<b>not bold</b>", "rest_endpoints": [receiver.url]}
    page.fill("#submit-job textarea[name=parameters]", json.dumps(parameters))
    page.click("#submit-job button[type=submit]")
    submitted = page.locator("#submitted a")
    expect(submitted).to_be_visible(timeout=LIVE)
    job_id = int(submitted.get_attribute("data-submitted"))
    state = page.locator(f"tr[data-job='{job_id}'] [data-state]")
    expect(state).to_be_visible(timeout=LIVE)
    seen_unfinished = state.inner_text() != "succeeded"

    # Only the socket's updates can move it on: the page polls nothing and is not reloaded.
    expect(state).to_have_text("succeeded", timeout=LIVE)
    assert seen_unfinished, "the job was already over when the page first listed it"
    assert page.evaluate("window.notReloaded") is True
    shot(page, "jobs")
    shot(page, "readme", height=420)  # docs/dashboard.png is a copy of it

    page.click(f"tr[data-job='{job_id}'] a")
    expect(page.locator("#view h2")).to_have_text(f"Job {job_id}")
    for event in ("job.submitted", "job.admitted", "job.started", "job.succeeded"):
        expect(page.locator(f"tr[data-event='{event}']")).to_have_count(1, timeout=LIVE)
    expect(page.locator("#output")).to_contain_text("'sleep' completed successfully", timeout=LIVE)
    # Client text is text: the parameters' markup is shown, not rendered.
    expect(page.locator("pre.parameters")).to_contain_text("<b>not bold</b>")
    assert page.locator("pre.parameters b").count() == 0
    for key in ("start:", "complete:"):  # each callback, delivered to the receiver
        callback = page.locator("#callbacks tr", has_text=key)
        expect(callback).to_contain_text("delivered (200)", timeout=LIVE)
    assert page.evaluate("window.notReloaded") is True
    shot(page, "job")

    page.click("nav a[href='#/']")
    expect(page.locator("#running")).to_contain_text("of max_jobs")
    page.click("nav a[href='#/tasks']")
    expect(page.locator("main table")).to_be_visible()
    assert page.locator("#error").is_hidden()
    assert ADMIN[1] not in (system.data_dir / "logs" / "gateway.log").read_text()


def test_a_wrong_key_cannot_sign_in(system, page):
    from playwright.sync_api import expect

    sign_in(page, system, (ADMIN[0], "wrong-key-0123456789"))
    expect(page.locator("#error")).to_be_visible(timeout=LIVE)
    expect(page.locator("#error-text")).to_contain_text("401")
    assert page.locator("#view").is_hidden() and page.locator("#nav").is_hidden()
    assert page.evaluate("sessionStorage.length") == 0
    shot(page, "wrong-key")
    with httpx.Client(base_url=system.url, timeout=30) as anonymous:
        refused = anonymous.get(
            "/ui/api/jobs", headers={"client": ADMIN[0], "api-key": "wrong-key-0123456789"}
        )
        assert refused.status_code == 401
        assert anonymous.get("/ui/api/queues").status_code == 401


def test_a_client_sees_only_its_own_jobs_and_an_admin_sees_every_one(system, page):
    from playwright.sync_api import expect

    with system.client(ADMIN) as admin, system.client(OTHER) as other:
        hidden = submit(admin, note="the admin's")
        own = submit(other, note="the other's")
        sign_in(page, system, OTHER)
        page.click("nav a[href='#/jobs']")
        expect(page.locator(f"tr[data-job='{own}']")).to_be_visible(timeout=LIVE)
        assert page.locator(f"tr[data-job='{hidden}']").count() == 0
        shot(page, "own-jobs")

        page.goto(f"{system.url}/ui#/jobs/{hidden}")
        expect(page.locator("#error-text")).to_contain_text("404", timeout=LIVE)
        assert other.get(f"/ui/api/jobs/{hidden}").status_code == 404
        assert other.get("/ui/api/jobs", params={"client": ADMIN[0]}).json() == []
        listed = {job["id"] for job in other.get("/ui/api/jobs").json()}
        assert own in listed and hidden not in listed

        everyone = {job["id"] for job in admin.get("/ui/api/jobs").json()}
        assert {own, hidden} <= everyone
        assert admin.get(f"/ui/api/jobs/{own}").json()["job"]["client"] == OTHER[0]


def socket_signed_in(system: System, who: tuple[str, str]):  # type: ignore[no-untyped-def]
    ws = connect(system.url.replace("http://", "ws://") + "/ui/ws", open_timeout=10)
    ws.send(json.dumps({"client": who[0], "key": who[1]}))
    return ws


def test_the_socket_takes_the_key_in_its_first_message_and_is_bounded_per_client(system):
    wrong = socket_signed_in(system, (OTHER[0], "wrong-key-0123456789"))
    with pytest.raises(ConnectionClosed):
        wrong.recv(timeout=30)
    assert wrong.close_code == 4401
    who = new_client(system, "ui")  # a client of its own: no page of another test holds a socket
    sockets = [socket_signed_in(system, who) for _ in range(MAX_SOCKETS)]
    try:
        for ws in sockets:
            assert json.loads(ws.recv(timeout=30)) == {
                "type": "ready",
                "client": who[0],
                "admin": False,
            }
        extra = socket_signed_in(system, who)
        with pytest.raises(ConnectionClosed):
            extra.recv(timeout=30)
        assert extra.close_code == 4429
        with system.client(ADMIN) as admin, system.client(who) as mine:
            submit(admin)
            own = submit(mine)
        updates: list[dict] = []
        while not any(u["job_id"] == own and u["state"] == "succeeded" for u in updates):
            updates.append(json.loads(sockets[0].recv(timeout=60)))
        assert {u["client"] for u in updates} == {who[0]}
        assert [u["state"] for u in updates][0] == "queued"
    finally:
        for ws in sockets:
            ws.close()
