"""compose.yaml: valid by the Compose Specification, and the topology it promises."""

from __future__ import annotations

import asyncio
import re

import nats
import pytest
from jsonschema import validators
from taskengine_cli.supervisor import SERVICES
from taskengine_embedded._nats import nats_server_binary
from taskengine_embedded._process import free_port, port_open

from tests.deploy.files import ROOT, SETTINGS, check_command, compose, compose_schema
from tests.support.nats_users import SERVICES_USER, USERS_CONF

SERVERS = {"nats", "postgres"}
INTERPOLATED = re.compile(r"^\$\{\w+(:?[?-][^}]*)?\}$")


def engine_services() -> dict[str, dict]:
    """Every service that runs the Taskengine image (the one-shot migrate included)."""
    return {name: s for name, s in compose()["services"].items() if name not in SERVERS}


def test_it_is_valid_by_the_compose_specification():
    schema = compose_schema()
    validator = validators.validator_for(schema)
    validator.check_schema(schema)
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator(schema).iter_errors(compose())
    ]
    assert not errors, "\n".join(errors)


def test_it_runs_every_service_and_the_servers():
    assert set(compose()["services"]) == SERVERS | {"migrate", *SERVICES}


def test_nats_keeps_jetstream_on_a_named_volume_and_is_health_checked():
    nats = compose()["services"]["nats"]
    assert nats["image"].startswith("nats:2.10")
    command = nats["command"]
    assert "-js" in command and command[command.index("-sd") + 1] == "/data"
    volume, path = nats["volumes"][0].split(":")[:2]
    assert path == "/data" and volume in compose()["volumes"]
    assert "/healthz" in " ".join(nats["healthcheck"]["test"])


def nats_users_mount() -> tuple[str, str]:
    """(file in the repository, path in the container) of the NATS users' file."""
    nats = compose()["services"]["nats"]
    (source, target) = [v.split(":")[:2] for v in nats["volumes"] if v.endswith(":ro")][0]
    return source, target


def test_nats_requires_the_users_of_the_shared_users_file_with_passwords_from_env():
    nats = compose()["services"]["nats"]
    source, target = nats_users_mount()
    assert (ROOT / source).resolve() == USERS_CONF
    assert nats["command"][nats["command"].index("-c") + 1] == target
    for variable in ("TASKENGINE_NATS_PASSWORD", "TASKENGINE_NATS_SUBSCRIBER_PASSWORD"):
        assert f"${variable}" in USERS_CONF.read_text()
        assert INTERPOLATED.match(nats["environment"][variable]), variable
        assert nats["environment"][variable].startswith("${" + variable + ":?")
    for name, service in engine_services().items():
        environment = service["environment"]
        assert environment["TASKENGINE_NATS_USER"] == SERVICES_USER, name
        assert (
            environment["TASKENGINE_NATS_PASSWORD"]
            == nats["environment"]["TASKENGINE_NATS_PASSWORD"]
        )


async def test_the_nats_command_of_compose_refuses_connections_without_a_password(tmp_path):
    """compose.yaml's nats command line, run with the wheel's nats-server: it starts with the
    users' file and lets in only the users with their passwords."""
    source, target = nats_users_mount()
    port, monitor = free_port(), free_port()
    argv = [
        str(ROOT / source) if a == target else str(tmp_path) if a == "/data" else a
        for a in compose()["services"]["nats"]["command"]
    ]
    argv[argv.index("-m") + 1] = str(monitor)
    env = {
        "TASKENGINE_NATS_PASSWORD": "pw-services",
        "TASKENGINE_NATS_SUBSCRIBER_PASSWORD": "pw-sub",
    }
    server = await asyncio.create_subprocess_exec(
        str(nats_server_binary()),
        *argv,
        "-a",
        "127.0.0.1",
        "-p",
        str(port),
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            if port_open(port):
                break
            await asyncio.sleep(0.1)
        url = f"nats://127.0.0.1:{port}"
        with pytest.raises(Exception, match="(?i)authorization"):
            await nats.connect(url, allow_reconnect=False, max_reconnect_attempts=0)
        nc = await nats.connect(url, user=SERVICES_USER, password="pw-services")
        await nc.close()
    finally:
        server.terminate()
        await asyncio.wait_for(server.wait(), 10)


def test_postgres_keeps_its_data_on_a_named_volume_and_is_health_checked():
    postgres = compose()["services"]["postgres"]
    assert postgres["image"] == "postgres:16"
    assert postgres["volumes"][0].split(":")[0] in compose()["volumes"]
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    assert INTERPOLATED.match(postgres["environment"]["POSTGRES_PASSWORD"])


def test_every_service_runs_the_one_image_with_a_real_command():
    images = {s["image"] for s in engine_services().values()}
    assert len(images) == 1
    for service in engine_services().values():
        assert service["build"]["context"] == "."
        check_command(service["command"])
    for name in SERVICES:
        assert compose()["services"][name]["command"] == ["python", "-m", f"taskengine_{name}"]
    assert compose()["services"]["migrate"]["command"] == ["taskengine", "migrate"]


def test_tables_are_created_once_before_any_service_starts():
    migrate = compose()["services"]["migrate"]
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert migrate["restart"] == "no"
    for name in SERVICES:
        depends = compose()["services"][name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully"
        assert depends["nats"]["condition"] == "service_healthy"
        assert depends["postgres"]["condition"] == "service_healthy"


def test_every_service_has_a_health_check_that_the_image_can_run():
    for name in SERVICES:
        test = compose()["services"][name]["healthcheck"]["test"]
        assert test[0] == "CMD"
        check_command(test[1:])
        if name == "gateway":  # GET / needs no credentials, GET /health does
            assert "http://127.0.0.1:8080/'" in test[-1]
        else:
            assert test[1:] == ["taskengine", "probe", name]


def test_settings_come_from_the_environment_and_are_real_settings():
    instances = set()
    for name, service in engine_services().items():
        environment = service["environment"]
        unknown = set(environment) - SETTINGS
        assert not unknown, f"{name}: {unknown} are not settings in taskengine_core.config"
        assert {"TASKENGINE_DATABASE_URL", "TASKENGINE_NATS_URL"} <= set(environment), name
        if name != "migrate":
            instances.add(environment["TASKENGINE_INSTANCE"])
    assert len(instances) == len(SERVICES), "each service its own instance name"


def test_no_secret_is_written_in_the_file():
    for name, service in engine_services().items():
        environment = service["environment"]
        url = environment["TASKENGINE_DATABASE_URL"]
        password = url.split("://", 1)[1].split("@", 1)[0].split(":", 1)[1]
        assert INTERPOLATED.match(password), f"{name}: a password in TASKENGINE_DATABASE_URL"
        for secret in ("TASKENGINE_WEBHOOK_KEY", "TASKENGINE_NATS_PASSWORD"):
            if secret in environment:
                assert INTERPOLATED.match(environment[secret]), name


def test_the_webhook_key_reaches_the_services_that_sign_or_check_with_it():
    """The notifier signs callbacks with it, the dispatcher derives workers' tokens from it and
    the gateway checks them with it; no other service gets it."""
    given = {
        n for n, s in engine_services().items() if "TASKENGINE_WEBHOOK_KEY" in s["environment"]
    }
    assert given == {"notifier", "dispatcher", "gateway"}


def test_the_dispatcher_runs_attempts_in_its_container():
    """Compose has no cluster: the local executor (the others are commented options)."""
    environment = compose()["services"]["dispatcher"]["environment"]
    assert environment["TASKENGINE_EXECUTOR"] == "local"


def test_every_service_serves_metrics_where_its_labels_tell_prometheus():
    for name in SERVICES:
        service = compose()["services"][name]
        environment = service["environment"]
        port = environment["TASKENGINE_METRICS_PORT"]
        assert int(port) > 0, name
        assert environment["TASKENGINE_METRICS_HOST"] == "0.0.0.0", name  # reachable
        assert service["labels"] == {
            "prometheus.io/scrape": "true",
            "prometheus.io/port": port,
            "prometheus.io/path": "/metrics",
        }, name
    assert "labels" not in compose()["services"]["migrate"]  # a one-shot: nothing to scrape
