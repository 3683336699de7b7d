"""Shared fixtures: one real PostgreSQL per session; a fresh engine per test that needs one."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from tests.support.servers import (
    drop_database,
    fresh_database,
    nats_server,
    postgres_server,
    scratch_dir,
)
from tests.support.system import Services, System


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    with postgres_server() as url:
        yield url


@pytest.fixture
def engine_root():
    root = scratch_dir("te-engine-")
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def database_url(postgres_url: str) -> Iterator[str]:
    url = fresh_database(postgres_url)
    yield url
    drop_database(postgres_url, url)


@pytest.fixture
def nats_url(engine_root) -> Iterator[str]:
    with nats_server(engine_root) as url:
        yield url


@pytest.fixture
def services(engine_root, nats_url, database_url) -> Iterator[Services]:
    engine = Services(engine_root, nats_url, database_url)
    yield engine
    engine.close()


@pytest.fixture
def system_factory(request, engine_root, nats_url, database_url):
    started: list[System] = []
    request.node.started_engines = started  # for the failure report

    def start(**env: str) -> System:
        system = System(engine_root, nats_url, database_url, **env).start()
        started.append(system)
        return system

    yield start
    for system in started:
        system.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """A failing test that used a running engine shows that engine's logged errors."""
    report = yield
    if report.failed:
        engines = [*getattr(item, "funcargs", {}).values(), *getattr(item, "started_engines", [])]
        for engine in engines:
            if isinstance(engine, System | Services):
                report.sections.append(("service errors", engine.service_errors()))
    return report
