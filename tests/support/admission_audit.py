"""The admission invariants, checked from the event log alone (a pure function of its events).

Every `JobAdmitted` at log position N names the position P of the last event admission had
applied when it chose the job. The audit folds the whole log in order and, for each admission,
judges it with the settings as of P (`max_jobs`, `priority_slots`, `priority_threshold`):

- `max_jobs`: the jobs holding a slot just after N (admitted and not yet released in the log
  up to N) are at most `max_jobs`.
- `reserved_slots`: an ordinary job (priority > threshold) is admitted only if, just after N,
  ordinary jobs plus priority jobs overflowing the reserved slots fit in the unreserved ones:
  `ordinary + max(0, priority - reserved) <= max_jobs - reserved`, where
  `reserved = min(priority_slots, max_jobs)` (the semantics of `policy.choose`).
- `priority_order` / `fifo_order`: no job W with a better admission key (priority, then the
  time it was queued, then job number) was passed over, if W was waiting at P and still is at
  N with the same key (a key that changed in between may have reached admission either way).
  The reserved slots never excuse it: an ordinary job's key is never better than a priority
  job's, and when an ordinary job may not have a slot, no worse-keyed (ordinary) one may.
- `double_admission` / `not_queued`: a job is admitted only while queued, never twice without
  a release between; `attempt`: each admission runs attempt (earlier admissions + 1);
  `position`: P lies before N and never goes back.
- `partial_commit` (when the commits are known): P is the last event of its commit. A commit
  is seen whole or not at all, so jobs queued in one commit wait from the same moment.

Which state a job is in after an event is the lifecycle's (`state_after`): queued jobs wait,
admitted and running ones hold a slot, every other state holds none.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from taskengine_contracts.events import (
    Event,
    JobAdmitted,
    JobEvent,
    JobQueued,
    JobSubmitted,
    JobUpdated,
    SettingChanged,
)
from taskengine_core.jobs import HOLDS_SLOT, JobState, state_after
from taskengine_core.settings import RuntimeSettings

Key = tuple[int, datetime, int]
"""Admission order: priority (1 first), then the time the job was queued, then its number."""

WAITING, HOLDING, OUT = "waiting", "holding", "out"


class Logged(Protocol):
    """An event with its log position (e.g. `taskengine_store.store.Position`)."""

    @property
    def position(self) -> int: ...

    @property
    def event(self) -> Event: ...


@dataclass(frozen=True)
class Limits:
    max_jobs: int
    priority_slots: int
    priority_threshold: int

    @classmethod
    def of(cls, settings: RuntimeSettings) -> Limits:
        return cls(
            settings.max_jobs, settings.int("priority_slots"), settings.int("priority_threshold")
        )

    @property
    def reserved(self) -> int:
        return min(self.priority_slots, self.max_jobs)

    def is_priority(self, priority: int) -> bool:
        return priority <= self.priority_threshold

    def unreserved_taken(self, priorities: Iterable[int]) -> int:
        """Unreserved slots taken: ordinary jobs plus priority jobs beyond the reserved."""
        held = list(priorities)
        urgent = sum(self.is_priority(p) for p in held)
        return len(held) - urgent + max(0, urgent - self.reserved)


@dataclass(frozen=True)
class Status:
    state: str
    key: Key | None = None
    """While waiting: its admission key; while holding a slot: the key it was admitted with."""


@dataclass
class Timeline:
    """A job's status after each of its events, to look up its status as of any position."""

    positions: list[int] = field(default_factory=list)
    statuses: list[Status] = field(default_factory=list)
    admissions: int = 0

    def record(self, position: int, status: Status) -> None:
        self.positions.append(position)
        self.statuses.append(status)

    def at(self, position: int) -> Status:
        index = bisect_right(self.positions, position) - 1
        return self.statuses[index] if index >= 0 else Status(OUT)

    @property
    def now(self) -> Status:
        return self.statuses[-1] if self.statuses else Status(OUT)


@dataclass(frozen=True)
class Violation:
    position: int
    job_id: int
    rule: str
    detail: str

    def __str__(self) -> str:
        return f"@{self.position} job {self.job_id} {self.rule}: {self.detail}"


@dataclass
class Report:
    violations: list[Violation] = field(default_factory=list)
    admissions: int = 0
    contested: int = 0
    """Admissions while another job, waiting since before their position, was passed over."""
    most_running: int = 0


def audit_admissions(log: Iterable[Logged], commit_ends: Mapping[int, int] | None = None) -> Report:
    """Checks every admission in `log` (the whole event log, in position order); with
    `commit_ends` (each position: the position of the last event of its commit) also that
    each was decided on whole commits."""
    audit = _Audit(commit_ends or {})
    for item in log:
        audit.fold(item.position, item.event)
    return audit.report


class _Audit:
    def __init__(self, commit_ends: Mapping[int, int]) -> None:
        self.commit_ends = commit_ends
        self.report = Report()
        self.jobs: dict[int, Timeline] = {}
        self.settings = RuntimeSettings()
        self.setting_positions: list[int] = []
        self.setting_limits: list[Limits] = []
        self.last_position = 0
        self.last_admission_p = 0

    def limits_at(self, position: int) -> Limits:
        index = bisect_right(self.setting_positions, position) - 1
        return self.setting_limits[index] if index >= 0 else Limits.of(RuntimeSettings())

    def fold(self, n: int, event: Event) -> None:
        assert n > self.last_position, f"the log is not in position order at {n}"
        self.last_position = n
        if isinstance(event, SettingChanged):
            self.settings.apply(event)
            self.setting_positions.append(n)
            self.setting_limits.append(Limits.of(self.settings))
        elif isinstance(event, JobEvent):
            timeline = self.jobs.setdefault(event.job_id, Timeline())
            if isinstance(event, JobAdmitted):
                self.judge(n, event)
                timeline.admissions += 1
            timeline.record(n, _status_after(event, timeline.now))

    def judge(self, n: int, admitted: JobAdmitted) -> None:
        """Checks the admission at position `n` against the log before it."""
        self.report.admissions += 1
        job, p = admitted.job_id, admitted.position
        timeline = self.jobs[job]

        def violation(rule: str, detail: str) -> None:
            self.report.violations.append(Violation(n, job, rule, detail))

        before = timeline.now
        if before.state != WAITING or before.key is None:
            rule = "double_admission" if before.state == HOLDING else "not_queued"
            violation(rule, f"admitted while {before.state}")
            return
        expected = timeline.admissions + 1
        if admitted.attempt != expected:
            violation("attempt", f"attempt {admitted.attempt}, expected {expected}")
        if not 0 < p < n:
            violation("position", f"position {p} is not before the admission at {n}")
            return
        if self.commit_ends.get(p, p) != p:
            violation(
                "partial_commit",
                f"decided at {p}, inside a commit that ends at {self.commit_ends[p]}",
            )
        if p < self.last_admission_p:
            violation("position", f"position {p} goes back (before {self.last_admission_p})")
        self.last_admission_p = max(p, self.last_admission_p)
        limits, key = self.limits_at(p), before.key

        # Per the log, who holds a slot just after N.
        holding = [
            t.now.key[0]
            for other, t in self.jobs.items()
            if other != job and t.now.state == HOLDING and t.now.key is not None
        ] + [key[0]]
        self.report.most_running = max(self.report.most_running, len(holding))
        if len(holding) > limits.max_jobs:
            violation("max_jobs", f"{len(holding)} hold a slot ({limits})")
        unreserved = limits.max_jobs - limits.reserved
        if not limits.is_priority(key[0]) and limits.unreserved_taken(holding) > unreserved:
            violation(
                "reserved_slots",
                f"ordinary job (priority {key[0]}) admitted with {sorted(holding)} holding"
                f" slots: over the {unreserved} unreserved ({limits})",
            )

        passed_over = [
            (other, t.now.key)
            for other, t in self.jobs.items()
            if other != job and t.now.state == t.at(p).state == WAITING and t.now.key == t.at(p).key
        ]
        self.report.contested += bool(passed_over)
        for other, other_key in passed_over:
            if other_key is not None and other_key < key:
                violation(
                    "priority_order" if other_key[0] < key[0] else "fifo_order",
                    f"job {other} {_show(other_key)}, waiting since before {p}, was passed"
                    f" over by {_show(key)}",
                )


def _status_after(event: JobEvent, before: Status) -> Status:
    state = state_after(event)
    if isinstance(event, (JobSubmitted, JobQueued)) and state == JobState.QUEUED:
        return Status(WAITING, (event.priority, event.at, event.job_id))
    if isinstance(event, JobUpdated) and state == JobState.QUEUED:
        assert before.key is not None  # re-keyed, keeping the time it was queued
        return Status(WAITING, (event.priority, *before.key[1:]))
    if state in HOLDS_SLOT:
        return Status(HOLDING, before.key)
    return Status(OUT)


def _show(key: Key) -> str:
    return f"(priority {key[0]}, queued {key[1].isoformat()}, #{key[2]})"
