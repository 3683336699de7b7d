"""How the dialects write an instant: ISO 8601 in UTC, `Z` for the offset."""

from __future__ import annotations

from datetime import UTC, datetime


def iso(moment: datetime | None) -> str | None:
    """ISO 8601 in UTC, `Z` for the offset."""
    return None if moment is None else moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def aware(moment: datetime) -> datetime:
    """`moment`, which must be timezone-aware, in UTC."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"expected a timezone-aware datetime, got {moment!r}")
    return moment.astimezone(UTC)
