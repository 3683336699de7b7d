"""`taskengine probe SERVICE` against a real NATS (and a real service), as a container runs it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import msgspec
import nats
from taskengine_cli.probe import SERVICES, instance_name
from taskengine_cli.supervisor import SERVICES as SUPERVISED
from taskengine_contracts import subjects
from taskengine_contracts.events import Heartbeat
from taskengine_core.config import EngineSettings
from taskengine_embedded import free_port
from taskengine_runtime.runtime import Runtime

BIN = Path(sys.executable).parent


def environment(tmp_path: Path, **settings: str) -> dict[str, str]:
    """The process environment without any TASKENGINE_* of the developer's own."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TASKENGINE_")}
    return {**clean, "TASKENGINE_DATA_DIR": str(tmp_path), **settings}


async def probe(env: dict[str, str], *args: str) -> tuple[int, str]:
    """The probe's exit code and output; a probe that hangs fails the test after 30 s."""
    process = await asyncio.create_subprocess_exec(
        str(BIN / "taskengine"),
        "probe",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout=30)
    return process.returncode or 0, output.decode()


@contextlib.asynccontextmanager
async def beating(nats_url: str, service: str, instance: str):
    """Publishes `instance`'s heartbeats, faster than a service does, while in the block."""
    nc = await nats.connect(nats_url)

    async def beat() -> None:
        while True:
            message = Heartbeat(service=service, instance=instance, working=0, at=datetime.now(UTC))
            await nc.publish(subjects.heartbeat_subject(service), msgspec.json.encode(message))
            await asyncio.sleep(0.1)

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
        await nc.close()


async def test_probe_passes_when_its_instance_beats(nats_url, tmp_path):
    env = environment(tmp_path, TASKENGINE_NATS_URL=nats_url, TASKENGINE_INSTANCE="relay-7")
    async with beating(nats_url, "relay", "relay-7"):
        code, output = await probe(env, "relay")
        assert code == 0, output
        code, output = await probe(env, "relay", "--instance", "relay-7", "--timeout", "3")
    assert code == 0, output
    assert "relay-7 is alive" in output


async def test_probe_fails_when_only_other_instances_or_services_beat(nats_url, tmp_path):
    env = environment(tmp_path, TASKENGINE_NATS_URL=nats_url, TASKENGINE_INSTANCE="relay-7")
    async with beating(nats_url, "relay", "relay-8"), beating(nats_url, "projector", "relay-7"):
        code, output = await probe(env, "relay", "--timeout", "1")
    assert code == 1, output
    assert "no heartbeat from relay-7 within 1s" in output


async def test_probe_fails_when_nats_is_unreachable(tmp_path):
    env = environment(tmp_path, TASKENGINE_NATS_URL=f"nats://127.0.0.1:{free_port()}")
    code, output = await probe(env, "relay", "--timeout", "2")
    assert code == 1, output
    assert "cannot reach NATS" in output or "no heartbeat" in output


def test_probe_knows_every_service():
    assert sorted(SERVICES) == sorted(SUPERVISED)


def test_probe_listens_for_the_name_the_service_gives_itself():
    for configured in ("", "dispatcher-0"):
        config = EngineSettings(instance=configured)
        runtime = SimpleNamespace(config=config, name="dispatcher")
        assert instance_name(config, "dispatcher") == Runtime.instance.fget(runtime)


def test_probe_tells_a_real_service_is_alive_and_then_that_it_is_gone(
    nats_url, database_url, tmp_path
):
    """The compose sequence: `taskengine migrate`, the service, then its health check."""
    env = environment(tmp_path, TASKENGINE_NATS_URL=nats_url, TASKENGINE_DATABASE_URL=database_url)
    migrate = subprocess.run(
        [str(BIN / "taskengine"), "migrate"], env=env, capture_output=True, text=True, timeout=60
    )
    assert migrate.returncode == 0, migrate.stderr
    log = open(tmp_path / "relay.log", "wb")  # noqa: SIM115
    relay = subprocess.Popen(  # no TASKENGINE_INSTANCE: it names itself after the host
        [sys.executable, "-m", "taskengine_relay"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        code, output = asyncio.run(probe(env, "relay", "--timeout", "15"))
        assert code == 0, output + (tmp_path / "relay.log").read_text()
        assert f"relay-{os.uname().nodename} is alive" in output
    finally:
        relay.terminate()
        relay.wait(timeout=30)
        log.close()
    code, output = asyncio.run(probe(env, "relay", "--timeout", "1"))
    assert code == 1, output
