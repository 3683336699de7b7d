"""Drove (Dropwizard) durations, as a CREATE gives them and as stored events keep them:
`5m`, `30s`, `100 seconds`, `2 minutes`, `1h`. One parser for the dialect that checks them and
the upcaster that reads old events."""

from __future__ import annotations

import re

_UNITS = {
    unit: seconds
    for seconds, units in (
        (1e-9, "ns nanosecond"),
        (1e-6, "us microsecond"),
        (1e-3, "ms millisecond"),
        (1.0, "s second"),
        (60.0, "m min minute"),
        (3600.0, "h hour"),
        (86400.0, "d day"),
    )
    for unit in units.split()
}
_DURATION = re.compile(r"\s*(\d{1,12})\s*([a-z]+)\s*")


def duration_seconds(value: object) -> float | None:
    """The seconds a duration stands for; None when `value` is not one."""
    match = _DURATION.fullmatch(value.lower()) if isinstance(value, str) else None
    if not match:
        return None
    unit = match.group(2)
    if unit not in _UNITS and unit.endswith("s"):
        unit = unit[:-1]  # plurals: seconds, minutes, mins
    return int(match.group(1)) * _UNITS[unit] if unit in _UNITS else None
