"""The Task Engine `/jobs` filters: a list's query parameters as a `JobFilter`."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

from taskengine_core.dialects.taskengine.status import FAILED, STATE_NUMBERS
from taskengine_store.queries import JOB_ORDER, JobFilter

from taskengine_gateway.errors import BadRequest

DEFAULT_LIMIT, MAX_LIMIT = 10, 1000


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


def list_filter(params: Mapping[str, str], client: str) -> JobFilter:
    """`GET /jobs`'s query: the caller's jobs, filtered, newest first unless `asc=1`."""
    states = None
    state = _integer(params, "state")
    if state is not None:
        if state not in STATE_NUMBERS:
            raise BadRequest("state must be one of 0 (queued) to 6 (paused)")
        chosen = list(STATE_NUMBERS[state])
        failed = _flag(params, "failed")
        if state == 2 and failed is not None:
            chosen = [s for s in chosen if (s in FAILED) == failed]
        states = [str(s) for s in chosen]
    job_ids = None
    if params.get("job_ids"):
        try:
            job_ids = [int(part) for part in params["job_ids"].split(",") if part.strip()]
        except ValueError:
            raise BadRequest("job_ids must be comma-separated job ids") from None
    if "\x00" in params.get("search", ""):
        raise BadRequest("search must not contain NUL characters")
    order = params.get("order_by", "id")
    if order not in JOB_ORDER:
        raise BadRequest(f"order_by must be one of {', '.join(JOB_ORDER)}")
    limit = _integer(params, "limit")
    limit = DEFAULT_LIMIT if limit is None else limit
    if not 1 <= limit <= MAX_LIMIT:
        raise BadRequest(f"limit must be from 1 to {MAX_LIMIT}")
    return JobFilter(
        client,
        states=states,
        created_from=_date(params, "from"),
        created_to=_date(params, "to"),
        job_ids=job_ids,
        persist=_flag(params, "persist"),
        search=params.get("search") or None,
        order_by=order,
        ascending=bool(_flag(params, "asc")),
        limit=limit,
        nothing="client" in params and params["client"] != client,  # another tenant's
    )
