"""Scheduled tasks: schedules and their DST rule, backoff, dedupe, run ids, request fields."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from uuid import UUID, uuid4
from zoneinfo import ZoneInfo

import pytest
from taskengine_core.dialects.scheduled.fields import (
    BACKOFF_STRATEGIES,
    LIMITS,
    InvalidTask,
    check_backoff,
    check_dedupe,
    check_int,
    check_key,
    check_timezone,
    check_uuid,
)
from taskengine_core.dialects.scheduled.runs import dedupe_blocks, manual_run_id, run_id
from taskengine_core.dialects.scheduled.schedule import (
    CronSchedule,
    EventSchedule,
    OnceSchedule,
    RRuleSchedule,
    Schedule,
    parse_schedule,
)
from taskengine_core.errors import DomainError

NY, BERLIN = "America/New_York", "Europe/Berlin"
# 2025 transitions: New York springs forward 2025-03-09 07:00Z (02:00 EST -> 03:00 EDT) and
# falls back 2025-11-02 06:00Z (02:00 EDT -> 01:00 EST); Berlin springs forward 2025-03-30
# 01:00Z (02:00 CET -> 03:00 CEST) and falls back 2025-10-26 01:00Z (03:00 CEST -> 02:00 CET).


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, micro: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, micro, tzinfo=UTC)


def fires(schedule: Schedule, after: datetime, count: int = 1000) -> list[datetime]:
    """Up to `count` successive fires strictly after `after`."""
    found: list[datetime] = []
    while len(found) < count and (fire := schedule.next_after(after)) is not None:
        found.append(fire)
        after = fire
    return found


def fires_until(schedule: Schedule, after: datetime, end: datetime) -> list[datetime]:
    found: list[datetime] = []
    while (fire := schedule.next_after(after)) is not None and fire < end:
        found.append(fire)
        after = fire
    return found


def cron(expr: str, timezone: str = "UTC") -> Schedule:
    return parse_schedule("cron", expr, timezone)


def rrule(expr: str, timezone: str = "UTC", start: datetime | None = None) -> Schedule:
    return parse_schedule("rrule", expr, timezone, start=start)


def refused(field: str, kind: str, expr: str | None, timezone: str = "UTC") -> InvalidTask:
    with pytest.raises(InvalidTask) as caught:
        parse_schedule(kind, expr, timezone, start=utc(2025, 1, 1))
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")
    return caught.value


# --- InvalidTask ----------------------------------------------------------------------------


def test_invalid_task_is_a_domain_error_naming_its_field():
    error = InvalidTask("priority", "must be an integer from 1 to 9")
    assert isinstance(error, DomainError)
    assert error.field == "priority"
    assert str(error) == "priority: must be an integer from 1 to 9"


# --- parse_schedule: kinds, expressions, timezones ------------------------------------------


def test_each_kind_parses_to_its_schedule():
    assert isinstance(cron("* * * * *"), CronSchedule)
    assert isinstance(rrule("FREQ=DAILY", start=utc(2025, 1, 1)), RRuleSchedule)
    assert isinstance(parse_schedule("once", "2026-12-01T09:00:00Z"), OnceSchedule)
    assert isinstance(parse_schedule("event", "orders.created"), EventSchedule)
    assert [cron("* * * * *").kind, parse_schedule("event", "x").kind] == ["cron", "event"]


def test_an_unknown_kind_is_refused():
    error = refused("schedule_kind", "hourly", "* * * * *")
    assert "cron, rrule, once, event" in str(error)


@pytest.mark.parametrize("kind", ["cron", "rrule", "once", "event"])
@pytest.mark.parametrize("expr", [None, "", "   "])
def test_every_kind_needs_an_expression(kind, expr):
    assert kind in str(refused("schedule_expr", kind, expr))


@pytest.mark.parametrize("name", ["Mars/Olympus", "", "europe/berlin", "localtime", "../etc"])
def test_an_unknown_timezone_is_refused(name):
    assert repr(name) in str(refused("timezone", "cron", "* * * * *", name))


def test_check_timezone_gives_the_zone_and_refuses_non_strings():
    assert check_timezone("Europe/Chisinau") == ZoneInfo("Europe/Chisinau")
    assert check_timezone("UTC") == ZoneInfo("UTC")
    with pytest.raises(InvalidTask) as caught:
        check_timezone(None)
    assert caught.value.field == "timezone"


def test_the_timezone_is_checked_even_for_event_schedules():
    refused("timezone", "event", "orders.created", "Nowhere/City")


def test_next_after_needs_an_aware_instant():
    for schedule in (cron("* * * * *"), parse_schedule("once", "2026-01-01T00:00:00Z")):
        with pytest.raises(ValueError, match="timezone-aware"):
            schedule.next_after(datetime(2025, 1, 1))


# --- cron -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "expr",
    [
        "* * * * *",
        "0 9 * * MON-FRI",
        "*/5 0-6,22,23 1,15 jan-jun 0,7",
        "0 12 L * *",
        "0 0 29 2 *",
        "0 0 ? * 1#2",
        "@daily",
        "@hourly",
        "*/10 * * * * *",
        "0 30 9 * * *",
        "  0   9  *  * *  ",
    ],
)
def test_valid_cron_lines_are_accepted(expr):
    assert cron(expr).next_after(utc(2025, 1, 1)) is not None


@pytest.mark.parametrize(
    "expr",
    [
        "61 * * * *",
        "60 * * * * *",
        "* 24 * * *",
        "* * 32 * *",
        "* * 0 * *",
        "* * * 13 *",
        "* * * * 8",
        "1-60 * * * *",
        "-1 * * * *",
        "*/0 * * * *",
        "* * *",
        "* * * *",
        "* * * * * * *",
        "abc",
        "a b c d e",
        "0 0 30 2 *",
        "0 0 31 4,6 *",
        "0 9 * * FOO",
        "0 0 * * 1#6",
        "@reboot",
        "H * * * *",
        "R * * * *",
        "0 R * * *",
        "* * * * *\u00a0*",
    ],
)
def test_invalid_cron_lines_are_refused(expr):
    error = refused("schedule_expr", "cron", expr)
    assert repr(expr) in str(error)


def test_cron_fires_strictly_after_the_given_instant():
    every_minute = cron("* * * * *")
    assert every_minute.next_after(utc(2025, 1, 1, 10, 0)) == utc(2025, 1, 1, 10, 1)
    assert every_minute.next_after(utc(2025, 1, 1, 10, 0, 59, 999999)) == utc(2025, 1, 1, 10, 1)
    assert every_minute.next_after(utc(2025, 1, 1, 9, 59, 0, 1)) == utc(2025, 1, 1, 10, 0)


def test_cron_results_are_aware_utc_whatever_the_timezone_of_after():
    after = datetime(2025, 6, 1, 12, 0, tzinfo=timezone(timedelta(hours=5)))
    fire = cron("0 9 * * *", BERLIN).next_after(after)
    assert fire == utc(2025, 6, 2, 7, 0)
    assert fire is not None and fire.tzinfo is UTC


def test_six_field_cron_reads_seconds_first():
    every_ten = cron("*/10 * * * * *")
    assert fires(every_ten, utc(2025, 1, 1, 0, 0, 0) + timedelta(microseconds=500), 4) == [
        utc(2025, 1, 1, 0, 0, 10),
        utc(2025, 1, 1, 0, 0, 20),
        utc(2025, 1, 1, 0, 0, 30),
        utc(2025, 1, 1, 0, 0, 40),
    ]
    # second 30, minute 0, hour 9
    assert fires(cron("30 0 9 * * *"), utc(2025, 1, 1), 2) == [
        utc(2025, 1, 1, 9, 0, 30),
        utc(2025, 1, 2, 9, 0, 30),
    ]


def test_an_equal_range_is_the_one_value_not_the_whole_field():
    assert fires(cron("5-5 * * * *"), utc(2025, 1, 1), 2) == [
        utc(2025, 1, 1, 0, 5),
        utc(2025, 1, 1, 1, 5),
    ]
    assert fires(cron("0 0 * * mon-MON"), utc(2025, 1, 1), 2) == [
        utc(2025, 1, 6),
        utc(2025, 1, 13),
    ]


def test_day_of_month_and_day_of_week_both_given_fire_on_either():
    # Vixie cron semantics: the 13th of the month OR any Friday.
    days = [fire.day for fire in fires(cron("0 0 13 * FRI"), utc(2025, 6, 1), 5)]
    assert days == [6, 13, 20, 27, 4]


def test_sunday_is_both_zero_and_seven():
    assert fires(cron("0 0 * * 0"), utc(2025, 1, 1), 3) == fires(
        cron("0 0 * * 7"), utc(2025, 1, 1), 3
    )


def test_cron_evaluates_wall_clock_time_in_the_task_timezone():
    assert cron("0 9 * * *", NY).next_after(utc(2025, 1, 15)) == utc(2025, 1, 15, 14)
    assert cron("0 9 * * *", NY).next_after(utc(2025, 7, 15)) == utc(2025, 7, 15, 13)
    assert cron("0 9 * * *", "Asia/Kolkata").next_after(utc(2025, 1, 15)) == utc(2025, 1, 15, 3, 30)


# --- cron across DST: spring forward (gap) --------------------------------------------------


def test_daily_in_the_spring_gap_fires_once_at_the_end_of_the_gap():
    assert fires(cron("30 2 * * *", NY), utc(2025, 3, 8), 3) == [
        utc(2025, 3, 8, 7, 30),  # 02:30 EST
        utc(2025, 3, 9, 7, 0),  # 02:30 does not exist: 03:00 EDT
        utc(2025, 3, 10, 6, 30),  # 02:30 EDT
    ]
    assert fires(cron("30 2 * * *", BERLIN), utc(2025, 3, 29), 3) == [
        utc(2025, 3, 29, 1, 30),  # 02:30 CET
        utc(2025, 3, 30, 1, 0),  # 03:00 CEST
        utc(2025, 3, 31, 0, 30),  # 02:30 CEST
    ]


def test_several_wall_times_in_one_gap_collapse_into_one_fire():
    quarters = cron("*/15 2 * * *", NY)
    assert fires(quarters, utc(2025, 3, 8, 12), 6) == [
        utc(2025, 3, 9, 7, 0),
        utc(2025, 3, 10, 6, 0),
        utc(2025, 3, 10, 6, 15),
        utc(2025, 3, 10, 6, 30),
        utc(2025, 3, 10, 6, 45),
        utc(2025, 3, 11, 6, 0),
    ]


def test_hourly_across_the_spring_gap_is_continuous_in_utc():
    assert fires(cron("0 * * * *", NY), utc(2025, 3, 9, 4, 30), 4) == [
        utc(2025, 3, 9, 5),  # 00:00 EST
        utc(2025, 3, 9, 6),  # 01:00 EST
        utc(2025, 3, 9, 7),  # 02:00 (gap) and 03:00 EDT, once
        utc(2025, 3, 9, 8),  # 04:00 EDT
    ]
    assert fires(cron("0 * * * *", BERLIN), utc(2025, 3, 29, 23, 30), 3) == [
        utc(2025, 3, 30, 0),  # 01:00 CET
        utc(2025, 3, 30, 1),  # 02:00 (gap) and 03:00 CEST, once
        utc(2025, 3, 30, 2),  # 04:00 CEST
    ]


def test_every_fifteen_minutes_across_the_spring_gap():
    expected = [utc(2025, 3, 9, 6, 45), utc(2025, 3, 9, 7), utc(2025, 3, 9, 7, 15)]
    assert fires(cron("*/15 * * * *", NY), utc(2025, 3, 9, 6, 30), 3) == expected
    assert fires(cron("*/15 * * * *", BERLIN), utc(2025, 3, 30, 0, 30), 3) == [
        utc(2025, 3, 30, 0, 45),
        utc(2025, 3, 30, 1),
        utc(2025, 3, 30, 1, 15),
    ]


def test_next_after_the_gap_fire_does_not_fire_the_gap_again():
    for expr in ("*/15 * * * *", "0 * * * *", "*/15 2 * * *", "30 2 * * *"):
        schedule = cron(expr, NY)
        gap_fire = schedule.next_after(utc(2025, 3, 9, 6, 59))
        assert gap_fire == utc(2025, 3, 9, 7)
        following = schedule.next_after(gap_fire)
        assert following is not None and following > gap_fire


def test_seconds_cron_across_the_spring_gap():
    assert fires(cron("*/20 * * * * *", NY), utc(2025, 3, 9, 6, 59, 30), 3) == [
        utc(2025, 3, 9, 6, 59, 40),
        utc(2025, 3, 9, 7, 0, 0),  # all of 02:00:00-02:59:40 and 03:00:00 EDT
        utc(2025, 3, 9, 7, 0, 20),
    ]


# --- cron across DST: fall back (overlap) ---------------------------------------------------


def test_daily_in_the_repeated_hour_fires_once_at_its_first_occurrence():
    daily = cron("30 1 * * *", NY)
    assert fires(daily, utc(2025, 11, 1), 3) == [
        utc(2025, 11, 1, 5, 30),
        utc(2025, 11, 2, 5, 30),  # 01:30 EDT; 01:30 EST (06:30Z) does not fire
        utc(2025, 11, 3, 6, 30),
    ]
    assert daily.next_after(utc(2025, 11, 2, 5, 31)) == utc(2025, 11, 3, 6, 30)
    assert daily.next_after(utc(2025, 11, 2, 6, 0)) == utc(2025, 11, 3, 6, 30)  # 01:00 EST
    assert daily.next_after(utc(2025, 11, 2, 6, 31)) == utc(2025, 11, 3, 6, 30)  # 01:31 EST
    assert daily.next_after(utc(2025, 11, 2, 5, 29)) == utc(2025, 11, 2, 5, 30)


def test_daily_in_berlins_repeated_hour_fires_once():
    daily = cron("30 2 * * *", BERLIN)
    assert fires(daily, utc(2025, 10, 25), 3) == [
        utc(2025, 10, 25, 0, 30),
        utc(2025, 10, 26, 0, 30),  # 02:30 CEST; 02:30 CET (01:30Z) does not fire
        utc(2025, 10, 27, 1, 30),
    ]
    assert daily.next_after(utc(2025, 10, 26, 1, 31)) == utc(2025, 10, 27, 1, 30)


def test_hourly_across_the_fall_back_skips_the_repeated_hour():
    assert fires(cron("0 * * * *", NY), utc(2025, 11, 2, 3, 30), 4) == [
        utc(2025, 11, 2, 4),  # 00:00 EDT
        utc(2025, 11, 2, 5),  # 01:00 EDT
        utc(2025, 11, 2, 7),  # 02:00 EST (01:00 EST at 06:00Z repeats 01:00)
        utc(2025, 11, 2, 8),
    ]
    assert fires(cron("0 * * * *", BERLIN), utc(2025, 10, 25, 22, 30), 3) == [
        utc(2025, 10, 25, 23),  # 01:00 CEST
        utc(2025, 10, 26, 0),  # 02:00 CEST
        utc(2025, 10, 26, 2),  # 03:00 CET
    ]


def test_every_fifteen_minutes_across_the_fall_back():
    assert fires(cron("*/15 * * * *", NY), utc(2025, 11, 2, 5, 40), 3) == [
        utc(2025, 11, 2, 5, 45),  # 01:45 EDT
        utc(2025, 11, 2, 7, 0),  # 02:00 EST
        utc(2025, 11, 2, 7, 15),
    ]
    assert fires(cron("*/15 * * * *", BERLIN), utc(2025, 10, 26, 0, 40), 2) == [
        utc(2025, 10, 26, 0, 45),  # 02:45 CEST
        utc(2025, 10, 26, 2, 0),  # 03:00 CET
    ]


@pytest.mark.parametrize("minute", [0, 1, 30, 59])
def test_any_instant_in_the_second_pass_resumes_after_the_repeated_hour(minute):
    every_five = cron("*/5 * * * *", NY)
    assert every_five.next_after(utc(2025, 11, 2, 6, minute)) == utc(2025, 11, 2, 7)
    assert cron("*/5 * * * *", BERLIN).next_after(utc(2025, 10, 26, 1, minute)) == utc(
        2025, 10, 26, 2
    )


def test_seconds_cron_across_the_fall_back():
    every_twenty = cron("*/20 * * * * *", NY)
    assert fires(every_twenty, utc(2025, 11, 2, 5, 59, 30), 2) == [
        utc(2025, 11, 2, 5, 59, 40),  # 01:59:40 EDT
        utc(2025, 11, 2, 7, 0, 0),  # 02:00:00 EST
    ]
    assert every_twenty.next_after(utc(2025, 11, 2, 6, 30, 5)) == utc(2025, 11, 2, 7)


# --- cron over a whole year -----------------------------------------------------------------


NY_DAYS = (NY, "2025-03-09", "2025-11-02")
BERLIN_DAYS = (BERLIN, "2025-03-30", "2025-10-26")


@pytest.mark.parametrize(
    ("timezone", "spring", "fall", "expr", "per_day", "lost_in_spring"),
    [
        (*NY_DAYS, "0 * * * *", 24, 1),
        (*BERLIN_DAYS, "0 * * * *", 24, 1),
        (*NY_DAYS, "*/15 * * * *", 96, 4),
        (*NY_DAYS, "30 2 * * *", 1, 0),
        (*BERLIN_DAYS, "30 2 * * *", 1, 0),
    ],
)
def test_a_year_of_fires_is_increasing_and_complete(
    timezone, spring, fall, expr, per_day, lost_in_spring
):
    zone = ZoneInfo(timezone)
    start = datetime(2025, 1, 1, tzinfo=zone)
    end = datetime(2026, 1, 1, tzinfo=zone)
    year = fires_until(cron(expr, timezone), start - timedelta(microseconds=1), end)

    assert all(earlier < later for earlier, later in zip(year, year[1:], strict=False))
    assert len(year) == 365 * per_day - lost_in_spring
    per_date = Counter(fire.astimezone(zone).date().isoformat() for fire in year)
    assert len(per_date) == 365
    assert per_date[spring] == per_day - lost_in_spring
    assert per_date[fall] == per_day  # each repeated wall time fires once
    assert {count for date, count in per_date.items() if date != spring} == {per_day}
    ordinary = [fire for fire in year if fire.astimezone(zone).date().isoformat() != spring]
    assert all(fire.astimezone(zone).minute % 15 == 0 for fire in ordinary)
    assert all(fire.second == 0 and fire.microsecond == 0 for fire in year)


# --- rrule ----------------------------------------------------------------------------------


def test_rrule_with_a_tzid_dtstart_follows_that_zone_across_dst():
    rule = rrule("DTSTART;TZID=Europe/Berlin:20250328T090000\nRRULE:FREQ=DAILY;COUNT=4")
    assert fires(rule, utc(2025, 1, 1)) == [
        utc(2025, 3, 28, 8),
        utc(2025, 3, 29, 8),
        utc(2025, 3, 30, 7),  # 09:00 CEST
        utc(2025, 3, 31, 7),
    ]


def test_rrule_dtstart_in_utc_repeats_in_utc_whatever_the_task_timezone():
    rule = rrule("DTSTART:20250308T120000Z\nRRULE:FREQ=DAILY;COUNT=3", NY)
    assert fires(rule, utc(2025, 1, 1)) == [
        utc(2025, 3, 8, 12),
        utc(2025, 3, 9, 12),
        utc(2025, 3, 10, 12),
    ]


def test_a_floating_dtstart_is_wall_time_in_the_task_timezone_with_the_gap_rule():
    rule = rrule("DTSTART:20250308T023000\nRRULE:FREQ=DAILY;COUNT=3", NY)
    assert fires(rule, utc(2025, 1, 1)) == [
        utc(2025, 3, 8, 7, 30),
        utc(2025, 3, 9, 7, 0),  # 02:30 does not exist: 03:00 EDT
        utc(2025, 3, 10, 6, 30),
    ]


def test_rrule_in_the_repeated_hour_fires_once():
    rule = rrule("DTSTART:20251101T013000\nRRULE:FREQ=DAILY", NY)
    assert fires(rule, utc(2025, 11, 1), 3) == [
        utc(2025, 11, 1, 5, 30),
        utc(2025, 11, 2, 5, 30),
        utc(2025, 11, 3, 6, 30),
    ]
    assert rule.next_after(utc(2025, 11, 2, 6, 31)) == utc(2025, 11, 3, 6, 30)


def test_rrule_hourly_collapses_the_gap_like_cron():
    rule = rrule("FREQ=HOURLY", BERLIN, start=utc(2025, 3, 29))
    assert fires(rule, utc(2025, 3, 29, 23, 30), 3) == fires(
        cron("0 * * * *", BERLIN), utc(2025, 3, 29, 23, 30), 3
    )


def test_the_default_start_is_the_dtstart_truncated_to_seconds():
    created = datetime(2025, 1, 1, 12, 34, 56, 789000, tzinfo=UTC)
    rule = rrule("FREQ=DAILY;COUNT=2", BERLIN, start=created)
    assert fires(rule, utc(2025, 1, 1)) == [
        utc(2025, 1, 1, 12, 34, 56),
        utc(2025, 1, 2, 12, 34, 56),
    ]


def test_the_default_start_is_ignored_when_the_rule_names_its_dtstart():
    rule = rrule("DTSTART:20250105T080000Z\nRRULE:FREQ=DAILY;COUNT=1", start=utc(2024, 1, 1))
    assert fires(rule, utc(2024, 1, 1)) == [utc(2025, 1, 5, 8)]


def test_an_rrule_without_dtstart_or_start_is_a_programming_error():
    with pytest.raises(ValueError, match="start"):
        parse_schedule("rrule", "FREQ=DAILY", "UTC")


@pytest.mark.parametrize(
    "expr",
    [
        "FREQ=WEEKLY;BYDAY=MO,WE;BYHOUR=9,17;BYMINUTE=0;BYSECOND=0",
        "RRULE:FREQ=WEEKLY;BYDAY=MO,WE;BYHOUR=9,17;BYMINUTE=0;BYSECOND=0",
        "rrule:freq=weekly;byday=mo,we;byhour=9,17;byminute=0;bysecond=0;",
        "DTSTART:20250101T000000\r\nRRULE:FREQ=WEEKLY;BYDAY=MO,WE;BYHOUR=9,17;BYMINUTE=0;BYSECOND=0",
    ],
)
def test_rrule_byday_and_byhour_in_every_accepted_spelling(expr):
    rule = rrule(expr, BERLIN, start=utc(2025, 1, 1))
    assert fires(rule, utc(2025, 1, 1), 5) == [
        utc(2025, 1, 1, 8),  # Wednesday 09:00 CET
        utc(2025, 1, 1, 16),
        utc(2025, 1, 6, 8),  # Monday
        utc(2025, 1, 6, 16),
        utc(2025, 1, 8, 8),
    ]


def test_a_counted_rrule_is_exhausted_after_count_fires():
    rule = rrule("DTSTART:20250101T090000Z\nRRULE:FREQ=MONTHLY;COUNT=3")
    assert fires(rule, utc(2024, 1, 1)) == [
        utc(2025, 1, 1, 9),
        utc(2025, 2, 1, 9),
        utc(2025, 3, 1, 9),
    ]
    assert rule.next_after(utc(2025, 3, 1, 9)) is None
    assert rule.next_after(utc(2030, 1, 1)) is None


def test_until_in_utc_is_inclusive():
    rule = rrule("DTSTART:20250101T090000Z\nRRULE:FREQ=DAILY;UNTIL=20250103T090000Z")
    assert fires(rule, utc(2024, 1, 1)) == [
        utc(2025, 1, 1, 9),
        utc(2025, 1, 2, 9),
        utc(2025, 1, 3, 9),
    ]


def test_until_with_a_tzid_start_is_an_instant():
    rule = rrule(
        "DTSTART;TZID=America/New_York:20250101T090000\nRRULE:FREQ=DAILY;UNTIL=20250102T140000Z"
    )
    assert fires(rule, utc(2024, 1, 1)) == [utc(2025, 1, 1, 14), utc(2025, 1, 2, 14)]


def test_a_floating_until_is_local_and_a_date_until_includes_its_day():
    assert fires(
        rrule("FREQ=DAILY;UNTIL=20250102T090000", NY, start=utc(2025, 1, 1, 14)), utc(2024, 1, 1)
    ) == [
        utc(2025, 1, 1, 14),
        utc(2025, 1, 2, 14),
    ]
    assert fires(
        rrule("FREQ=DAILY;UNTIL=20250102", NY, start=utc(2025, 1, 1, 23)), utc(2024, 1, 1)
    ) == [
        utc(2025, 1, 1, 23),
        utc(2025, 1, 2, 23),  # 18:00 on the 2nd, New York time
    ]


def test_a_rule_whose_first_fire_is_decades_away_is_accepted():
    leap_mondays = rrule("FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=29;BYDAY=MO", start=utc(2025, 1, 1))
    assert fires(leap_mondays, utc(2025, 1, 1), 2) == [utc(2044, 2, 29), utc(2072, 2, 29)]


def test_count_and_interval_are_bounded():
    assert rrule("FREQ=DAILY;COUNT=100000;INTERVAL=100000", start=utc(2025, 1, 1))
    for expr in ("FREQ=DAILY;COUNT=100001", "FREQ=DAILY;INTERVAL=100001"):
        assert "from 1 to 100000" in str(refused("schedule_expr", "rrule", expr))


def test_an_rrule_all_in_the_past_is_accepted_and_never_fires_again():
    rule = rrule("DTSTART:20200101T000000Z\nRRULE:FREQ=YEARLY;COUNT=2")
    assert rule.next_after(utc(2025, 1, 1)) is None


def test_skipping_whole_periods_gives_the_same_fires_as_iterating_from_dtstart():
    generator = random.Random(7)
    for expr in (
        "FREQ=MINUTELY;INTERVAL=7",
        "FREQ=HOURLY;INTERVAL=5;BYMINUTE=0,30",
        "FREQ=DAILY;INTERVAL=4;BYHOUR=2,14",
        "FREQ=WEEKLY;INTERVAL=3;BYDAY=MO,FR;BYSETPOS=-1",
        "FREQ=DAILY;BYMONTHDAY=31",
    ):
        rule = rrule(expr, NY, start=utc(2025, 1, 3, 7, 11, 5))
        assert isinstance(rule, RRuleSchedule) and rule.period is not None
        from_dtstart = replace(rule, period=None)
        for _ in range(10):
            after = utc(2025, 1, 1) + timedelta(seconds=generator.randrange(40 * 86400))
            assert rule.next_after(after) == from_dtstart.next_after(after), (expr, after)


def test_a_minutely_rule_started_long_ago_keeps_its_wall_clock_phase():
    # Periods are wall-clock time, like cron's: the phase holds in local time across DST.
    rule = rrule("FREQ=MINUTELY;INTERVAL=7", BERLIN, start=utc(2015, 1, 1, 0, 0, 13))
    fire = rule.next_after(utc(2025, 6, 1))
    assert fire is not None and utc(2025, 6, 1) < fire <= utc(2025, 6, 1, 0, 7)
    wall = fire.astimezone(ZoneInfo(BERLIN)).replace(tzinfo=None)
    assert (wall - datetime(2015, 1, 1, 1, 0, 13)) % timedelta(minutes=7) == timedelta(0)


@pytest.mark.parametrize(
    "expr",
    [
        "FREQ=FORTNIGHTLY",
        "FREQ=DAILY;BYHOUR=25",
        "FREQ=DAILY;FOO=1",
        "FREQ=DAILY;COUNT=x",
        "FREQ=DAILY;COUNT=0",
        "FREQ=DAILY;INTERVAL=0",
        "FREQ=DAILY;INTERVAL=-1",
        "FREQ=DAILY;INTERVAL=99999999999999999999",
        "FREQ=HOURLY;INTERVAL=24;BYHOUR=5",
        "FREQ=DAILY;BYDAY=XX",
        "BYDAY=MO",
        "FREQ=DAILY;COUNT=3;UNTIL=20250101T000000Z",
        "FREQ=DAILY;FREQ=WEEKLY",
        "FREQ=DAILY;UNTIL=tomorrow",
        "FREQ=DAILY;UNTIL=20251301",
        "FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=30",
        "FREQ=SECONDLY;BYMONTH=2;BYMONTHDAY=31",
        "FREQ=DAILY;INTERVAL=7;BYDAY=TU",  # starts on a Wednesday: never a Tuesday
        "FREQ=YEARLY;BYEASTER=0",
        "DTSTART:20250101T000000Z\nRRULE:FREQ=DAILY;UNTIL=20241231T000000Z",
        "RRULE:FREQ=DAILY\nRRULE:FREQ=WEEKLY",
        "DTSTART:20250101T000000Z",
        "DTSTART:2025\nRRULE:FREQ=DAILY",
        "DTSTART:20250230T000000\nRRULE:FREQ=DAILY",
        "DTSTART;TZID=Mars/Base:20250101T000000\nRRULE:FREQ=DAILY",
        "DTSTART;TZID=Europe/Berlin:20250101T000000Z\nRRULE:FREQ=DAILY",
        "DTSTART:20250101T000000Z\nDTSTART:20250102T000000Z\nRRULE:FREQ=DAILY",
        "DTSTART:20250101T000000Z\nRRULE:FREQ=DAILY\nEXDATE:20250102T000000Z",
        "FREQ=DAILY;BYDAY=MO, TU",
        "not a rule",
    ],
)
def test_invalid_rrules_are_refused(expr):
    assert "rrule" in str(refused("schedule_expr", "rrule", expr))


# --- once -----------------------------------------------------------------------------------


def test_once_fires_once_if_still_ahead():
    once = parse_schedule("once", "2026-12-01T09:00:00Z")
    assert once.next_after(utc(2026, 1, 1)) == utc(2026, 12, 1, 9)
    assert once.next_after(utc(2026, 12, 1, 8, 59, 59)) == utc(2026, 12, 1, 9)
    assert once.next_after(utc(2026, 12, 1, 9)) is None
    assert once.next_after(utc(2027, 1, 1)) is None


def test_once_with_an_offset_ignores_the_task_timezone():
    once = parse_schedule("once", "2026-12-01T09:00:00+02:00", NY)
    assert once.next_after(utc(2026, 1, 1)) == utc(2026, 12, 1, 7)


def test_a_naive_once_is_wall_time_in_the_task_timezone():
    assert parse_schedule("once", "2026-12-01T09:00:00", NY).next_after(utc(2026, 1, 1)) == utc(
        2026, 12, 1, 14
    )
    in_gap = parse_schedule("once", "2026-03-08T02:30:00", NY)
    assert in_gap.next_after(utc(2026, 1, 1)) == utc(2026, 3, 8, 7)
    repeated = parse_schedule("once", "2026-11-01T01:30:00", NY)
    assert repeated.next_after(utc(2026, 1, 1)) == utc(2026, 11, 1, 5, 30)


@pytest.mark.parametrize("expr", ["tomorrow", "2026-13-01T00:00:00Z", "2026-12-01T25:00", "9:00"])
def test_invalid_once_instants_are_refused(expr):
    assert "ISO-8601" in str(refused("schedule_expr", "once", expr))


# --- event ----------------------------------------------------------------------------------


def test_an_event_schedule_never_fires_by_time_and_matches_its_topic_exactly():
    event = parse_schedule("event", "orders.created")
    assert event.next_after(utc(2025, 1, 1)) is None
    assert event.matches("orders.created")
    assert not event.matches("orders.created.eu")
    assert not event.matches("Orders.Created")
    assert not cron("* * * * *").matches("orders.created")


@pytest.mark.parametrize("topic", ["a b", "tab\there", "line\nbreak", "nul\x00", "x" * 201])
def test_invalid_event_topics_are_refused(topic):
    refused("schedule_expr", "event", topic)


def test_an_event_topic_may_be_200_printable_characters():
    assert parse_schedule("event", "é" * 200).matches("é" * 200)


# --- backoff --------------------------------------------------------------------------------


def test_the_backoff_strategies_are_the_documented_ones():
    assert BACKOFF_STRATEGIES == ("exponential_jitter", "linear", "fixed")


# --- request fields -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "low", "high"),
    [
        ("priority", 1, 9),
        ("max_retries", 0, 100),
        ("dedupe_window_seconds", 1, 31 * 24 * 3600),
        ("delay_seconds", 1, 604800),
    ],
)
def test_integer_fields_have_their_documented_bounds(field, low, high):
    assert LIMITS[field] == (low, high)
    assert check_int(field, low) == low
    assert check_int(field, high) == high
    for bad in (low - 1, high + 1, True, 5.0, "5", None):
        with pytest.raises(InvalidTask) as caught:
            check_int(field, bad)
        assert caught.value.field == field
        assert f"from {low} to {high}" in str(caught.value)


def test_check_backoff_accepts_the_strategies_only():
    assert [check_backoff(name) for name in BACKOFF_STRATEGIES] == list(BACKOFF_STRATEGIES)
    for bad in ("Linear", "", None, 1):
        with pytest.raises(InvalidTask) as caught:
            check_backoff(bad)
        assert caught.value.field == "backoff_strategy"


def test_check_uuid_parses_strings_and_keeps_uuids():
    value = uuid4()
    assert check_uuid("created_by", str(value)) == value
    assert check_uuid("created_by", value) is value
    for bad in ("agent-7", "", None, 42):
        with pytest.raises(InvalidTask) as caught:
            check_uuid("created_by", bad)
        assert caught.value.field == "created_by"


def test_check_key_names_the_field_it_checks():
    assert check_key("tenant-42", "concurrency_key") == "tenant-42"
    with pytest.raises(InvalidTask) as caught:
        check_key("two words", "concurrency_key")
    assert caught.value.field == "concurrency_key"


def test_check_dedupe_needs_a_key_for_a_window():
    assert check_dedupe(None, None) == (None, None)
    assert check_dedupe("nightly", None) == ("nightly", None)
    assert check_dedupe("nightly", 3600) == ("nightly", 3600)
    for key, window, field in [
        (None, 3600, "dedupe_window_seconds"),
        ("nightly", 0, "dedupe_window_seconds"),
        ("nightly", 31 * 24 * 3600 + 1, "dedupe_window_seconds"),
        ("", 3600, "dedupe_key"),
        (7, None, "dedupe_key"),
    ]:
        with pytest.raises(InvalidTask) as caught:
            check_dedupe(key, window)
        assert caught.value.field == field


# --- dedupe ---------------------------------------------------------------------------------


def test_a_run_is_blocked_only_within_the_window_of_the_last_start():
    now = utc(2025, 5, 1, 12)
    assert dedupe_blocks(3600, now - timedelta(minutes=59), now)
    assert dedupe_blocks(3600, now, now)
    assert not dedupe_blocks(3600, now - timedelta(hours=1), now)
    assert not dedupe_blocks(3600, now - timedelta(days=2), now)


def test_without_a_window_or_a_previous_run_nothing_is_blocked():
    now = utc(2025, 5, 1, 12)
    assert not dedupe_blocks(None, now, now)
    assert not dedupe_blocks(3600, None, now)


def test_dedupe_compares_instants_across_timezones():
    now = utc(2025, 5, 1, 12)
    started = datetime(2025, 5, 1, 13, 30, tzinfo=timezone(timedelta(hours=2)))  # 11:30Z
    assert dedupe_blocks(3600, started, now)
    assert not dedupe_blocks(1800, started, now)


# --- run ids --------------------------------------------------------------------------------

TASK = UUID("0b9a3f3e-2f6d-4d3c-9a1e-5f0c4b7a2d11")


def test_a_scheduled_run_id_is_derived_from_task_and_fire_instant():
    fire = utc(2025, 3, 9, 7)
    assert run_id(TASK, fire) == run_id(TASK, fire)
    assert run_id(TASK, fire).version == 5
    assert run_id(TASK, fire) == run_id(TASK, fire.astimezone(ZoneInfo(NY)))
    assert run_id(TASK, fire) != run_id(TASK, fire + timedelta(seconds=1))
    assert run_id(TASK, fire) != run_id(uuid4(), fire)


def test_run_ids_of_a_quarter_of_fires_are_distinct():
    year = fires_until(cron("*/15 * * * *", NY), utc(2025, 1, 1), utc(2025, 4, 1))
    assert len({run_id(TASK, fire) for fire in year}) == len(year)


def test_manual_run_ids_are_stable_per_token_and_apart_from_scheduled_ones():
    assert manual_run_id(TASK, "req-1") == manual_run_id(TASK, "req-1")
    assert manual_run_id(TASK, "req-1") != manual_run_id(TASK, "req-2")
    assert manual_run_id(TASK, "req-1") != manual_run_id(uuid4(), "req-1")
    fire = utc(2025, 1, 1)
    assert manual_run_id(TASK, fire.isoformat()) != run_id(TASK, fire)


def test_run_ids_need_an_aware_instant():
    with pytest.raises(ValueError):
        run_id(TASK, datetime(2025, 1, 1))
