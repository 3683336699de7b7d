"""The Task Engine dialect's request fields parsed; a bad one is a `BadRequest` naming it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from taskengine_gateway.errors import BadRequest

MIN_PRIORITY, MAX_PRIORITY, DEFAULT_PRIORITY = 1, 10, 5


def parse_run_at(value: object) -> datetime:
    """`yyyy-MM-ddTHH:mm:ss.fff` in UTC (an explicit offset or `Z` is accepted too)."""
    if not isinstance(value, str):
        raise BadRequest("run_at must be a string like 2030-01-31T14:30:00.000 (UTC)")
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    except (ValueError, OverflowError):
        raise BadRequest(f"run_at {value!r} is not yyyy-MM-ddTHH:mm:ss.fff (UTC)") from None


def parse_priority(value: object) -> int:
    if isinstance(value, bool):
        raise BadRequest("priority must be an integer from 1 (highest) to 10")
    try:
        priority = int(value) if isinstance(value, (int, str)) else None  # type: ignore[arg-type]
    except ValueError:
        priority = None
    if priority is None or not MIN_PRIORITY <= priority <= MAX_PRIORITY:
        raise BadRequest(f"priority must be an integer from 1 (highest) to 10, got {value!r}")
    return priority


MAX_CALLBACKS = 20
MAX_URL = 2048
"""Characters a callback or semaphore URL may have: what the services keep of each (the
notifier's and scheduler's per-URL answers, `JUDGED` of them) stays bounded in bytes too."""


def parse_url(url: object, name: str) -> str:
    """A well-formed http(s) URL with a valid port and host, of at most `MAX_URL` characters."""
    if isinstance(url, str) and len(url) > MAX_URL:
        raise BadRequest(f"{name}: a URL may have at most {MAX_URL} characters, got {len(url)}")
    try:
        parts = urlsplit(url) if isinstance(url, str) else None
        if parts:
            parts.port  # noqa: B018  (raises on a bad port)
            (parts.hostname or "").encode("idna")
    except (ValueError, UnicodeError):
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadRequest(f"{name}: {url!r} is not an http(s) URL")
    return url  # type: ignore[return-value]


def parse_callbacks(parameters: dict[str, Any]) -> list[str]:
    """The distinct callback URLs of `parameters.rest_endpoints`."""
    endpoints = parameters.get("rest_endpoints", [])
    if not isinstance(endpoints, list):
        raise BadRequest("parameters.rest_endpoints must be a list of URLs")
    if len(endpoints) > MAX_CALLBACKS:
        raise BadRequest(f"parameters.rest_endpoints: at most {MAX_CALLBACKS} URLs")
    return list(dict.fromkeys(parse_url(url, "parameters.rest_endpoints") for url in endpoints))


SEMAPHORE_FIELDS = ("semaphore_url", "sempahore_url")
"""The field and the seed's own spelling of it; both are accepted."""


def parse_semaphore(data: dict[str, Any]) -> str | None:
    """The semaphore URL in `data` (null or "" for none); data must hold one of the fields."""
    values = [data[name] for name in SEMAPHORE_FIELDS if name in data]
    if any(value is not None and not isinstance(value, str) for value in values):
        raise BadRequest("semaphore_url must be an http(s) URL, or null for none")
    given = set(values)
    if len(given) > 1:
        raise BadRequest("semaphore_url and sempahore_url differ: send one")
    [value] = given
    return None if value in (None, "") else parse_url(value, "semaphore_url")


def parse_timeout(parameters: dict[str, Any]) -> float | None:
    timeout = parameters.get("timeout")
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise BadRequest("parameters.timeout must be a positive number of seconds")
    if not 0 < timeout <= MAX_TIMEOUT:
        raise BadRequest(f"parameters.timeout must be from 0 to {MAX_TIMEOUT} seconds")
    return float(timeout)


MAX_TIMEOUT = 7 * 24 * 3600
