"""The gateway process: the only HTTP entry point, serving every dialect from one app."""

from __future__ import annotations

import logging
import socket

import uvicorn
from litestar import Litestar, Request
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme
from taskengine_core.config import EngineSettings
from taskengine_core.outbound import OutboundGuard, parse_allowlist
from taskengine_runtime import Runtime, metrics

from taskengine_gateway.auth import Authenticator, Client
from taskengine_gateway.bodies import before_body
from taskengine_gateway.corked import CorkedHttpToolsProtocol
from taskengine_gateway.dashboard.api import DashboardController, static_files
from taskengine_gateway.dashboard.feed import dashboard_updates
from taskengine_gateway.dialects.drove_api import DroveController
from taskengine_gateway.dialects.taskengine_api import VERSION, TaskEngineController
from taskengine_gateway.dialects.taskengine_errors import TASKENGINE
from taskengine_gateway.dialects.tasks_api import TasksController
from taskengine_gateway.dialects.worktasks_api import WorkTasksController
from taskengine_gateway.dialects.worktasks_ws import mask_tokens_in_logs, task_updates
from taskengine_gateway.errors import handler
from taskengine_gateway.health import Heartbeats
from taskengine_gateway.limits import ByteBudget
from taskengine_gateway.reading import Reads, stale_header
from taskengine_gateway.state import GatewayState
from taskengine_gateway.submitter import Submitter

log = logging.getLogger(__name__)


OPENAPI = OpenAPIConfig(
    title="Taskengine",
    version=VERSION,
    description=(
        "One engine, four task APIs: the Task Engine API (`/job`, `/jobs`, `/logs`, ...),"
        " scheduled tasks (`/tasks`, `/events`), work tasks (`/api/worktasks`) and Drove's"
        " container tasks (`/apis/v1`). Each answers its errors in its own shape. Clients send"
        " their key as `Authorization: Bearer <key>`, as Basic `client:key`, or as the"
        " `client` and `api-key` headers; `GET /` alone needs none."
    ),
    path="/schema",
    render_plugins=[SwaggerRenderPlugin(path="/")],
    components=Components(
        security_schemes={
            "bearer": SecurityScheme(type="http", scheme="bearer", description="the key"),
            "basic": SecurityScheme(type="http", scheme="basic", description="client:key"),
            "client": SecurityScheme(
                type="apiKey", name="client", security_scheme_in="header", description="name"
            ),
            "api-key": SecurityScheme(
                type="apiKey", name="api-key", security_scheme_in="header", description="key"
            ),
        }
    ),
    security=[{"bearer": []}, {"basic": []}, {"client": [], "api-key": []}],
)
"""The OpenAPI document (`/schema/openapi.json`, committed as `contracts/openapi.json`) and
its pages: Swagger UI at `/schema`."""


def create_app(state: GatewayState) -> Litestar:
    async def provide_state() -> GatewayState:
        return state

    async def provide_client(request: Request, gateway: NamedDependency[GatewayState]) -> Client:
        """The client `before_body` authenticated (or, for a dependency alone, now).

        It depends on `gateway` so that Litestar resolves the two one after the other: two
        independent dependencies are resolved in an anyio task group of their own, which cost
        a fifth of the gateway's time per request.
        """
        client = getattr(request.state, "client", None)
        return client if client is not None else await gateway.authenticator.authenticate(request)

    return Litestar(
        route_handlers=[
            TaskEngineController,
            TasksController,
            WorkTasksController,
            DroveController,
            task_updates,
            DashboardController,
            static_files,
            dashboard_updates,
        ],
        dependencies={"gateway": Provide(provide_state), "client": Provide(provide_client)},
        exception_handlers=handler(TASKENGINE),
        before_request=before_body,
        middleware=[stale_header],
        state=State({"gateway": state}),
        request_max_body_size=state.runtime.config.max_body_bytes,
        openapi_config=OPENAPI,
        logging_config=None,
    )


def _job_counts(runtime: Runtime) -> list[tuple[str, str, int]]:
    """Jobs by state and dialect in the read model (blocking: called when scraped)."""
    rows = runtime.store.query(metrics.JOB_COUNTS_SQL)
    return [(row["state"], row["dialect"], row["jobs"]) for row in rows]


def listening_socket(config: EngineSettings) -> socket.socket:
    """The gateway's socket on `host:port`; with `reuse_port`, shared with the other gateways
    on this host that set it too (the kernel spreads new connections over them)."""
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if config.reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((config.host, config.port))
    sock.set_inheritable(True)
    return sock


async def gateway(runtime: Runtime) -> None:
    state = GatewayState(
        runtime,
        Submitter(runtime),
        Authenticator(runtime),
        Heartbeats(),
        OutboundGuard(parse_allowlist(runtime.config.callback_allowlist)),
        Reads(runtime),
        ByteBudget(runtime.config.max_bytes_per_second_per_client, runtime.config.max_body_bytes),
    )
    state.submitter.start()
    metrics.JOBS.count_with(lambda: _job_counts(runtime))
    mask_tokens_in_logs()  # WebSocket clients may send their key as ?token=
    await state.heartbeats.follow(runtime.nc)
    config = uvicorn.Config(
        create_app(state),
        host=runtime.config.host,
        port=runtime.config.port,
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_keep_alive=runtime.config.keep_alive,
        http=CorkedHttpToolsProtocol,
    )
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]

    def stop() -> None:  # finish in-flight requests (and their commits), then exit
        server.should_exit = True

    runtime.on_stop = stop
    try:
        await server.serve(sockets=[listening_socket(runtime.config)])
    finally:
        await state.submitter.stop()
