"""Job lists from the `rm_jobs` read model: the Task Engine `/jobs` filters and `/dashboard`."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from taskengine_core.jobs import JobState

from taskengine_gateway.errors import BadRequest

S = JobState
STATE_NUMBERS: dict[int, tuple[JobState, ...]] = {
    0: (S.QUEUED,),
    1: (S.ADMITTED, S.RUNNING),
    2: (S.SUCCEEDED, S.FAILED, S.TIMED_OUT),
    3: (S.RETRY_WAIT,),
    4: (S.CANCELLED, S.BROKEN),
    5: (S.SCHEDULED,),
    6: (S.PAUSED,),
}
FAILED = (S.FAILED, S.TIMED_OUT)
ORDER_BY = {
    "id": "job_id",
    "client": "client",
    "workflow": "workflow",
    "priority": "priority",
    "position": "position",
    "created_at": "created_at",
    "updated_at": "updated_at",
    "queue_state": "state",
    "run_at": "run_at",
}
DEFAULT_LIMIT, MAX_LIMIT = 10, 1000

_SELECT = (
    "WITH queue AS (SELECT job_uuid, rank() OVER (ORDER BY priority, updated_at, job_id)"
    " AS position FROM rm_jobs WHERE state = 'queued')"
    " SELECT j.*, coalesce(q.position, 0) AS position FROM rm_jobs j"
    " LEFT JOIN queue q USING (job_uuid)"
)


def _flag(params: Mapping[str, str], name: str) -> bool | None:
    value = params.get(name)
    if value is None:
        return None
    if value.lower() in ("1", "true"):
        return True
    if value.lower() in ("0", "false"):
        return False
    raise BadRequest(f"{name} must be 1 (true) or 0 (false), got {value!r}")


def _integer(params: Mapping[str, str], name: str) -> int | None:
    value = params.get(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise BadRequest(f"{name} must be an integer, got {value!r}") from None


def _date(params: Mapping[str, str], name: str) -> datetime | None:
    value = params.get(name)
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(f"{name} must be a date or time like 2020-09-24T11:55:33.755") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def list_query(params: Mapping[str, str], client: str) -> tuple[str, list[Any]]:
    """SQL for `GET /jobs`: the caller's jobs, filtered, newest first unless `asc=1`."""
    where, args = ["j.client = %s"], [client]
    if "client" in params and params["client"] != client:
        where.append("false")  # another tenant's jobs do not exist for the caller
    state = _integer(params, "state")
    if state is not None:
        if state not in STATE_NUMBERS:
            raise BadRequest("state must be one of 0 (queued) to 6 (paused)")
        states = list(STATE_NUMBERS[state])
        failed = _flag(params, "failed")
        if state == 2 and failed is not None:
            states = [s for s in states if (s in FAILED) == failed]
        where.append("j.state = ANY(%s)")
        args.append([str(s) for s in states])
    for name, operator in (("from", ">="), ("to", "<=")):
        moment = _date(params, name)
        if moment is not None:
            where.append(f"j.created_at {operator} %s")
            args.append(moment)
    if params.get("job_ids"):
        try:
            ids = [int(part) for part in params["job_ids"].split(",") if part.strip()]
        except ValueError:
            raise BadRequest("job_ids must be comma-separated job ids") from None
        where.append("j.job_id = ANY(%s)")
        args.append(ids)
    persist = _flag(params, "persist")
    if persist is not None:
        where.append("j.persist = %s")
        args.append(persist)
    if "\x00" in params.get("search", ""):
        raise BadRequest("search must not contain NUL characters")
    if params.get("search"):
        where.append("j.parameters::text ILIKE %s")
        args.append("%" + params["search"].replace("%", r"\%").replace("_", r"\_") + "%")
    order = params.get("order_by", "id")
    if order not in ORDER_BY:
        raise BadRequest(f"order_by must be one of {', '.join(ORDER_BY)}")
    direction = "ASC" if _flag(params, "asc") else "DESC"
    limit = _integer(params, "limit")
    limit = DEFAULT_LIMIT if limit is None else limit
    if not 1 <= limit <= MAX_LIMIT:
        raise BadRequest(f"limit must be from 1 to {MAX_LIMIT}")
    sql = (
        f"{_SELECT} WHERE {' AND '.join(where)}"
        f" ORDER BY {ORDER_BY[order]} {direction}, j.job_id {direction} LIMIT %s"
    )
    return sql, [*args, limit]


def dashboard_query(client: str) -> tuple[str, list[Any]]:
    """The caller's started, queued and scheduled jobs, in admission order."""
    states = ["admitted", "running", "queued", "scheduled"]
    return (
        f"{_SELECT} WHERE j.client = %s AND j.state = ANY(%s)"
        " ORDER BY j.priority, j.updated_at, j.job_id",
        [client, states],
    )
