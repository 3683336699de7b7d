"""`taskengine probe SERVICE`: is this service instance alive? For container health checks.

Every service instance publishes a `Heartbeat` on core NATS every 2 s from its event loop
(`taskengine_runtime.runtime`), so hearing one proves the process is running and not stuck. The
probe listens on the service's heartbeat subject and exits 0 as soon as the instance is heard,
1 if it is not heard within the timeout or NATS cannot be reached.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import TYPE_CHECKING, Any

import msgspec
from taskengine_contracts import subjects
from taskengine_contracts.events import Heartbeat
from taskengine_core.config import EngineSettings, engine_settings

from taskengine_cli.endpoints import endpoints_file

if TYPE_CHECKING:  # nats is imported where it is used: `taskengine --help` need not load it
    from nats.aio.msg import Msg

SERVICES = ("gateway", "relay", "projector", "scheduler", "admission", "dispatcher", "notifier")
TIMEOUT = 5.0
"""Seconds to listen: two and a half heartbeat intervals."""

_decoder = msgspec.json.Decoder(Heartbeat)


def instance_name(config: EngineSettings, service: str) -> str:
    """The name the service's runtime gives itself (`Runtime.instance` of taskengine_runtime)."""
    return config.instance or f"{service}-{os.uname().nodename}"


def nats_url(config: EngineSettings) -> str | None:
    """`TASKENGINE_NATS_URL`, else the server `taskengine up` is using."""
    if config.nats_url:
        return config.nats_url
    path = endpoints_file(config.data_dir)
    if path.exists():
        return json.loads(path.read_text()).get("nats_url")
    return None


async def heard(url: str, service: str, instance: str, timeout: float, **options: Any) -> bool:
    """Whether a heartbeat of `instance` of `service` arrives within `timeout` seconds
    (connecting included); raises if NATS refuses the connection."""
    import nats

    arrived = asyncio.Event()

    async def on_beat(message: Msg) -> None:
        try:
            beat = _decoder.decode(message.data)
        except msgspec.DecodeError:
            return
        if beat.service == service and beat.instance == instance:
            arrived.set()

    async def quiet(*_: object) -> None:
        return None

    try:
        async with asyncio.timeout(timeout):
            nc = await nats.connect(
                [server.strip() for server in url.split(",") if server.strip()],
                name=f"probe-{service}",
                connect_timeout=max(int(timeout), 1),
                max_reconnect_attempts=1,
                reconnect_time_wait=0.1,
                error_cb=quiet,
                **options,
            )
            try:
                await nc.subscribe(subjects.heartbeat_subject(service), cb=on_beat)
                await arrived.wait()
                return True
            finally:
                await nc.close()
    except TimeoutError:
        return False


def cmd_probe(args: argparse.Namespace) -> int:
    config = engine_settings()
    instance = args.instance or instance_name(config, args.service)
    url = nats_url(config)
    if not url:
        print("taskengine probe: no NATS (set TASKENGINE_NATS_URL)", file=sys.stderr)
        return 1
    try:
        alive = asyncio.run(
            heard(url, args.service, instance, args.timeout, **config.nats_options())
        )
    except Exception as error:  # refused, unresolvable, bad URL (which may hold a password)
        print(f"taskengine probe: cannot reach NATS ({type(error).__name__})", file=sys.stderr)
        return 1
    if not alive:
        print(f"no heartbeat from {instance} within {args.timeout:g}s", file=sys.stderr)
        return 1
    print(f"{instance} is alive")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    """Adds `probe` to the `taskengine` command."""
    probe = commands.add_parser(
        "probe",
        help="exit 0 if this service instance sends heartbeats (a container health check)",
    )
    probe.add_argument("service", choices=SERVICES)
    probe.add_argument(
        "--instance",
        help="the instance to hear (default: TASKENGINE_INSTANCE, else SERVICE-<hostname>)",
    )
    probe.add_argument(
        "--timeout", type=float, default=TIMEOUT, help=f"seconds to wait (default {TIMEOUT:g})"
    )
    probe.set_defaults(func=cmd_probe)
