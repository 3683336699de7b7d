"""The dashboard's page, static files and reads: shipped in the package, scoped to the caller
(an admin: every client), events shown without their secrets."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import uuid4

import pytest
from litestar import Litestar
from litestar.di import Provide
from litestar.testing import TestClient
from taskengine_contracts.events import (
    CallbackAttemptFailed,
    CallbackDelivered,
    JobFailed,
    JobSucceeded,
    StepChanged,
)
from taskengine_core.deliveries import delivery_key
from taskengine_core.dialects.taskengine.submission import submitted
from taskengine_core.ids import job_stream
from taskengine_core.jobs import Job
from taskengine_gateway.auth import Client
from taskengine_gateway.dashboard.api import (
    STATIC,
    DashboardController,
    callback_line,
    dashboard_filter,
    event_line,
    native_status,
    static_files,
)
from taskengine_gateway.dashboard.feed import update_for
from taskengine_gateway.errors import BadRequest

AT = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
ALICE, ADMIN = Client("alice", False), Client("root", True)


def a_job(client: str = "alice", **parameters: object) -> Job:
    event = submitted(
        7,
        client,
        AT,
        workflow="echo",
        parameters=parameters,
        priority=5,
        run_at=None,
        semaphore_url=None,
        callbacks=["https://example.com/hook?token=s3cret"],
        timeout=None,
    )
    job = Job.fold([event])
    assert job is not None
    return job


def test_the_page_and_its_files_are_package_data():
    assert {"index.html", "app.js", "style.css"} <= {p.name for p in STATIC.iterdir()}


def test_the_page_runs_only_its_own_script_and_never_writes_data_as_html():
    app = Litestar(
        [DashboardController, static_files],
        dependencies={
            "gateway": Provide(lambda: None, sync_to_thread=False),
            "client": Provide(lambda: ALICE, sync_to_thread=False),
        },
    )
    with TestClient(app) as http:
        page = http.get("/ui")
        script = http.get("/ui/static/app.js")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert '<script src="/ui/static/app.js"' in page.text
    assert script.status_code == 200
    for unsafe in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert unsafe not in script.text


def test_a_client_lists_only_its_own_jobs_whatever_it_asks():
    assert dashboard_filter({}, ALICE).client == "alice"
    other = dashboard_filter({"client": "bob"}, ALICE)
    assert other.client == "alice" and other.nothing


def test_an_admin_lists_every_clients_jobs_or_the_one_it_names():
    assert dashboard_filter({}, ADMIN).client is None
    named = dashboard_filter({"client": "bob"}, ADMIN)
    assert named.client == "bob" and not named.nothing


def test_the_filters_take_a_dialect_a_state_and_a_search():
    wanted = dashboard_filter(
        {"dialect": "worktasks", "state": "running", "search": "x", "limit": "5"}, ALICE
    )
    assert (wanted.dialect, wanted.states, wanted.search, wanted.limit) == (
        "worktasks",
        ["running"],
        "x",
        5,
    )


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ({"dialect": "soap"}, "dialect"),
        ({"state": "done"}, "state"),
        ({"search": "a\x00b"}, "search"),
        ({"search": "x" * 201}, "search"),
        ({"limit": "0"}, "limit"),
        ({"limit": "-1"}, "limit"),
        ({"limit": "501"}, "limit"),
    ],
)
def test_a_bad_filter_is_refused_naming_it(query, named):
    with pytest.raises(BadRequest, match=named):
        dashboard_filter(query, ALICE)


def test_live_updates_are_the_callers_own_jobs_unless_admin():
    job = a_job("bob")
    done = JobSucceeded(
        id=job.id, version=5, at=AT, job_id=7, client="bob", workflow="echo", attempt=1
    )
    assert update_for(done, 12, "bob", ALICE) is None
    assert update_for(done, 12, "bob", Client("bob", False)) == {
        "type": "job",
        "position": 12,
        "job_id": 7,
        "client": "bob",
        "event": "job.succeeded",
        "state": "succeeded",
    }
    assert update_for(done, 12, "bob", ADMIN) is not None
    delivered = CallbackDelivered(
        id=uuid4(),
        version=1,
        at=AT,
        job_id=7,
        url="https://example.com/hook?token=s3cret",
        event="complete",
        status_code=200,
        attempts=1,
    )
    assert update_for(delivered, 13, "bob", ALICE) is None
    assert update_for(delivered, 13, None, ADMIN) is None  # a job no read model knows
    assert update_for(delivered, 13, "bob", Client("bob", False)) == {
        "type": "callback",
        "position": 13,
        "job_id": 7,
        "client": "bob",
        "event": "callback.delivered",
    }


def test_a_timeline_line_shows_how_without_secrets_or_parameters():
    job = a_job()
    failed = JobFailed(
        id=job.id,
        version=5,
        at=AT,
        job_id=7,
        client="alice",
        workflow="echo",
        attempt=1,
        reason="exit 3: token=abc123",
        failure="exit",
        exit_code=3,
        callbacks=["https://example.com/hook"],
    )
    line = event_line(failed)
    assert line["type"] == "job.failed" and line["at"] == "2030-01-02T03:04:05.000Z"
    assert line["details"]["exit_code"] == 3 and line["details"]["attempt"] == 1
    assert "abc123" not in str(line) and "callbacks" not in line["details"]


def test_a_callback_shows_each_try_and_whether_it_was_delivered():
    stream = uuid4()
    tries = [
        CallbackAttemptFailed(
            id=stream,
            version=1,
            at=AT,
            job_id=7,
            url="https://example.com/hook",
            event="complete",
            attempt=1,
            error="timeout",
            next_at=AT,
        ),
        CallbackDelivered(
            id=stream,
            version=2,
            at=AT,
            job_id=7,
            url="https://example.com/hook",
            event="complete",
            status_code=204,
            attempts=2,
        ),
    ]
    line = callback_line("https://example.com/hook?token=s3cret", "complete:5", tries)
    assert line["delivered"] == 204 and len(line["attempts"]) == 2
    assert line["attempts"][0]["error"] == "timeout"
    assert "s3cret" not in line["url"]
    assert callback_line("https://example.com/hook", "start:4", [])["delivered"] is None


def test_the_delivery_key_names_job_ends_and_steps_as_the_notifier_does():
    done = JobSucceeded(
        id=job_stream(7), version=5, at=AT, job_id=7, client="alice", workflow="echo", attempt=1
    )
    step = StepChanged(
        id=uuid4(),
        version=2,
        at=AT,
        job_id=7,
        client="alice",
        attempt=1,
        step=2,
        name="say",
        event="complete",
    )
    assert delivery_key(done) == "complete:5"
    assert delivery_key(step) == "step:1:2:complete"


def test_each_dialect_words_the_status_its_own_way():
    assert native_status(a_job()) == "queued (0)"
