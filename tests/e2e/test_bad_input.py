"""Bad input gets the seed's error shape and status, and nothing is stored."""

from __future__ import annotations

import httpx
import pytest

from tests.support.system import ADMIN, OTHER, running_system


@pytest.fixture(scope="module")
def system(postgres_url):
    with running_system(postgres_url, "bad-input") as engine:
        yield engine


AUTH = {"client": ADMIN[0], "api-key": ADMIN[1]}

REFUSED_JOBS = [
    (b"{not json", "malformed JSON"),
    (b"[1, 2]", "JSON object"),
    (b'{"parameters": {}}', "job.workflow is required"),
    (b'{"job": {"workflow": 5}}', "job.workflow is required"),
    (b'{"job": {"workflow": "no-such-flow"}}', "unknown workflow 'no-such-flow'"),
    (b'{"job": {"workflow": "noop"}, "parameters": [1]}', "parameters must be a JSON object"),
    (b'{"job": {"workflow": "noop"}, "priority": "high"}', "priority must be an integer"),
    (b'{"job": {"workflow": "noop"}, "priority": 11}', "priority must be an integer"),
    (b'{"job": {"workflow": "noop"}, "run_at": "tomorrow"}', "run_at 'tomorrow' is not"),
    (b'{"job": {"workflow": "sleep"}, "parameters": {"seconds": "x"}}', "parameters.seconds"),
    (
        b'{"job": {"workflow": "noop"}, "parameters": {"rest_endpoints": ["ftp://x"]}}',
        "not an http(s) URL",
    ),
    (b'{"job": {"workflow": "noop"}, "parameters": {"timeout": -1}}', "parameters.timeout"),
    (
        b'{"job": {"workflow": "noop"}, "parameters": {"timeout": 1' + b"0" * 400 + b"}}",
        "parameters.timeout",
    ),
    (b'{"job": {"workflow": "noop"}, "run_at": "9999-12-31T23:59:59-05:00"}', "run_at"),
    (
        b'{"job": {"workflow": "noop"}, "parameters": {"rest_endpoints": ["http://[::1"]}}',
        "not an http(s) URL",
    ),
    (
        b'{"job": {"workflow": "noop"}, "parameters": {"rest_endpoints": ["http://x:99999/"]}}',
        "not an http(s) URL",
    ),
    (
        b'{"job": {"workflow": "noop"}, "parameters": {"rest_endpoints": ["http://a..b/"]}}',
        "not an http(s) URL",
    ),
    (
        b'{"job": {"workflow": "noop"}, "parameters": {"rest_endpoints": ["http://x.example/'
        + b"a" * 2048
        + b'"]}}',
        "at most 2048 characters",
    ),
    (
        b'{"job": {"workflow": "noop"}, "semaphore_url": "http://x.example/' + b"a" * 4000 + b'"}',
        "at most 2048 characters",
    ),
    (b'{"job": {"workflow": "noop"}, "parameters": {"note": "a\\u0000b"}}', "NUL"),
    (b'{"job": {"workflow": "fail"}, "parameters": {"exit_code": "inf"}}', "finite"),
]


@pytest.mark.parametrize(("body", "message"), REFUSED_JOBS)
def test_a_refused_job_is_a_400_in_the_seed_shape_and_nothing_is_stored(system, body, message):
    before = system.store.max_position()
    response = httpx.post(system.url + "/job", content=body, headers=AUTH)
    assert response.status_code == 400, response.text
    assert response.json().keys() == {"id", "error"} and message in response.json()["error"]
    assert system.store.max_position() == before


def test_oversized_body_is_413(system):
    body = b'{"job": {"workflow": "noop"}, "parameters": {"blob": "' + b"x" * 2_000_000 + b'"}}'
    before = system.store.max_position()
    response = httpx.post(system.url + "/job", content=body, headers=AUTH)
    assert response.status_code == 413 and "too large" in response.json()["error"]
    assert system.store.max_position() == before


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"client": ADMIN[0]},
        {"client": ADMIN[0], "api-key": "wrong"},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Basic !!notbase64"},
    ],
)
def test_missing_or_wrong_credentials_are_401(system, headers):
    before = system.store.max_position()
    response = httpx.post(system.url + "/job", json={"job": {"workflow": "noop"}}, headers=headers)
    assert response.status_code == 401 and "error" in response.json()
    assert system.store.max_position() == before


def test_a_body_naming_another_client_is_refused(system):
    body = {"client": "someone-else", "job": {"workflow": "noop"}}
    response = httpx.post(system.url + "/job", json=body, headers=AUTH)
    assert response.status_code == 403 and "does not match" in response.json()["error"]


@pytest.mark.parametrize(
    "path",
    [
        "/jobs/999999999",
        "/jobs/abc",
        "/logs/999999999",
        "/jobs/\u00b2",
        "/jobs/" + "9" * 5000,
    ],
)
def test_unknown_or_malformed_job_ids_are_400_with_an_error(system, path):
    response = httpx.get(system.url + path, headers=AUTH)
    assert response.status_code == 400 and "not found" in response.json()["error"]


def test_unknown_routes_are_404_with_an_error(system):
    response = httpx.get(system.url + "/nowhere", headers=AUTH)
    assert response.status_code == 404 and "error" in response.json()


def test_only_an_admin_client_may_change_settings(system):
    other = {"client": OTHER[0], "api-key": OTHER[1]}
    body = {"name": "max_jobs", "setting": 7}
    response = httpx.post(system.url + "/settings", json=body, headers=other)
    assert response.status_code == 403 and "admin" in response.json()["error"]
    response = httpx.post(system.url + "/settings", json=body, headers=AUTH)
    assert response.json() == {"result": "ok", "message": "max_jobs setting created"}


def test_a_nul_in_a_search_is_400(system):
    response = httpx.get(system.url + "/jobs", params={"search": "a\x00b"}, headers=AUTH)
    assert response.status_code == 400 and "NUL" in response.json()["error"]


def test_server_errors_never_leak_a_traceback(system):
    response = httpx.post(system.url + "/settings", content=b'{"name": "max_jobs"}', headers=AUTH)
    assert response.status_code == 400
    assert "Traceback" not in response.text and response.json().keys() == {"error"}


@pytest.mark.parametrize("body", [b"{not json", b'{"job": {"workflow": "noop"}, "x": "\\u0000"}'])
def test_credentials_are_checked_before_the_body_is_read(system, body):
    response = httpx.post(system.url + "/job", content=body, headers={"client": ADMIN[0]})
    assert response.status_code == 401 and "error" in response.json()
