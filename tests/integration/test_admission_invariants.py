"""Admission invariants, checked from the event log (`tests.support.admission_audit`).

First the audit itself, on hand-made histories: each rule must fail on a history that breaks
it and pass on a correct one. Then a seeded random workload through the real services, with
one admission controller and with two (the leader killed mid-run), audited as a whole.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import random
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from taskengine_admission.policy import Entry, Limits, choose
from taskengine_cli.clients import register
from taskengine_contracts.events import (
    Event,
    JobAdmitted,
    JobBroken,
    JobEvent,
    JobPaused,
    JobQueued,
    JobRetryScheduled,
    JobStarted,
    JobSubmitted,
    JobSucceeded,
    JobUpdated,
    RunSpec,
    SettingChanged,
)
from taskengine_core.ids import SETTINGS_STREAM, job_stream
from taskengine_core.jobs import FINAL_STATES, state_after
from taskengine_core.settings import RuntimeSettings
from taskengine_store.store import Position

from tests.support.admission_audit import Report, audit_admissions
from tests.support.system import ADMIN, Services
from tests.support.waiting import wait_until

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


class History:
    """A hand-made event log: each call appends one event at the next position."""

    def __init__(self) -> None:
        self.log: list[Position] = []
        self.versions: dict[int, int] = {}
        self.admissions: dict[int, int] = {}
        self.clock = itertools.count()
        self.settings_version = 0

    @property
    def position(self) -> int:
        return len(self.log)

    def add(self, event: Event) -> int:
        self.log.append(Position(self.position + 1, event))
        return self.position

    def _job(self, job: int, kind, **fields):  # type: ignore[no-untyped-def]
        self.versions[job] = self.versions.get(job, 0) + 1
        at = T0 + timedelta(seconds=next(self.clock))
        return kind(
            id=job_stream(job), version=self.versions[job], at=at, job_id=job, client="c", **fields
        )

    def submit(self, job: int, priority: int = 5) -> int:
        return self.add(
            self._job(
                job,
                JobSubmitted,
                workflow="noop",
                parameters={},
                priority=priority,
                run_at=T0,
                state="queued",
                run=RunSpec(),
            )
        )

    def queue(self, job: int, priority: int = 5) -> int:
        attempts = self.admissions.get(job, 0)
        return self.add(
            self._job(
                job,
                JobQueued,
                workflow="noop",
                priority=priority,
                reason="retry",
                attempts=attempts,
            )
        )

    def admit(self, job: int, position: int | None = None, attempt: int | None = None) -> int:
        """Admits `job`, saying admission had applied everything so far (or `position`)."""
        self.admissions[job] = self.admissions.get(job, 0) + 1
        return self.add(
            self._job(
                job,
                JobAdmitted,
                workflow="noop",
                priority=5,
                attempt=attempt or self.admissions[job],
                running=0,
                max_jobs=0,
                position=self.position if position is None else position,
            )
        )

    def start(self, job: int) -> int:
        return self.add(self._job(job, JobStarted, workflow="noop", attempt=1, executor="t"))

    def succeed(self, job: int) -> int:
        return self.add(self._job(job, JobSucceeded, workflow="noop", attempt=1))

    def retry(self, job: int) -> int:
        return self.add(
            self._job(
                job,
                JobRetryScheduled,
                workflow="noop",
                priority=5,
                attempt=1,
                retry_at=T0,
                reason="exit 1",
            )
        )

    def pause(self, job: int) -> int:
        return self.add(self._job(job, JobPaused, by="c"))

    def breaks(self, job: int) -> int:
        return self.add(self._job(job, JobBroken, by="c", reason="broken"))

    def update(self, job: int, priority: int, state: str = "queued") -> int:
        return self.add(
            self._job(
                job,
                JobUpdated,
                state=state,
                workflow="noop",
                priority=priority,
                run_at=T0,
                persist=False,
                changed=["priority"],
            )
        )

    def set(self, **values: int) -> int:
        for name, value in values.items():
            self.settings_version += 1
            self.add(
                SettingChanged(
                    id=SETTINGS_STREAM,
                    version=self.settings_version,
                    at=T0,
                    name=name,
                    value=str(value),
                )
            )
        return self.position

    def audit(self) -> Report:
        return audit_admissions(self.log)

    def rules(self) -> list[str]:
        return [v.rule for v in self.audit().violations]


# --- the audit on hand-made histories -------------------------------------------------------


def test_a_correct_history_has_no_violations():
    h = History()
    h.set(max_jobs=3, priority_slots=1, priority_threshold=3)
    for job, priority in [(1, 5), (2, 7), (3, 2), (4, 5), (5, 9)]:
        h.submit(job, priority)
    # priority 2 first (reserved slot), then 5 and 5 (first come) fill the unreserved two
    h.admit(3)
    h.admit(1)
    h.admit(4)
    h.start(1)
    h.succeed(1)
    h.admit(2)  # ordinary 7 takes the freed unreserved slot
    h.retry(2)
    h.queue(2, 7)
    h.breaks(4)
    h.admit(2)  # its second attempt
    report = h.audit()
    assert report.violations == [], [str(v) for v in report.violations]
    assert report.admissions == 5 and report.most_running == 3


def test_admitting_beyond_max_jobs_is_a_violation():
    h = History()
    h.set(max_jobs=2)
    for job in (1, 2, 3):
        h.submit(job)
    h.admit(1), h.admit(2), h.admit(3)
    assert h.rules() == ["max_jobs"]


def test_max_jobs_is_judged_as_of_the_position_admission_had_applied():
    h = History()
    h.set(max_jobs=1)
    h.submit(1), h.submit(2)
    h.admit(1)
    seen = h.position
    h.set(max_jobs=2)  # admission had not seen this yet
    h.admit(2, position=seen)
    assert h.rules() == ["max_jobs"]


def test_a_lowered_max_jobs_admission_had_not_seen_is_no_violation():
    h = History()
    h.set(max_jobs=2)
    h.submit(1), h.submit(2)
    h.admit(1)
    seen = h.position
    h.set(max_jobs=1)
    h.admit(2, position=seen)
    assert h.rules() == []


def test_an_ordinary_job_in_a_reserved_slot_is_a_violation():
    h = History()
    h.set(max_jobs=3, priority_slots=2, priority_threshold=5)
    h.submit(1, 8), h.submit(2, 8)
    h.admit(1)
    h.admit(2)  # only one slot is unreserved
    assert h.rules() == ["reserved_slots"]


def test_priority_jobs_overflowing_the_reserved_slots_take_unreserved_ones():
    h = History()
    h.set(max_jobs=4, priority_slots=1, priority_threshold=5)
    h.submit(1, 1), h.submit(2, 1), h.submit(3, 9), h.submit(4, 9)
    h.admit(1), h.admit(2)  # one reserved, one overflowing into the unreserved three
    h.admit(3)
    assert h.rules() == []
    h.admit(4)  # 2 ordinary + 1 overflow = 3 unreserved slots: still fine
    assert h.rules() == []

    h = History()
    h.set(max_jobs=4, priority_slots=1, priority_threshold=5)
    h.submit(1, 1), h.submit(2, 1), h.submit(3, 1), h.submit(4, 9), h.submit(5, 9)
    h.admit(1), h.admit(2), h.admit(3), h.admit(4)  # 2 overflow + 1 ordinary: full
    assert h.rules() == []
    h.breaks(1)
    h.admit(5)  # 1 overflow + 2 ordinary = 3: fits again after the release
    assert h.rules() == []


def test_a_better_priority_passed_over_is_a_priority_inversion():
    h = History()
    h.set(max_jobs=1)
    h.submit(1, 5), h.submit(2, 1)
    h.admit(1)
    assert h.rules() == ["priority_order"]


def test_an_earlier_job_of_the_same_priority_passed_over_is_a_fifo_inversion():
    h = History()
    h.set(max_jobs=1)
    h.submit(1, 4), h.submit(2, 4)
    h.admit(2)
    assert h.rules() == ["fifo_order"]


def test_admitting_the_worse_job_first_in_one_commit_is_an_inversion():
    h = History()
    h.set(max_jobs=2)
    h.submit(1, 3), h.submit(2, 3)
    seen = h.position
    h.admit(2, position=seen), h.admit(1, position=seen)
    assert h.rules() == ["fifo_order"]


def test_a_job_queued_after_the_position_admission_had_applied_is_not_passed_over():
    h = History()
    h.set(max_jobs=1)
    h.submit(1, 5)
    seen = h.position
    h.submit(2, 1)  # admission had not seen it
    h.admit(1, position=seen)
    assert h.rules() == []


def test_a_reprioritised_job_is_judged_by_its_new_priority():
    h = History()
    h.set(max_jobs=1)
    h.submit(1, 5), h.submit(2, 9)
    h.update(2, 1)
    h.admit(1)
    assert h.rules() == ["priority_order"]


def test_a_key_changed_after_the_position_admission_had_applied_is_not_judged():
    h = History()
    h.set(max_jobs=1)
    h.submit(1, 5), h.submit(2, 9)
    seen = h.position
    h.update(2, 1)  # admission saw priority 9 when it chose
    h.admit(1, position=seen)
    assert h.rules() == []


def test_ordinary_jobs_wait_while_only_reserved_slots_remain():
    h = History()
    h.set(max_jobs=3, priority_slots=2, priority_threshold=3)
    h.submit(1, 6), h.submit(2, 7), h.submit(3, 2)
    h.admit(3)
    h.admit(1)  # the one unreserved slot
    report = h.audit()
    assert report.violations == [] and report.contested == 2
    h.admit(2)  # ordinary 7 into the reserved slot left
    assert h.rules() == ["reserved_slots"]


def test_a_release_admission_had_not_seen_leaves_the_order_to_judge():
    h = History()
    h.set(max_jobs=1)
    h.submit(1, 6), h.submit(2, 5)
    h.admit(2)
    seen = h.position
    h.breaks(2)  # frees the slot after what admission had applied
    h.submit(3, 1)
    h.admit(1, position=seen)  # job 3 came after `seen`: not passed over
    assert h.rules() == []


def test_admitting_a_job_twice_without_a_release_is_a_violation():
    h = History()
    h.set(max_jobs=5)
    h.submit(1)
    h.admit(1)
    h.admit(1, attempt=1)
    assert h.rules() == ["double_admission"]


def test_admitting_a_paused_job_is_a_violation():
    h = History()
    h.submit(1)
    h.pause(1)
    h.admit(1)
    assert h.rules() == ["not_queued"]


def test_a_wrong_attempt_number_is_a_violation():
    h = History()
    h.set(max_jobs=5)
    h.submit(1)
    h.admit(1)
    h.retry(1)
    h.queue(1)
    h.admit(1, attempt=1)
    assert h.rules() == ["attempt"]


def test_a_position_that_is_missing_or_goes_back_is_a_violation():
    h = History()
    h.set(max_jobs=5)
    h.submit(1), h.submit(2), h.submit(3)
    h.admit(1, position=0)
    h.admit(2)
    h.admit(3, position=2)
    assert h.rules() == ["position", "position"]


def test_a_decision_inside_a_commit_is_a_violation_when_the_commits_are_known():
    h = History()
    h.set(max_jobs=1)
    first, seen, last = h.submit(1, 5), h.submit(2, 5), h.submit(3, 1)  # one commit
    h.admit(1, position=seen)  # job 3 was queued at the same moment, with a better priority
    assert audit_admissions(h.log).violations == []  # by event positions alone: no inversion
    commits = {n: last for n in (first, seen, last)}
    assert [v.rule for v in audit_admissions(h.log, commits).violations] == ["partial_commit"]


# --- the audit against the real policy, with a lagging view ----------------------------------


def simulated(seed: int, bug: str = "") -> History:
    """A random history admitted by `policy.choose` the way the controller applies it.

    Admission applies the log up to a random point (lagging behind what others append), then
    admits with that position; a chosen job that moved meanwhile is re-read and the choice
    made again (the controller's `Conflict` path). `bug` breaks the controller on purpose.
    """
    rng = random.Random(seed)
    h = History()
    truth: dict[int, str] = {}  # queued, holding, retry, paused, out
    keys: dict[int, tuple[int, datetime]] = {}  # priority and time queued, as the log says
    view: dict[int, Entry] = {}
    settings = RuntimeSettings()
    applied = 0
    numbers = itertools.count(1)

    def queued(job: int) -> None:
        event = h.log[-1].event
        truth[job], keys[job] = "queued", (event.priority, event.at)  # type: ignore[attr-defined]

    def entry(job: int) -> Entry:
        priority, at = keys[job]
        return Entry(job_stream(job), job, "c", "noop", priority, h.versions[job], at)

    def apply(upto: int) -> None:
        nonlocal applied
        for item in h.log[applied:upto]:
            e = item.event
            if isinstance(e, SettingChanged):
                settings.apply(e)
                continue
            known = view.get(e.job_id)  # type: ignore[attr-defined]
            if known and e.version <= known.version and bug != "replays re-read events":
                continue  # already re-read from the job's stream
            if isinstance(e, (JobSubmitted, JobQueued)):
                attempts = e.attempts if isinstance(e, JobQueued) else 0
                view[e.job_id] = Entry(
                    e.id, e.job_id, "c", "noop", e.priority, e.version, e.at, attempt=attempts
                )
            elif isinstance(e, JobAdmitted) and e.job_id in view:
                view[e.job_id].admitted, view[e.job_id].version = True, e.version
            elif isinstance(e, JobUpdated) and e.job_id in view:
                view[e.job_id].priority, view[e.job_id].version = e.priority, e.version
            elif isinstance(e, (JobSucceeded, JobRetryScheduled, JobPaused, JobBroken)):
                view.pop(e.job_id, None)
        applied = upto

    def admit() -> None:
        apply(rng.randint(applied, len(h.log)))
        limits = Limits(
            settings.max_jobs + (bug == "over max_jobs"),
            0 if bug == "no reserved slots" else settings.int("priority_slots"),
            settings.int("priority_threshold"),
        )
        while True:
            entries = list(view.values())
            if bug == "last in first out":
                flipped = {e.job_id: e for e in entries}
                entries = [
                    dataclasses.replace(e, queued_at=T0 - (e.queued_at - T0)) for e in entries
                ]
                chosen = [flipped[e.job_id] for e in choose(entries, limits)]
            else:
                chosen = choose(entries, limits)
            stale = [e.job_id for e in chosen if e.version != h.versions[e.job_id]]
            if not stale:
                break
            for job in stale:  # re-read from the job's stream
                view.pop(job, None)
                if truth[job] == "queued":
                    view[job] = entry(job)
        for e in chosen:
            h.admit(e.job_id, position=applied)
            e.admitted, e.version, truth[e.job_id] = True, h.versions[e.job_id], "holding"

    h.set(max_jobs=2)
    for _ in range(400):
        in_state = {s: [j for j, t in truth.items() if t == s] for s in ("queued", "holding")}
        in_state |= {s: [j for j, t in truth.items() if t == s] for s in ("retry", "paused")}
        roll = rng.random()
        if roll < 0.25:
            job = next(numbers)
            h.submit(job, rng.randint(1, 10))
            queued(job)
        elif roll < 0.32:
            h.set(
                **rng.choice(
                    [
                        {"max_jobs": rng.randint(1, 5)},
                        {"priority_slots": rng.randint(0, 3)},
                        {"priority_threshold": rng.randint(2, 6)},
                    ]
                )
            )
        elif roll < 0.5 and in_state["holding"]:
            job = rng.choice(in_state["holding"])
            end = rng.choice(["succeed", "retry", "break"])
            if end == "succeed":
                h.start(job), h.succeed(job)
            else:
                (h.retry if end == "retry" else h.breaks)(job)
            truth[job] = "retry" if end == "retry" else "out"
        elif roll < 0.55 and in_state["retry"] + in_state["paused"]:
            job = rng.choice(in_state["retry"] + in_state["paused"])
            h.queue(job, keys[job][0])
            queued(job)
        elif roll < 0.62 and in_state["queued"]:
            job = rng.choice(in_state["queued"])
            priority = rng.randint(1, 10)
            h.update(job, priority)
            keys[job] = (priority, keys[job][1])
        elif roll < 0.66 and in_state["queued"]:
            job = rng.choice(in_state["queued"])
            (h.pause if rng.random() < 0.7 else h.breaks)(job)
            truth[job] = "paused" if isinstance(h.log[-1].event, JobPaused) else "out"
        else:
            admit()
    return h


@pytest.mark.parametrize("seed", range(20))
def test_histories_admitted_by_the_policy_pass_the_audit(seed):
    report = simulated(seed).audit()
    assert report.violations == [], f"seed {seed}: " + "\n".join(map(str, report.violations))
    assert report.admissions > 30 and report.contested > 10


@pytest.mark.parametrize(
    ("bug", "rule"),
    [
        ("over max_jobs", "max_jobs"),
        ("no reserved slots", "reserved_slots"),
        ("last in first out", "fifo_order"),
        ("replays re-read events", "max_jobs"),
    ],
)
def test_histories_admitted_by_a_broken_controller_fail_the_audit(bug, rule):
    found = {v.rule for seed in range(20) for v in simulated(seed, bug).audit().violations}
    assert rule in found, found


# --- a random workload through the real services --------------------------------------------

FINAL = {str(s) for s in FINAL_STATES}


class Workload:
    """Drives the gateway at random (seeded) and follows job states from the event log."""

    def __init__(self, services: Services, seed: int):
        self.services, self.rng = services, random.Random(seed)
        self.http = services.client()
        self.states: dict[int, str] = {}
        self.read = 0
        self.submitted = self.reruns = 0

    def gateway_up(self) -> bool:
        try:
            return self.http.get("/").status_code == 200
        except httpx.TransportError:
            return False

    def follow(self) -> None:
        while batch := self.services.store.events_after(self.read, 5000):
            for item in batch:
                if isinstance(item.event, JobEvent):
                    self.states[item.event.job_id] = str(state_after(item.event))
            self.read = batch[-1].position

    def jobs_in(self, *states: str) -> list[int]:
        return sorted(job for job, state in self.states.items() if state in states)

    def answered(self, response: httpx.Response) -> httpx.Response:
        # 400 / 409: the job moved meanwhile (it is a race on purpose); anything else is a bug
        assert response.status_code in (200, 400, 409), response.text
        return response

    def submit(self) -> None:
        rng = self.rng
        workflow = rng.choices(["sleep", "fail", "flaky"], [8, 1, 1])[0]
        parameters = {"seconds": round(rng.uniform(0.05, 0.4), 2)} if workflow == "sleep" else {}
        body = {"job": {"workflow": workflow}, "parameters": parameters}
        response = self.http.post("/job", json={**body, "priority": rng.randint(1, 10)})
        assert response.status_code == 200, response.text
        self.submitted += 1

    def setting(self, name: str, value: int) -> None:
        response = self.http.post("/settings", json={"name": name, "setting": value})
        assert response.status_code == 200, response.text

    def patch(self, job: int, **body: object) -> None:
        self.answered(self.http.patch(f"/jobs/{job}", json=body))

    def step(self) -> None:
        """One random move: mostly submissions, then settings and lifecycle changes."""
        rng, pick = self.rng, self.rng.choice
        self.follow()
        queued, paused = self.jobs_in("queued"), self.jobs_in("paused")
        roll = rng.random()
        if roll < 0.45:
            self.submit()
        elif roll < 0.6:
            name, low, high = pick(
                [("max_jobs", 1, 5), ("priority_slots", 0, 3), ("priority_threshold", 2, 6)]
            )
            self.setting(name, rng.randint(low, high))
        elif roll < 0.7 and queued:
            self.patch(pick(queued), priority=rng.randint(1, 10))
        elif roll < 0.8 and queued:
            self.patch(pick(queued), queue_state="paused")
        elif roll < 0.88 and paused:
            self.patch(pick(paused), queue_state="queued")
        elif roll < 0.94 and (breakable := self.jobs_in("queued", "running", "paused")):
            self.patch(pick(breakable), queue_state="broken")
        elif self.reruns < 10 and (done := self.jobs_in(*FINAL, "running")):
            self.reruns += 1
            self.answered(self.http.post(f"/jobs/{pick(done)}/rerun"))

    def resume_all(self) -> bool:
        """Resumes every paused job; True once none is paused."""
        self.follow()
        for job in self.jobs_in("paused"):
            self.patch(job, queue_state="queued")
        return not self.jobs_in("paused")

    def all_final(self) -> bool:
        self.follow()
        return bool(self.states) and all(state in FINAL for state in self.states.values())


def logged(services: Services, instance: str, text: str, after: int = 0) -> bool:
    return text in services.log(instance)[after:]


LEADING = "admission: leading"
STANDBY = "admission: standby, waiting for the leader lock"


def kill_the_leader(services: Services, controllers: int) -> tuple[int, int]:
    """kill -9 of admission-a, the leader: the standby takes over, or (alone) it restarts.

    Restarted, as its supervisor would, admission-a leads again or waits as the standby.
    Returns the log position and admission-a's log length at the kill."""
    killed_at = services.store.max_position()
    offset = len(services.log("admission-a"))
    services.kill("admission-a")
    if controllers == 2:
        wait_until(lambda: logged(services, "admission-b", LEADING), what="the takeover")
    services.start_as("admission", "admission-a")
    expected = STANDBY if controllers == 2 else LEADING
    wait_until(lambda: logged(services, "admission-a", expected, offset), what=expected)
    return killed_at, offset


@pytest.mark.parametrize("controllers", [1, 2], ids=["one-controller", "two-controllers"])
def test_a_random_workload_keeps_the_admission_invariants(services, controllers):
    seed = int(os.environ.get("TASKENGINE_TEST_SEED") or random.randrange(10**6))
    print(f"seed {seed} (TASKENGINE_TEST_SEED={seed} repeats the workload's choices)")
    register(services.store, *ADMIN, admin=True)
    services.start("relay", "scheduler", "dispatcher", "gateway")
    services.start_as("admission", "admission-a")
    wait_until(lambda: logged(services, "admission-a", LEADING), what="admission-a to lead")
    if controllers == 2:
        services.start_as("admission", "admission-b")
        wait_until(lambda: logged(services, "admission-b", STANDBY), what="a standby")
    workload = Workload(services, seed)
    wait_until(workload.gateway_up, what="the gateway")
    for name, value in [("retry_delay", 0), ("retry_limit", 1), ("max_jobs", 1)]:
        workload.setting(name, value)
    for _ in range(12):  # a burst queued at once: contention whatever the random walk does
        workload.submit()
    workload.setting("max_jobs", 3)

    target = workload.rng.randint(60, 90)
    killed_at = offset = 0
    while workload.submitted < target:
        workload.step()
        if not killed_at and workload.submitted >= target // 2:
            killed_at, offset = kill_the_leader(services, controllers)
        time.sleep(workload.rng.uniform(0.02, 0.12))  # the workload's pace, not a wait

    # Let everything finish: room for every job, nothing left paused.
    workload.setting("priority_slots", 0)
    workload.setting("max_jobs", 5)
    wait_until(workload.resume_all, timeout=30, what="no paused job")
    wait_until(workload.all_final, timeout=90, every=0.25, what=f"every job final (seed {seed})")

    log = _whole_log(services)
    report = audit_admissions(log, _commit_ends(services))
    kinds = Counter(type(i.event).__name__ for i in log)
    print(f"{len(workload.states)} jobs, {report}, events {dict(kinds)}")
    assert report.violations == [], f"seed {seed}:\n" + "\n".join(map(str, report.violations))
    jobs = len(workload.states)
    assert target <= jobs <= target + 10, f"seed {seed}: {jobs} jobs"
    assert report.admissions >= jobs // 2 and report.contested > 10, (seed, report)
    admitted_at = [i.position for i in log if isinstance(i.event, JobAdmitted)]
    before, after = (
        [p for p in admitted_at if p < killed_at],
        [p for p in admitted_at if p > killed_at],
    )
    assert before and after, (
        f"seed {seed}: {len(before)} admitted before the kill, {len(after)} after"
    )
    if controllers == 2:  # after the kill, only admission-b led
        assert not logged(services, "admission-a", LEADING, offset)


def _whole_log(services: Services) -> list[Position]:
    items: list[Position] = []
    while batch := services.store.events_after(items[-1].position if items else 0, 5000):
        items.extend(batch)
    return items


def _commit_ends(services: Services) -> dict[int, int]:
    """Each position: the last position of its commit (events of one transaction share xmin
    and are consecutive)."""
    rows = services.store.query(
        "SELECT notification_id AS position, xmin::text AS tx FROM stored_events"
        " ORDER BY notification_id"
    )
    ends: dict[int, int] = {}
    commit: list[int] = []
    for row, following in zip(rows, [*rows[1:], None], strict=True):
        commit.append(row["position"])
        if following is None or following["tx"] != row["tx"]:
            ends.update(dict.fromkeys(commit, commit[-1]))
            commit = []
    return ends
