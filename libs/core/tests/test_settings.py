"""Runtime settings: defaults, `/settings` validation, and folding `SettingChanged` events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import UUID

import pytest
from taskengine_contracts.events import SettingChanged
from taskengine_core.errors import InvalidSetting
from taskengine_core.settings import DEFAULTS, RuntimeSettings, validate_setting

SETTINGS_ID = UUID("00000000-0000-4000-8000-000000000001")
T0 = datetime(2024, 5, 1, tzinfo=UTC)


def changed(version: int, name: str, value: str) -> SettingChanged:
    return SettingChanged(
        id=SETTINGS_ID, version=version, at=T0 + timedelta(seconds=version), name=name, value=value
    )


# --- defaults ---------------------------------------------------------------------------


def test_defaults_are_the_documented_values():
    assert DEFAULTS == {
        "max_jobs": 2,
        "priority_slots": 0,
        "priority_threshold": 5,
        "schedule_interval": 60,
        "retry_delay": 5,
        "retry_limit": 3,
        "retention_seconds": 30 * 24 * 3600,
        "retry_max_delay": 600,
    }


def test_empty_settings_read_the_defaults():
    settings = RuntimeSettings()
    assert settings.values == {}
    assert settings.max_jobs == 2
    assert settings.retry_limit == 3
    assert settings.retry_delay == 5
    for name, value in DEFAULTS.items():
        assert settings.int(name) == value


def test_a_set_value_overrides_the_default_as_an_integer():
    settings = RuntimeSettings({"max_jobs": "7", "retry_delay": "0"})
    assert settings.max_jobs == 7
    assert settings.retry_delay == 0
    assert settings.retry_limit == 3


def test_settings_instances_do_not_share_values():
    first, second = RuntimeSettings(), RuntimeSettings()
    first.apply(changed(1, "max_jobs", "9"))
    assert second.values == {} and second.max_jobs == 2


# --- validate_setting -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("max_jobs", 4, ("max_jobs", "4")),
        ("max_jobs", "4", ("max_jobs", "4")),
        ("max_jobs", " 12 ", ("max_jobs", "12")),
        ("max_jobs", "+3", ("max_jobs", "3")),
        ("max_jobs", 1, ("max_jobs", "1")),
        ("priority_slots", 0, ("priority_slots", "0")),
        ("priority_threshold", 1, ("priority_threshold", "1")),
        ("retry_limit", "0", ("retry_limit", "0")),
        ("  retry_delay  ", 10, ("retry_delay", "10")),
    ],
)
def test_validate_setting_normalises_known_integer_settings(name, value, expected):
    assert validate_setting(name, value) == expected


@pytest.mark.parametrize("value", ["two", "1.5", 2.5, "", "0x10", True])
def test_validate_setting_refuses_a_non_integer_max_jobs(value):
    with pytest.raises(InvalidSetting, match="max_jobs must be an integer"):
        validate_setting("max_jobs", value)


@pytest.mark.parametrize("value", [0, "0", -1])
def test_validate_setting_refuses_max_jobs_below_one(value):
    with pytest.raises(InvalidSetting, match="max_jobs must be at least 1"):
        validate_setting("max_jobs", value)


def test_validate_setting_refuses_priority_threshold_zero():
    with pytest.raises(InvalidSetting, match="priority_threshold must be at least 1"):
        validate_setting("priority_threshold", 0)


@pytest.mark.parametrize("name", ["priority_slots", "retry_limit", "retry_delay"])
def test_validate_setting_refuses_negative_counts(name):
    with pytest.raises(InvalidSetting, match=f"{name} must be at least 0"):
        validate_setting(name, -1)


@pytest.mark.parametrize("name", ["", "   ", None, 3, ["max_jobs"]])
def test_validate_setting_refuses_an_empty_or_non_string_name(name):
    with pytest.raises(InvalidSetting, match="name must be a non-empty string"):
        validate_setting(name, 1)


@pytest.mark.parametrize("value", [{"n": 1}, [1, 2], None])
def test_validate_setting_refuses_a_structured_or_missing_value(value):
    with pytest.raises(InvalidSetting, match="setting must be a number or string"):
        validate_setting("max_jobs", value)


def test_validate_setting_refuses_a_dict_value_for_a_custom_name_too():
    with pytest.raises(InvalidSetting):
        validate_setting("colour", {"r": 1})


@pytest.mark.parametrize(
    ("value", "stored"),
    [("blue", "blue"), (1.5, "1.5"), (7, "7"), ("", ""), (" padded ", " padded ")],
)
def test_validate_setting_keeps_custom_names_as_given_strings(value, stored):
    assert validate_setting(" colour ", value) == ("colour", stored)


# --- fold -------------------------------------------------------------------------------


def test_fold_of_no_events_is_the_defaults():
    settings = RuntimeSettings.fold([])
    assert settings.values == {}
    assert settings.max_jobs == DEFAULTS["max_jobs"]


def test_fold_applies_events_in_order_the_last_value_winning():
    settings = RuntimeSettings.fold(
        [
            changed(1, "max_jobs", "5"),
            changed(2, "colour", "blue"),
            changed(3, "max_jobs", "3"),
            changed(4, "retry_limit", "0"),
        ]
    )
    assert settings.values == {"max_jobs": "3", "colour": "blue", "retry_limit": "0"}
    assert settings.max_jobs == 3
    assert settings.retry_limit == 0
    assert settings.retry_delay == DEFAULTS["retry_delay"]


def test_fold_keeps_custom_values_as_strings():
    settings = RuntimeSettings.fold([changed(1, "colour", "42")])
    assert settings.values["colour"] == "42"
