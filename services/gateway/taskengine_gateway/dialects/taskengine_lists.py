"""The Task Engine `/jobs` filters: a list's query parameters as a `JobFilter`.

`order_by` takes a job property's name or its number (`ORDER_NUMBERS`, the seed's field order
from 0); `failed` filters with or without `state`: failed jobs are completed (2), so
`failed=1` with any other state lists none."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

from taskengine_core.dialects.taskengine.status import FAILED, QUEUE_STATE, STATE_NUMBERS
from taskengine_store.queries import JOB_ORDER, JobFilter

from taskengine_gateway.errors import BadRequest

DEFAULT_LIMIT, MAX_LIMIT = 10, 1000
ORDER_NUMBERS = dict(enumerate(JOB_ORDER))
"""`order_by`'s integer form: 0 id, 1 client, 2 workflow, 3 priority, 4 position, 5 created_at,
6 updated_at, 7 queue_state, 8 run_at."""


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


def _order(given: str) -> str:
    """The property `order_by` names, by name or by number."""
    if given.isascii() and given.isdigit() and int(given) in ORDER_NUMBERS:
        return ORDER_NUMBERS[int(given)]
    if given not in JOB_ORDER:
        choices = ", ".join(f"{n} ({name})" for n, name in ORDER_NUMBERS.items())
        raise BadRequest(f"order_by must be one of {choices}")
    return given


def list_filter(params: Mapping[str, str], client: str) -> JobFilter:
    """`GET /jobs`'s query: the caller's jobs, filtered, newest first unless `asc=1`."""
    state = _integer(params, "state")
    if state is not None and state not in STATE_NUMBERS:
        raise BadRequest("state must be one of 0 (queued) to 6 (paused)")
    failed = _flag(params, "failed")
    states = None
    if state is not None or failed is not None:
        chosen = STATE_NUMBERS[state] if state is not None else tuple(QUEUE_STATE)
        states = [str(s) for s in chosen if failed is None or (s in FAILED) == failed]
    job_ids = None
    if params.get("job_ids"):
        try:
            job_ids = [int(part) for part in params["job_ids"].split(",") if part.strip()]
        except ValueError:
            raise BadRequest("job_ids must be comma-separated job ids") from None
    if "\x00" in params.get("search", ""):
        raise BadRequest("search must not contain NUL characters")
    order = _order(params.get("order_by", "id"))
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
