"""Bounded schedules: a search for a fire stops after SEARCH_STEPS calls, a rule that cannot
fire within that bound is refused, and `check_fires` refuses fires closer than the minimum."""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta

import pytest
from taskengine_core.dialects.scheduled.fields import InvalidTask
from taskengine_core.dialects.scheduled.schedule import (
    SEARCH_STEPS,
    ScheduleSearchExceeded,
    bounded,
    check_fires,
    parse_schedule,
)

NOW = datetime(2026, 3, 1, tzinfo=UTC)
SECOND = timedelta(seconds=1)
NEVER = "DTSTART:20260101T000000Z\nRRULE:FREQ=SECONDLY;BYHOUR=1;BYMONTH=4;BYMONTHDAY=31"
"""The rule of issue 12: April has no 31st; the search ran for over a minute."""


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


# --- the search budget ----------------------------------------------------------------------


def test_a_search_that_never_ends_is_stopped_after_its_steps():
    calls = 0

    def forever() -> None:
        nonlocal calls
        while True:
            calls += 1
            abs(calls)  # one C call a turn

    with pytest.raises(ScheduleSearchExceeded) as caught:
        bounded(forever, "rrule", "FREQ=DAILY")
    assert calls <= SEARCH_STEPS  # every turn makes at least one counted call
    assert caught.value.field == "schedule_expr"


def test_a_library_catching_every_exception_cannot_swallow_the_stop():
    def stubborn() -> None:
        while True:
            try:
                len("step")
            except Exception:  # noqa: S112 - what a careless library might do
                continue

    with pytest.raises(ScheduleSearchExceeded):
        bounded(stubborn, "rrule", "FREQ=DAILY")


def test_the_previous_profiler_is_restored_after_a_search():
    seen: list[str] = []

    def profiler(frame, event, arg):  # type: ignore[no-untyped-def]
        seen.append(event)

    sys.setprofile(profiler)
    try:
        assert bounded(lambda: 42, "rrule", "FREQ=DAILY") == 42
        assert sys.getprofile() is profiler
    finally:
        sys.setprofile(None)
    assert sys.getprofile() is None


# --- rules that cannot fire within the bound ------------------------------------------------


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    "expr",
    [
        NEVER,
        "FREQ=SECONDLY;BYMONTH=2;BYMONTHDAY=30;BYHOUR=1;BYMINUTE=1",
        "FREQ=MINUTELY;BYMONTH=4;BYMONTHDAY=31",
        "FREQ=SECONDLY;BYMONTH=2;BYMONTHDAY=29;BYHOUR=1",  # fires, but 3,600 steps a day
    ],
)
def test_a_rule_whose_search_exceeds_the_bound_is_refused_with_a_clear_message(expr):
    with pytest.raises(ScheduleSearchExceeded) as caught:
        parse_schedule("rrule", expr, "UTC", NOW)
    message = str(caught.value)
    assert message.startswith("schedule_expr: invalid rrule")
    assert f"no fire found within {SEARCH_STEPS} search steps" in message
    assert "FREQ=YEARLY" in message  # what to use instead


@pytest.mark.parametrize(
    ("expr", "first"),
    [
        ("FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=29;BYDAY=MO", utc(2044, 2, 29)),
        ("FREQ=DAILY;BYMONTH=2;BYMONTHDAY=29", utc(2028, 2, 29)),
        ("FREQ=HOURLY;BYMONTH=2;BYMONTHDAY=29", utc(2028, 2, 29)),
        ("FREQ=MINUTELY;BYMONTH=2;BYMONTHDAY=29", utc(2028, 2, 29)),
        ("FREQ=SECONDLY", utc(2026, 3, 1, 0, 0, 1)),
        ("FREQ=YEARLY;BYMONTH=12;BYMONTHDAY=31;BYHOUR=23;BYMINUTE=59", utc(2026, 12, 31, 23, 59)),
    ],
)
def test_rare_but_reasonable_rules_are_accepted(expr, first):
    schedule = parse_schedule("rrule", expr, "UTC", NOW)
    assert schedule.next_after(NOW) == first


def test_a_stored_rule_whose_next_search_exceeds_the_bound_raises_not_hangs():
    # Counted rules are searched from DTSTART: late in a long count, one search is too long.
    schedule = parse_schedule("rrule", "FREQ=SECONDLY;COUNT=100000", "UTC", NOW)
    assert schedule.next_after(NOW) == NOW + SECOND
    with pytest.raises(ScheduleSearchExceeded):
        schedule.next_after(NOW + timedelta(hours=20))


# --- the shortest interval between fires ----------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "expr"),
    [
        ("cron", "* * * * * *"),
        ("cron", "*/5 * * * * *"),
        ("rrule", "FREQ=SECONDLY"),
        ("rrule", "FREQ=MINUTELY;BYSECOND=0,1"),
    ],
)
def test_fires_a_second_apart_are_allowed_by_default(kind, expr):
    schedule = parse_schedule(kind, expr, "UTC", NOW)
    assert check_fires(schedule, NOW, SECOND) == schedule.next_after(NOW)


@pytest.mark.parametrize(
    ("kind", "expr", "gap"),
    [
        ("cron", "* * * * * *", "1s"),
        ("cron", "*/5 * * * * *", "5s"),
        ("cron", "0,30 * * * * *", "30s"),
        ("rrule", "FREQ=SECONDLY;INTERVAL=10", "10s"),
        ("rrule", "FREQ=MINUTELY;BYSECOND=0,1", "59s"),  # 00:00:01, then 00:01:00
    ],
)
def test_fires_closer_than_the_minimum_are_refused(kind, expr, gap):
    schedule = parse_schedule(kind, expr, "UTC", NOW)
    with pytest.raises(InvalidTask) as caught:
        check_fires(schedule, NOW, timedelta(seconds=60))
    assert caught.value.field == "schedule_expr"
    assert f"{kind} fires {gap} apart" in str(caught.value)
    assert "the shortest interval allowed between fires is 60s" in str(caught.value)


@pytest.mark.parametrize(
    ("kind", "expr"),
    [
        ("cron", "* * * * *"),
        ("cron", "0 3 * * *"),
        ("rrule", "FREQ=HOURLY"),
        ("once", "2026-05-01T00:00:00Z"),
    ],
)
def test_fires_at_least_the_minimum_apart_are_accepted(kind, expr):
    schedule = parse_schedule(kind, expr, "UTC", NOW)
    assert check_fires(schedule, NOW, timedelta(seconds=60)) == schedule.next_after(NOW)


@pytest.mark.timeout(20)
def test_checking_a_never_firing_rule_is_refused_quickly():
    with pytest.raises(InvalidTask):
        check_fires(parse_schedule("rrule", NEVER, "UTC", NOW), NOW, SECOND)
