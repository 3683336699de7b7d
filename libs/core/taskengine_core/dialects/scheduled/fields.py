"""A scheduled task request's fields checked: `InvalidTask` names the field that does not
validate (time zone, bounded integers, backoff, keys, dedupe, UUIDs)."""

from __future__ import annotations

from functools import cache
from typing import get_args
from uuid import UUID
from zoneinfo import ZoneInfo, available_timezones

from taskengine_contracts.events import Backoff

from taskengine_core.errors import DomainError

BACKOFF_STRATEGIES: tuple[Backoff, ...] = get_args(Backoff)
LIMITS: dict[str, tuple[int, int]] = {
    "priority": (1, 9),
    "max_retries": (0, 100),
    "dedupe_window_seconds": (1, 31 * 24 * 3600),
    "delay_seconds": (1, 7 * 24 * 3600),
}
"""Inclusive bounds of the integer request fields, checked by `check_int`."""
MAX_KEY_LENGTH = 200
"""Longest event topic, dedupe key or concurrency key."""


class InvalidTask(DomainError):
    """A task request the domain refuses; `field` names the offending request field."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


@cache
def _zone_names() -> frozenset[str]:
    return frozenset(available_timezones()) - {"localtime"}


def check_timezone(name: object) -> ZoneInfo:
    """The IANA zone called `name`."""
    if not isinstance(name, str) or name not in _zone_names():
        raise InvalidTask("timezone", f"unknown IANA time zone {name!r}")
    return ZoneInfo(name)


def check_int(field: str, value: object) -> int:
    """An integer request field within its `LIMITS`."""
    low, high = LIMITS[field]
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidTask(field, f"must be an integer from {low} to {high}, got {value!r}")
    return value


def check_backoff(value: object) -> Backoff:
    if value not in BACKOFF_STRATEGIES:
        raise InvalidTask("backoff_strategy", f"must be one of {', '.join(BACKOFF_STRATEGIES)}")
    return value


def check_key(value: object, field: str = "schedule_expr") -> str:
    """An event topic, dedupe or concurrency key: printable, no whitespace, at most 200 chars."""
    if (
        not isinstance(value, str)
        or not 0 < len(value) <= MAX_KEY_LENGTH
        or not value.isprintable()
        or any(char.isspace() for char in value)
    ):
        raise InvalidTask(
            field, f"must be 1 to {MAX_KEY_LENGTH} printable characters without whitespace"
        )
    return value


def check_dedupe(key: object, window: object) -> tuple[str | None, int | None]:
    """The dedupe key and window; a window without a key means nothing, so it is refused."""
    if window is not None and key is None:
        raise InvalidTask("dedupe_window_seconds", "needs a dedupe_key")
    return (
        None if key is None else check_key(key, "dedupe_key"),
        None if window is None else check_int("dedupe_window_seconds", window),
    )


def check_uuid(field: str, value: object) -> UUID:
    if isinstance(value, UUID):
        return value
    if isinstance(value, str):
        try:
            return UUID(value)
        except ValueError:
            pass
    raise InvalidTask(field, f"must be a UUID, got {value!r}")
