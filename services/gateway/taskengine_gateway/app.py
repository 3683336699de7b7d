"""The gateway process: the only HTTP entry point, serving every dialect from one app."""

from __future__ import annotations

import logging

import uvicorn
from litestar import Litestar, Request
from litestar.datastructures import State
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from taskengine_core.outbound import OutboundGuard, parse_allowlist
from taskengine_runtime import Runtime, metrics

from taskengine_gateway.auth import Authenticator, Client
from taskengine_gateway.bodies import before_body
from taskengine_gateway.dashboard.api import DashboardController, static_files
from taskengine_gateway.dashboard.feed import dashboard_updates
from taskengine_gateway.dialects.drove_api import DroveController
from taskengine_gateway.dialects.taskengine_api import TaskEngineController
from taskengine_gateway.dialects.taskengine_errors import TASKENGINE
from taskengine_gateway.dialects.tasks_api import TasksController
from taskengine_gateway.dialects.worktasks_api import WorkTasksController
from taskengine_gateway.dialects.worktasks_ws import mask_tokens_in_logs, task_updates
from taskengine_gateway.errors import handler
from taskengine_gateway.health import Heartbeats
from taskengine_gateway.reading import Reads, stale_header
from taskengine_gateway.state import GatewayState
from taskengine_gateway.submitter import Submitter

log = logging.getLogger(__name__)


def create_app(state: GatewayState) -> Litestar:
    async def provide_state() -> GatewayState:
        return state

    async def provide_client(request: Request) -> Client:
        """The client `before_body` authenticated (or, for a dependency alone, now)."""
        client = getattr(request.state, "client", None)
        return client if client is not None else await state.authenticator.authenticate(request)

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
        openapi_config=OpenAPIConfig(title="Taskengine", version="0.1.0", path="/schema"),
        logging_config=None,
    )


def _job_counts(runtime: Runtime) -> list[tuple[str, str, int]]:
    """Jobs by state and dialect in the read model (blocking: called when scraped)."""
    rows = runtime.store.query(metrics.JOB_COUNTS_SQL)
    return [(row["state"], row["dialect"], row["jobs"]) for row in rows]


async def gateway(runtime: Runtime) -> None:
    state = GatewayState(
        runtime,
        Submitter(runtime),
        Authenticator(runtime),
        Heartbeats(),
        OutboundGuard(parse_allowlist(runtime.config.callback_allowlist)),
        Reads(runtime),
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
    )
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]

    def stop() -> None:  # finish in-flight requests (and their commits), then exit
        server.should_exit = True

    runtime.on_stop = stop
    try:
        await server.serve()
    finally:
        await state.submitter.stop()
