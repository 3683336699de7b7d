"""compose.yaml: valid by the Compose Specification, and the topology it promises."""

from __future__ import annotations

import re

from jsonschema import validators
from taskengine_cli.supervisor import SERVICES

from tests.deploy.files import SETTINGS, check_command, compose, compose_schema

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
        if "TASKENGINE_WEBHOOK_KEY" in environment:
            assert INTERPOLATED.match(environment["TASKENGINE_WEBHOOK_KEY"]), name


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
