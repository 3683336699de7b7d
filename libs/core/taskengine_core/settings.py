"""Runtime settings (the Task Engine `/settings`): defaults, validation, folding of events."""

from __future__ import annotations

import builtins
from collections.abc import Iterable

import msgspec
from taskengine_contracts.events import SettingChanged

from taskengine_core.errors import InvalidSetting

DEFAULTS: dict[str, int] = {
    "max_jobs": 2,
    "priority_slots": 0,
    "priority_threshold": 5,
    "schedule_interval": 60,
    "retry_delay": 5,
    "retry_limit": 3,
    "retention_seconds": 30 * 24 * 3600,
    "retry_max_delay": 600,
}
"""`retention_seconds`: how long finished, non-persisted jobs stay in the job list and log.
`retry_max_delay`: the longest delay a backoff strategy may reach (seconds)."""
_MINIMUM = {"max_jobs": 1, "priority_threshold": 1, "retention_seconds": 1}
_MAXIMUM = {
    "retry_delay": 7 * 24 * 3600,
    "schedule_interval": 24 * 3600,
    "max_jobs": 100_000,
    "retry_limit": 1000,
    "priority_slots": 100_000,
    "priority_threshold": 10,
    "retention_seconds": 10 * 365 * 24 * 3600,
    "retry_max_delay": 7 * 24 * 3600,
}


class RuntimeSettings(msgspec.Struct):
    """Current values; known names are integers, custom names are kept as given."""

    values: dict[str, str] = msgspec.field(default_factory=dict)

    # Inside this class `int` is the method, so annotations spell `builtins.int`.
    def int(self, name: str) -> builtins.int:
        raw = self.values.get(name)
        return DEFAULTS[name] if raw is None else int(raw)

    @property
    def max_jobs(self) -> builtins.int:
        return self.int("max_jobs")

    @property
    def retry_limit(self) -> builtins.int:
        return self.int("retry_limit")

    @property
    def retry_delay(self) -> builtins.int:
        return self.int("retry_delay")

    @property
    def retry_cap(self) -> builtins.int:
        """The longest backoff delay: `retry_max_delay`, never below `retry_delay`."""
        return max(self.retry_delay, self.int("retry_max_delay"))

    def apply(self, event: SettingChanged) -> None:
        self.values[event.name] = event.value

    @classmethod
    def fold(cls, events: Iterable[SettingChanged]) -> RuntimeSettings:
        settings = cls()
        for event in events:
            settings.apply(event)
        return settings


def validate_setting(name: object, value: object) -> tuple[str, str]:
    """Checks a `/settings` request; returns the normalised (name, value)."""
    if not isinstance(name, str) or not name.strip():
        raise InvalidSetting("name must be a non-empty string")
    name = name.strip()
    if value is None or isinstance(value, (dict, list)):
        raise InvalidSetting("setting must be a number or string")
    if name not in DEFAULTS:
        return name, str(value)
    try:
        number = int(str(value).strip())
    except ValueError:
        raise InvalidSetting(f"{name} must be an integer, got {value!r}") from None
    if number < _MINIMUM.get(name, 0):
        raise InvalidSetting(f"{name} must be at least {_MINIMUM.get(name, 0)}")
    if number > _MAXIMUM[name]:
        raise InvalidSetting(f"{name} must be at most {_MAXIMUM[name]}")
    return name, str(number)
