"""`/ui` and `/ui/api/...`: the dashboard's page and its reads.

The page itself is static (`static/`). Its reads are here only where no dialect's route gives
what it needs: each dialect's lists are scoped to the caller, while the dashboard lists every
dialect's jobs in one table, and an admin's dashboard every client's. Every list goes through
`gateway.reads.query` (read-your-writes); one job is folded from its own stream.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from litestar import Controller, Request, Response, get
from litestar.di import NamedDependency
from litestar.exceptions import NotFoundException
from litestar.params import FromPath
from litestar.static_files import create_static_files_router
from taskengine_contracts.events import Event, JobEvent, StepChanged, topic_of
from taskengine_core.clients import mask_secrets, mask_values
from taskengine_core.deliveries import delivery_key
from taskengine_core.dialects import drove, scheduled, taskengine, worktasks
from taskengine_core.dialects.drove.status import task_status
from taskengine_core.dialects.scheduled.status import run_status
from taskengine_core.dialects.scheduled.view import row_view as task_row_view
from taskengine_core.dialects.taskengine.status import QUEUE_STATE
from taskengine_core.dialects.taskengine.view import stamp
from taskengine_core.dialects.worktasks.status import status_of
from taskengine_core.ids import callback_stream, execution_stream, job_stream
from taskengine_core.jobs import Job, JobState
from taskengine_store import queries
from taskengine_store.queries import JobFilter

from taskengine_gateway.auth import Client
from taskengine_gateway.dialects.taskengine_api import current_settings
from taskengine_gateway.errors import BadRequest
from taskengine_gateway.job_io import JOB_NUMBER
from taskengine_gateway.state import GatewayState

STATIC = Path(__file__).parent / "static"
DIALECTS = (taskengine.DIALECT, worktasks.DIALECT, scheduled.DIALECT, drove.DIALECT)
MAX_LIMIT = 500
MAX_SEARCH = 200
ATTEMPTS_SHOWN = 20
"""A job's last attempts whose steps (and their callbacks) its page shows."""
CALLBACKS_SHOWN = 500
DETAILS = (
    "state",
    "priority",
    "attempt",
    "executor",
    "reason",
    "failure",
    "exit_code",
    "retry_at",
    "run_at",
    "by",
    "timeout",
    "changed",
    "rerun_as",
    "step",
    "name",
    "event",
)
"""The fields of an event its line in a job's timeline shows (never parameters or env)."""
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
        " connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}
"""The page runs only its own script and talks only to its own origin (its socket too)."""

static_files = create_static_files_router(
    path="/ui/static", directories=[STATIC], include_in_schema=False, name="dashboard_static"
)


class DashboardController(Controller):
    path = "/ui"
    include_in_schema = False

    @get("/", operation_id="dashboard_page")
    async def page(self) -> Response:
        html = (STATIC / "index.html").read_bytes()
        return Response(html, media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)

    @get("/api/me", operation_id="dashboard_me")
    async def me(self, client: NamedDependency[Client]) -> dict:
        """Who the key belongs to: the page's sign-in check."""
        return {"client": client.name, "admin": client.admin}

    @get("/api/queues", operation_id="dashboard_queues")
    async def queues(
        self, gateway: NamedDependency[GatewayState], client: NamedDependency[Client]
    ) -> dict:
        """Jobs not yet ended by priority and state, and the admission settings."""
        rows = await gateway.reads.query(queries.jobs_by_state_and_priority, _scope(client))
        settings = await current_settings(gateway)
        priorities: dict[int, dict[str, int]] = {}
        for row in rows:
            counts = priorities.setdefault(row["priority"], {})
            counts[row["state"]] = row["jobs"]
        return {
            "scope": "all clients" if client.admin else client.name,
            "max_jobs": settings.max_jobs,
            "priority_slots": settings.int("priority_slots"),
            "priority_threshold": settings.int("priority_threshold"),
            "priorities": [
                {"priority": priority, **counts} for priority, counts in sorted(priorities.items())
            ],
        }

    @get("/api/jobs", operation_id="dashboard_jobs")
    async def jobs(
        self,
        request: Request,
        gateway: NamedDependency[GatewayState],
        client: NamedDependency[Client],
    ) -> list[dict]:
        """Every dialect's jobs, newest first: `dialect`, `state`, `search` (in parameters),
        `client` (an admin's choice), `limit`."""
        wanted = dashboard_filter(request.query_params, client)
        rows = await gateway.reads.query(queries.job_list, wanted)
        return [job_row(row) for row in rows]

    @get("/api/jobs/{job_id:str}", operation_id="dashboard_job")
    async def job(
        self,
        job_id: FromPath[str],
        gateway: NamedDependency[GatewayState],
        client: NamedDependency[Client],
    ) -> dict:
        """One job: its state, its stored events, its steps' output and its callbacks."""
        store = gateway.runtime.store
        if not JOB_NUMBER.fullmatch(job_id):
            raise NotFoundException(f"job {job_id[:40]!r} not found")
        number = int(job_id)
        events = await gateway.runtime.call(store.stream, job_stream(number))
        job = Job.fold(e for e in events if isinstance(e, JobEvent))
        if job is None or not (client.admin or job.client == client.name):
            raise NotFoundException(f"job {number} not found")
        first = max(1, job.attempt - ATTEMPTS_SHOWN + 1)
        attempts = [execution_stream(number, a) for a in range(first, job.attempt + 1)]
        executions = await gateway.runtime.call(store.streams, attempts)
        steps = [e for s in attempts for e in executions[s] if isinstance(e, StepChanged)]
        timeline = sorted([*events, *steps], key=lambda e: e.at)
        asked = _callbacks_asked(number, timeline)
        deliveries = await gateway.runtime.call(store.streams, [stream for stream, *_ in asked])
        log = await gateway.reads.query(queries.job_log, number)
        return {
            "job": job_summary(job),
            "events": [event_line(e) for e in timeline],
            "log": [
                {
                    "at": stamp(row["created_at"]),
                    "severity": ("DEBUG", "INFO", "WARN", "ERROR")[row["severity"]],
                    "source": row["progname"],
                    "step": row["task_id"],
                    "message": row["message"],
                }
                for row in log
            ],
            "callbacks": [
                callback_line(url, key, deliveries[stream]) for stream, key, url in asked
            ],
        }

    @get("/api/tasks", operation_id="dashboard_tasks")
    async def tasks(
        self,
        request: Request,
        gateway: NamedDependency[GatewayState],
        client: NamedDependency[Client],
    ) -> list[dict]:
        """Scheduled tasks with their next fire, newest first."""
        limit = _limit(request.query_params)
        rows = await gateway.reads.query(queries.task_list, _scope(client), limit, 0)
        return [{**task_row_view(row), "client": row["client"]} for row in rows]


def _scope(client: Client) -> str | None:
    """Whose data a caller sees: its own, or everyone's for an admin."""
    return None if client.admin else client.name


def _limit(query: Mapping[str, str]) -> int:
    raw = query.get("limit", "50")
    if not (raw.isascii() and raw.isdigit() and 1 <= int(raw) <= MAX_LIMIT):
        raise BadRequest(f"limit must be a whole number from 1 to {MAX_LIMIT}")
    return int(raw)


def dashboard_filter(query: Mapping[str, str], client: Client) -> JobFilter:
    """The job list's query as a filter: the caller's jobs (an admin's: anyone's, or the
    `client` named)."""
    dialect = query.get("dialect") or None
    if dialect is not None and dialect not in DIALECTS:
        raise BadRequest(f"dialect must be one of {', '.join(DIALECTS)}")
    state = query.get("state") or None
    if state is not None and state not in set(JobState):
        raise BadRequest(f"state must be one of {', '.join(JobState)}")
    search = query.get("search") or None
    if search is not None and (len(search) > MAX_SEARCH or "\x00" in search):
        raise BadRequest(f"search must be at most {MAX_SEARCH} characters, without NUL")
    named = query.get("client") or None
    if client.admin:
        whose = named
    else:
        whose = client.name
    return JobFilter(
        whose,
        states=None if state is None else [state],
        search=search,
        dialect=dialect,
        limit=_limit(query),
        nothing=not client.admin and named is not None and named != client.name,
    )


def job_row(row: dict[str, Any]) -> dict[str, Any]:
    """A job of the read model in the dashboard's list."""
    return {
        "id": row["job_id"],
        "client": row["client"],
        "dialect": row["dialect"],
        "workflow": row["workflow"],
        "state": row["state"],
        "priority": row["priority"],
        "attempt": row["attempt"],
        "position": row["position"],
        "created_at": stamp(row["created_at"]),
        "updated_at": stamp(row["updated_at"]),
    }


def native_status(job: Job) -> str:
    """The job's status in the words of the dialect it came through."""
    if job.dialect == worktasks.DIALECT:
        return status_of(job)
    if job.dialect == scheduled.DIALECT:
        return run_status(job.state)
    if job.dialect == drove.DIALECT:
        status = task_status(job)
        return f"{status.state} {status.result['status']}" if status.result else status.state
    name, number = QUEUE_STATE[job.state]
    return f"{name} ({number}){', failed' if job.failed else ''}"


def job_summary(job: Job) -> dict[str, Any]:
    return {
        "id": job.job_id,
        "client": job.client,
        "dialect": job.dialect,
        "native_status": native_status(job),
        "workflow": job.workflow,
        "state": str(job.state),
        "priority": job.priority,
        "attempt": job.attempt,
        "parameters": mask_values(job.parameters),
        "created_at": stamp(job.created_at),
        "updated_at": stamp(job.updated_at),
        "run_at": stamp(job.run_at),
        "started_at": job.started_at and stamp(job.started_at),
        "finished_at": job.finished_at and stamp(job.finished_at),
        "failure": job.failure and mask_secrets(job.failure),
        "exit_code": job.exit_code,
        "task_id": job.task_id and str(job.task_id),
        "drove_task": job.attributes.get("taskId") if job.dialect == drove.DIALECT else None,
    }


def event_line(event: Event) -> dict[str, Any]:
    """One line of a job's timeline: what happened, when, and the few fields that say how."""
    details = {}
    for name in DETAILS:
        value = getattr(event, name, None)
        if value is None or value == []:
            continue
        if isinstance(value, str):
            value = mask_secrets(value)
        elif not isinstance(value, (int, float, bool, list)):
            value = stamp(value) if hasattr(value, "astimezone") else str(value)
        details[name] = value
    return {
        "type": topic_of(event),
        "version": event.version,
        "at": stamp(event.at),
        "details": details,
    }


def _callbacks_asked(number: int, timeline: list[Event]) -> list[tuple[Any, str, str]]:
    """(delivery stream, key, URL) of every callback the job's events asked for."""
    asked = []
    for event in timeline:
        key = delivery_key(event)
        if key is None:
            continue
        for url in dict.fromkeys(getattr(event, "callbacks", [])):
            asked.append((callback_stream(number, key, url), key, url))
    return asked[:CALLBACKS_SHOWN]


def callback_line(url: str, key: str, tries: list[Event]) -> dict[str, Any]:
    """One callback: where, for what, and how each try went (none yet: pending)."""
    attempts = []
    delivered = None
    for event in tries:
        if hasattr(event, "status_code"):
            delivered = event.status_code
            attempts.append({"at": stamp(event.at), "status_code": event.status_code})
        else:
            error = mask_secrets(getattr(event, "error", ""))
            attempts.append({"at": stamp(event.at), "error": error})
    return {
        "url": mask_secrets(url),
        "event": key,
        "delivered": delivered,
        "attempts": attempts,
    }
