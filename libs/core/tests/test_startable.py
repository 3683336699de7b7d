"""The checks before an attempt starts read the run spec alone, whatever dialect made it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from taskengine_contracts.events import Limit, RunSpec, Volume
from taskengine_core.startable import NotStartable, check_startable

AT = datetime(2030, 1, 1, tzinfo=UTC)


def test_a_run_without_limits_starts_anywhere_any_time():
    check_startable(RunSpec(), "acme", AT, "local", AT + timedelta(days=365))
    check_startable(RunSpec(kind="worker"), "acme", AT, "process", AT)


def test_a_run_past_its_start_timeout_is_refused_quoting_the_limit_as_given():
    run = RunSpec(start_timeout=Limit(seconds=60, name="start limit", given="1 minute"))
    check_startable(run, "acme", AT, "local", AT + timedelta(seconds=60))
    with pytest.raises(NotStartable, match=r"did not start within its start limit \(1 minute\)"):
        check_startable(run, "acme", AT, "local", AT + timedelta(seconds=61))


def test_a_container_needs_kubernetes_and_an_unstartable_run_says_why():
    container = RunSpec(kind="container", image="img")
    with pytest.raises(NotStartable, match="TASKENGINE_EXECUTOR=kubernetes"):
        check_startable(container, "acme", AT, "process", AT)
    check_startable(container, "acme", AT, "kubernetes", AT)
    refused = RunSpec(kind="container", image="img", unstartable="no files here")
    with pytest.raises(NotStartable, match="^no files here$"):
        check_startable(refused, "acme", AT, "kubernetes", AT)


def test_volumes_only_under_the_clients_own_allowed_host_paths_read_only():
    volume = Volume(host_path="/mnt/acme/in", container_path="/data")
    run = RunSpec(kind="container", image="img", volumes=[volume])
    check_startable(run, "acme", AT, "kubernetes", AT, ("/mnt",))
    with pytest.raises(NotStartable, match="not a host path"):
        check_startable(run, "other", AT, "kubernetes", AT, ("/mnt",))
    writable = RunSpec(
        kind="container",
        image="img",
        volumes=[Volume(host_path="/mnt/acme/in", container_path="/d", read_only=False)],
    )
    with pytest.raises(NotStartable, match="mode must be READ_ONLY"):
        check_startable(writable, "acme", AT, "kubernetes", AT, ("/mnt",))
