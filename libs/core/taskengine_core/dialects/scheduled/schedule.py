"""A scheduled task's schedule: cron, rrule, once or event, parsed and searched for its fires.

Pure decisions, no I/O; `off_loop` runs them on threads of their own, since a search for a
rule's next fire is bounded CPU work (SEARCH_STEPS). Cron and rrule schedules step through
local wall-clock times and map each to an instant with one DST rule: a wall time the clock
skips (spring forward) fires once, at the end of the gap; a wall time the clock repeats (fall
back) fires once, at its first occurrence. Fire instants are therefore strictly increasing:
several wall times that land on the same instant fire once.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import re
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import ClassVar, TypeVar
from zoneinfo import ZoneInfo

from croniter import CroniterBadDateError, CroniterError, croniter
from dateutil.rrule import rrule, rrulestr

from taskengine_core.dialects.scheduled.fields import InvalidTask, check_key, check_timezone
from taskengine_core.timestamps import aware

SCHEDULE_KINDS = ("cron", "rrule", "once", "event")
MAX_RRULE_NUMBER = 100_000
"""Largest rrule COUNT or INTERVAL."""
SEARCH_STEPS = 200_000
"""Most function calls (Python or C, dateutil's included) one search for an rrule's fire may
make: about a second. dateutil steps through time one FREQ unit at a time while a rule does not
match (`FREQ=SECONDLY;BYHOUR=1` on a date that never comes searched for minutes); croniter
needs no such bound (it jumps field by field and gives up after 50 years)."""
SEARCH_SECONDS = 10.0
"""Backstop deadline of one search, whatever its steps cost (normally reached only by steps)."""
SPACING_SAMPLE = 10
"""Fires after now that `check_fires` looks at to measure a schedule's shortest interval."""


class ScheduleSearchExceeded(InvalidTask):
    """A search for a schedule's next fire ran out of its budget of steps or time."""

    def __init__(self, kind: str, expr: str) -> None:
        super().__init__(
            "schedule_expr",
            f"invalid {kind} {expr!r}: no fire found within {SEARCH_STEPS} search steps: it"
            " never fires, or too rarely for its frequency (for a rare date use a coarser one,"
            " e.g. FREQ=YEARLY with BYMONTH and BYMONTHDAY)",
        )


class _OverBudget(BaseException):
    """Raised inside the search; a BaseException so no library's `except Exception` eats it."""


_T = TypeVar("_T")


def bounded(search: Callable[[], _T], kind: str, expr: str) -> _T:
    """`search()`, stopped with ScheduleSearchExceeded after SEARCH_STEPS function calls or
    SEARCH_SECONDS: dateutil offers no bound of its own on the work of a search."""
    steps = 0
    deadline = time.monotonic() + SEARCH_SECONDS

    def count(frame: object, event: str, arg: object) -> None:
        nonlocal steps
        steps += 1
        if steps > SEARCH_STEPS or (steps % 1024 == 0 and time.monotonic() > deadline):
            raise _OverBudget

    previous = sys.getprofile()  # per thread: only this search is counted
    sys.setprofile(count)
    try:
        return search()
    except _OverBudget:
        raise ScheduleSearchExceeded(kind, expr) from None
    finally:
        sys.setprofile(previous)


_SEARCHES = ThreadPoolExecutor(max_workers=2, thread_name_prefix="schedule-search")


async def off_loop(fn: Callable[..., _T], *args: object) -> _T:
    """`fn(*args)` on the threads kept for schedule searches: never on the event loop, and
    never holding a thread that store calls need."""
    return await asyncio.get_running_loop().run_in_executor(_SEARCHES, functools.partial(fn, *args))


# --- wall-clock time -> instants ----------------------------------------------------------


def _transition(before: datetime, after: datetime, zone: ZoneInfo) -> datetime:
    """The first whole second in (before, after] whose UTC offset differs from before's."""
    lo, hi = int(before.timestamp()), int(after.timestamp())
    offset = datetime.fromtimestamp(lo, zone).utcoffset()
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if datetime.fromtimestamp(mid, zone).utcoffset() == offset:
            lo = mid
        else:
            hi = mid
    return datetime.fromtimestamp(hi, UTC)


def _instant(wall: datetime, zone: ZoneInfo) -> datetime:
    """When a naive local time happens: first occurrence if repeated, end of gap if skipped."""
    first = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    if first.astimezone(zone).replace(tzinfo=None) == wall:
        return first
    # Skipped: read with the offset after the gap (fold=1) it lands before the gap, with the
    # offset before it (fold=0) after the gap; the transition lies between.
    return _transition(wall.replace(tzinfo=zone, fold=1), first, zone)


def _first_fire(
    next_wall: Callable[[datetime], datetime | None], zone: ZoneInfo, after: datetime
) -> datetime | None:
    """The first fire strictly after `after`; `next_wall(w)` is the first wall time > w."""
    after = aware(after)
    local = after.astimezone(zone)
    wall = local.replace(tzinfo=None, microsecond=0)
    if local.fold:
        # `after` is in the second pass of a repeated hour, whose wall times all fired in the
        # first pass: resume at the first wall time after the repeat.
        first_pass = local.replace(fold=0)
        offset = first_pass.utcoffset()
        assert offset is not None  # `local` has its zone
        end = _transition(first_pass, after, zone) + offset
        wall = end.replace(tzinfo=None) - timedelta(seconds=1)
    candidate = next_wall(wall)
    while candidate is not None:
        fire = _instant(candidate, zone)
        if fire > after:
            return fire
        candidate = next_wall(candidate)
    return None


# --- schedules ----------------------------------------------------------------------------


class Schedule:
    """When a task fires: `next_after` for time-driven kinds, `matches` for events."""

    kind: ClassVar[str]

    def next_after(self, after: datetime) -> datetime | None:
        """The first fire strictly after the aware instant `after` (UTC), or None if none."""
        raise NotImplementedError

    def matches(self, topic: str) -> bool:
        """Whether an event on `topic` fires the task."""
        return False


@dataclass(frozen=True)
class CronSchedule(Schedule):
    """5 fields (minute hour day month weekday) or 6 with seconds first, in `zone`."""

    expr: str
    zone: ZoneInfo
    _cron: croniter[datetime] = field(repr=False, compare=False)
    kind: ClassVar[str] = "cron"

    def next_after(self, after: datetime) -> datetime | None:
        return _first_fire(self._next_wall, self.zone, after)

    def _next_wall(self, wall: datetime) -> datetime | None:
        # A copy skips re-parsing the expression; croniter instances keep a cursor.
        cron = copy.copy(self._cron)
        try:
            return cron.get_next(datetime, start_time=wall)
        except CroniterBadDateError:
            return None


@dataclass(frozen=True)
class RRuleSchedule(Schedule):
    """An RFC 5545 rule over naive wall times in `zone`; `until` is an instant, inclusive."""

    rule: rrule
    zone: ZoneInfo
    start: datetime
    until: datetime | None = None
    period: timedelta | None = None
    """The rule repeats every `period` of wall time (no COUNT, fixed-length FREQ), if set."""
    text: str = ""
    """The rule as given, for messages."""
    kind: ClassVar[str] = "rrule"

    def next_after(self, after: datetime) -> datetime | None:
        fire = bounded(lambda: _first_fire(self._next_wall, self.zone, after), "rrule", self.text)
        return None if fire is None or (self.until and fire > self.until) else fire

    def _next_wall(self, wall: datetime) -> datetime | None:
        rule = self.rule
        if self.period and wall - self.start > self.period:
            # dateutil iterates from DTSTART; skip the whole periods before `wall`.
            rule = rule.replace(
                dtstart=self.start + (wall - self.start) // self.period * self.period
            )
        return rule.after(wall)


@dataclass(frozen=True)
class OnceSchedule(Schedule):
    """Fires once, at the instant `at` (aware, UTC)."""

    at: datetime
    kind: ClassVar[str] = "once"

    def next_after(self, after: datetime) -> datetime | None:
        return self.at if self.at > aware(after) else None


@dataclass(frozen=True)
class EventSchedule(Schedule):
    """Fired only by events whose topic equals `topic` exactly (no wildcards)."""

    topic: str
    kind: ClassVar[str] = "event"

    def next_after(self, after: datetime) -> datetime | None:
        return None

    def matches(self, topic: str) -> bool:
        return topic == self.topic


def parse_schedule(
    kind: str, expr: str | None, timezone: str = "UTC", start: datetime | None = None
) -> Schedule:
    """Validates a schedule; `start` (aware) is the rrule DTSTART when the rule names none."""
    zone = check_timezone(timezone)
    if kind not in SCHEDULE_KINDS:
        raise InvalidTask("schedule_kind", f"must be one of {', '.join(SCHEDULE_KINDS)}")
    if not isinstance(expr, str) or not expr.strip():
        raise InvalidTask("schedule_expr", f"is required for {kind} schedules")
    if kind == "cron":
        return _parse_cron(expr, zone)
    if kind == "rrule":
        return _parse_rrule(expr, zone, start)
    if kind == "once":
        return _parse_once(expr, zone)
    return EventSchedule(check_key(expr, "schedule_expr"))


def check_fires(schedule: Schedule, now: datetime, min_interval: timedelta) -> datetime | None:
    """The schedule's first fire after `now`, once the SPACING_SAMPLE fires after it are found
    at least `min_interval` apart; InvalidTask if not (or if a search runs out of budget)."""
    first = previous = schedule.next_after(now)
    for _ in range(SPACING_SAMPLE):
        following = None if previous is None else schedule.next_after(previous)
        if following is None or previous is None:
            break
        if following - previous < min_interval:
            raise InvalidTask(
                "schedule_expr",
                f"{schedule.kind} fires {(following - previous).total_seconds():g}s apart"
                f" ({previous.isoformat()} and {following.isoformat()}); the shortest"
                f" interval allowed between fires is {min_interval.total_seconds():g}s",
            )
        previous = following
    return first


_EQUAL_RANGE = re.compile(r"(\w+)-(\w+)(?:/\d+)?")
_HASHED = re.compile(r"[hr](\(.*\))?(/.*)?", re.IGNORECASE)


def _parse_cron(expr: str, zone: ZoneInfo) -> CronSchedule:
    fields = expr.split()
    alias = len(fields) == 1 and fields[0].startswith("@")
    if not expr.isascii() or not (len(fields) in (5, 6) or alias):
        raise InvalidTask(
            "schedule_expr",
            f"cron {expr!r} needs 5 fields (minute hour day month weekday) or 6 with seconds first",
        )
    if any(_HASHED.fullmatch(value) for part in fields for value in part.split(",")):
        raise InvalidTask(
            "schedule_expr", f"cron {expr!r}: hashed and random values (H, R) are not supported"
        )
    # croniter reads an equal range ("5-5") as the whole field; cron means the one value.
    fields = [",".join(map(_single, part.split(","))) for part in fields]
    line = " ".join(fields)
    try:
        croniter.expand(line, second_at_beginning=True, strict=True)
        template = croniter(line, datetime(2000, 1, 1), ret_type=datetime, second_at_beginning=True)
    except (CroniterError, ValueError, TypeError) as error:
        raise InvalidTask("schedule_expr", f"invalid cron {expr!r}: {error}") from None
    return CronSchedule(line, zone, template)


def _single(part: str) -> str:
    match = _EQUAL_RANGE.fullmatch(part)
    if match and match[1].lower() == match[2].lower():
        return match[1]
    if match and match[1].isdigit() and match[2].isdigit() and int(match[1]) == int(match[2]):
        return match[1]
    return part


_DTSTART = re.compile(
    r"DTSTART(?:;TZID=([^:;]+))?(?:;VALUE=DATE-TIME)?:(\d{8}T\d{6})(Z?)", re.IGNORECASE
)
_UNTIL = re.compile(r"(\d{8})(?:T(\d{6})(Z?))?")
_PERIODS = {
    "SECONDLY": timedelta(seconds=1),
    "MINUTELY": timedelta(minutes=1),
    "HOURLY": timedelta(hours=1),
    "DAILY": timedelta(days=1),
    "WEEKLY": timedelta(weeks=1),
}


def _parse_rrule(text: str, zone: ZoneInfo, start: datetime | None) -> RRuleSchedule:
    def invalid(problem: str) -> InvalidTask:
        return InvalidTask("schedule_expr", f"invalid rrule {text!r}: {problem}")

    lines = [line.strip() for line in text.splitlines() if line.strip()]
    starts = [line for line in lines if line.upper().startswith("DTSTART")]
    rules = [line.upper().removeprefix("RRULE:") for line in lines if line not in starts]
    if len(starts) > 1 or len(rules) != 1:
        raise invalid("give one RRULE line and at most one DTSTART line")
    if starts:
        match = _DTSTART.fullmatch(starts[0])
        if not match or (match[1] and match[3]):
            raise invalid("DTSTART must be YYYYMMDDTHHMMSS, with Z, TZID=zone or neither")
        if match[1]:
            try:
                zone = check_timezone(match[1])
            except InvalidTask as error:
                raise invalid(str(error)) from None
        zone = ZoneInfo("UTC") if match[3] else zone
        begin = _basic_datetime(match[2], invalid)
    elif start is None:
        raise ValueError("an rrule without DTSTART needs a start")
    else:
        begin = aware(start).astimezone(zone).replace(tzinfo=None, microsecond=0)
    params: dict[str, str] = {}
    for part in filter(None, (part.strip() for part in rules[0].split(";"))):
        name, _, value = part.partition("=")
        if name in params:
            raise invalid(f"{name} is given twice")
        params[name] = value
    if "COUNT" in params and "UNTIL" in params:
        raise invalid("COUNT and UNTIL cannot be combined")
    if "BYEASTER" in params:
        raise invalid("BYEASTER is not RFC 5545")
    for name in ("COUNT", "INTERVAL"):
        value = params.get(name, "1")
        if not (value.isascii() and value.isdigit() and 1 <= int(value) <= MAX_RRULE_NUMBER):
            raise invalid(f"{name} must be an integer from 1 to {MAX_RRULE_NUMBER}")
    until = _until(params.pop("UNTIL"), zone, invalid) if "UNTIL" in params else None
    try:
        rule = rrulestr(
            ";".join(f"{name}={value}" for name, value in params.items()), dtstart=begin
        )
    except (ValueError, TypeError, KeyError, IndexError) as error:
        raise invalid(str(error)) from None
    if not isinstance(rule, rrule):
        raise invalid("give one RRULE")
    period = None if "COUNT" in params else _PERIODS.get(params["FREQ"])
    if period:
        period *= int(params.get("INTERVAL", 1))
    try:
        first = bounded(lambda: _first_wall(rule, begin), "rrule", text)
    except ValueError as error:  # dateutil finds some impossible BYxxx only while iterating
        raise invalid(str(error)) from None
    if first is None:
        raise invalid("it does not fire within 400 years of its start")
    if until and _instant(first, zone) > until:
        raise invalid("UNTIL comes before its first fire")
    return RRuleSchedule(rule, zone, begin, until, period, text)


def _first_wall(rule: rrule, begin: datetime) -> datetime | None:
    """The rule's first wall time, if within 400 years of `begin`.

    dateutil looks for a match up to year 9999; the Gregorian calendar repeats every 400
    years, so searching a copy moved to just before then bounds that search.
    """
    shift = max(0, (9599 - begin.year) // 400 * 400)
    first = rule.replace(dtstart=begin.replace(year=begin.year + shift)).after(
        begin.replace(year=begin.year + shift), inc=True
    )
    return None if first is None else first.replace(year=first.year - shift)


def _basic_datetime(value: str, invalid: Callable[[str], InvalidTask]) -> datetime:
    try:
        return datetime.strptime(value, "%Y%m%dT%H%M%S")
    except ValueError:
        raise invalid(f"no such date-time {value}") from None


def _until(value: str, zone: ZoneInfo, invalid: Callable[[str], InvalidTask]) -> datetime:
    """UNTIL as an instant: Z is UTC, a floating date-time is local, a date ends its day."""
    match = _UNTIL.fullmatch(value)
    if not match:
        raise invalid("UNTIL must be YYYYMMDD, YYYYMMDDTHHMMSS or YYYYMMDDTHHMMSSZ")
    wall = _basic_datetime(f"{match[1]}T{match[2] or '235959'}", invalid)
    return wall.replace(tzinfo=UTC) if match[3] else _instant(wall, zone)


def _parse_once(expr: str, zone: ZoneInfo) -> OnceSchedule:
    try:
        at = datetime.fromisoformat(expr.strip())
        return OnceSchedule(aware(at) if at.tzinfo else _instant(at, zone))
    except (ValueError, OverflowError):
        raise InvalidTask("schedule_expr", f"{expr!r} is not an ISO-8601 date-time") from None
