"""Admission policy: which waiting jobs get a slot now.

The rule, from the module docstring and `choose()`:

* waiting jobs are taken in `order`: priority (1 highest), then `queued_at`, then `job_id`;
* at most `max_jobs` jobs hold a slot (admitted/running plus newly chosen);
* `reserved = min(priority_slots, max_jobs)` slots are kept for priority jobs
  (`priority <= priority_threshold`). Priority jobs count against the reserved slots first;
  only the priority jobs beyond `reserved` ("overflow") take unreserved slots. Ordinary jobs
  may use the unreserved slots the overflow leaves: an ordinary job is admitted only while
  `ordinary + max(0, priority - reserved) < max_jobs - reserved`.

So, with max_jobs=5, priority_slots=2: ordinary jobs alone reach at most 3; priority jobs
alone reach 5; with 3 priority jobs running (1 overflow) 2 ordinary jobs still fit.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from uuid import UUID

import pytest
from taskengine_admission.policy import Entry, Limits, choose

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
_ids = iter(range(1, 10**9))


def entry(
    priority: int = 5,
    *,
    queued: float = 0,
    job_id: int | None = None,
    admitted: bool = False,
    key: str | None = None,
    client: str = "alice",
) -> Entry:
    number = next(_ids) if job_id is None else job_id
    return Entry(
        job_uuid=UUID(int=number),
        job_id=number,
        client=client,
        workflow="noop",
        priority=priority,
        version=2,
        queued_at=T0 + timedelta(seconds=queued),
        admitted=admitted,
        concurrency_key=key,
    )


def running(priority: int, count: int) -> list[Entry]:
    return [entry(priority, admitted=True) for _ in range(count)]


def waiting(priority: int, count: int, start: float = 0) -> list[Entry]:
    return [entry(priority, queued=start + i) for i in range(count)]


def ids(entries: list[Entry]) -> list[int]:
    return [e.job_id for e in entries]


NO_RESERVE = Limits(max_jobs=3, priority_slots=0, priority_threshold=5)
RESERVE_2_OF_5 = Limits(max_jobs=5, priority_slots=2, priority_threshold=5)


# --- Entry / Limits ---------------------------------------------------------------------


def test_entry_order_is_priority_then_queued_at_then_job_id():
    e = entry(3, queued=7, job_id=11)
    assert e.order == (3, T0 + timedelta(seconds=7), 11)


@pytest.mark.parametrize(("priority", "is_priority"), [(1, True), (5, True), (6, False)])
def test_priority_jobs_are_those_at_or_above_the_threshold(priority, is_priority):
    assert RESERVE_2_OF_5.is_priority(entry(priority)) is is_priority


# --- ordering ---------------------------------------------------------------------------


def test_nothing_waiting_admits_nothing():
    assert choose([], NO_RESERVE) == []
    assert choose(running(5, 1), NO_RESERVE) == []


def test_higher_priority_is_admitted_first_regardless_of_arrival():
    late_urgent = entry(1, queued=100)
    early_normal = entry(8, queued=0)
    middle = entry(4, queued=50)
    limits = Limits(max_jobs=2, priority_slots=0, priority_threshold=5)
    assert choose([early_normal, middle, late_urgent], limits) == [late_urgent, middle]


def test_same_priority_is_first_come_first_served():
    first, second, third = entry(5, queued=1), entry(5, queued=2), entry(5, queued=3)
    limits = Limits(max_jobs=2, priority_slots=0, priority_threshold=5)
    assert choose([third, first, second], limits) == [first, second]


def test_same_priority_and_queued_at_falls_back_to_job_id():
    a, b, c = entry(5, job_id=30), entry(5, job_id=10), entry(5, job_id=20)
    limits = Limits(max_jobs=2, priority_slots=0, priority_threshold=5)
    assert ids(choose([a, b, c], limits)) == [10, 20]


def test_chosen_jobs_are_returned_in_admission_order():
    entries = [entry(p, queued=q) for p, q in [(9, 0), (2, 5), (9, -1), (2, 1), (5, 3)]]
    chosen = choose(entries, Limits(max_jobs=10, priority_slots=0, priority_threshold=5))
    assert [(e.priority, e.queued_at) for e in chosen] == sorted(
        (e.priority, e.queued_at) for e in entries
    )


def test_already_admitted_entries_are_never_chosen_again():
    held = running(1, 2)
    chosen = choose([*held, *waiting(1, 1)], Limits(5, 0, 5))
    assert len(chosen) == 1
    assert not any(e.admitted for e in chosen)


# --- max_jobs ---------------------------------------------------------------------------


def test_admits_only_up_to_max_jobs():
    assert len(choose(waiting(5, 10), NO_RESERVE)) == 3


def test_running_jobs_count_against_max_jobs():
    assert len(choose([*running(9, 2), *waiting(5, 10)], NO_RESERVE)) == 1


def test_nothing_is_admitted_when_all_slots_are_taken():
    assert choose([*running(9, 3), *waiting(1, 3)], NO_RESERVE) == []


def test_nothing_is_admitted_when_more_than_max_jobs_run():
    # e.g. max_jobs was lowered while jobs ran
    assert choose([*running(9, 4), *waiting(1, 3)], NO_RESERVE) == []


# --- reserved priority slots --------------------------------------------------------------


def test_ordinary_jobs_alone_use_at_most_the_unreserved_slots():
    chosen = choose(waiting(6, 10), RESERVE_2_OF_5)
    assert len(chosen) == 3


def test_ordinary_jobs_of_every_ordinary_priority_share_the_unreserved_slots():
    entries = [entry(p, queued=i) for i, p in enumerate([6, 7, 8, 9, 10, 10, 6])]
    chosen = choose(entries, RESERVE_2_OF_5)
    assert [e.priority for e in chosen] == [6, 6, 7]


def test_priority_jobs_alone_can_use_every_slot():
    assert len(choose(waiting(5, 10), RESERVE_2_OF_5)) == 5
    assert len(choose(waiting(1, 10), RESERVE_2_OF_5)) == 5


def test_with_unreserved_slots_full_only_priority_jobs_are_admitted():
    entries = [*running(6, 3), *waiting(7, 3, start=0), *waiting(2, 3, start=10)]
    chosen = choose(entries, RESERVE_2_OF_5)
    assert [e.priority for e in chosen] == [2, 2]


def test_two_priority_and_three_ordinary_running_fill_five_slots():
    entries = [*running(1, 2), *running(8, 3), *waiting(1, 2), *waiting(8, 2)]
    assert choose(entries, RESERVE_2_OF_5) == []


def test_priority_jobs_in_reserved_slots_do_not_keep_ordinary_jobs_waiting():
    # 2 priority jobs run in the 2 reserved slots: all 3 unreserved slots stay ordinary.
    entries = [*running(3, 2), *waiting(8, 5)]
    assert len(choose(entries, RESERVE_2_OF_5)) == 3


def test_priority_overflow_takes_unreserved_slots_from_ordinary_jobs():
    # 3 priority jobs run: 2 in reserved slots, 1 overflowing into an unreserved slot,
    # which leaves 2 unreserved slots (and 2 free slots in all) for ordinary jobs.
    entries = [*running(3, 3), *waiting(8, 5)]
    assert len(choose(entries, RESERVE_2_OF_5)) == 2


def test_four_priority_running_leave_one_slot_for_an_ordinary_job():
    entries = [*running(3, 4), *waiting(8, 5)]
    assert len(choose(entries, RESERVE_2_OF_5)) == 1


def test_waiting_priority_jobs_fill_reserved_slots_before_ordinary_jobs_are_counted():
    # 1 priority waiting (goes to a reserved slot), ordinary jobs still get all 3 unreserved.
    entries = [*waiting(8, 5, start=0), entry(2, queued=99)]
    chosen = choose(entries, RESERVE_2_OF_5)
    assert [e.priority for e in chosen] == [2, 8, 8, 8]


def test_waiting_priority_overflow_reduces_ordinary_admissions():
    # 3 priority jobs waiting: 2 reserved + 1 overflow; 2 ordinary fit in what remains.
    entries = [*waiting(8, 5, start=0), *waiting(2, 3, start=50)]
    chosen = choose(entries, RESERVE_2_OF_5)
    assert [e.priority for e in chosen] == [2, 2, 2, 8, 8]


def test_ordinary_jobs_already_over_their_share_block_further_ordinary_jobs():
    # e.g. priority_slots was raised while 4 ordinary jobs ran
    entries = [*running(8, 4), *waiting(8, 2), *waiting(1, 2, start=10)]
    chosen = choose(entries, RESERVE_2_OF_5)
    assert [e.priority for e in chosen] == [1]


def test_the_threshold_itself_is_a_priority_job():
    limits = Limits(max_jobs=2, priority_slots=2, priority_threshold=3)
    assert len(choose(waiting(3, 5), limits)) == 2
    assert choose(waiting(4, 5), limits) == []


def test_priority_slots_above_max_jobs_reserve_every_slot_and_no_more():
    limits = Limits(max_jobs=3, priority_slots=10, priority_threshold=5)
    assert choose(waiting(9, 5), limits) == []
    assert len(choose(waiting(1, 5), limits)) == 3
    assert len(choose([*running(1, 1), *waiting(1, 5)], limits)) == 2


def test_priority_slots_equal_to_max_jobs_admits_no_ordinary_job():
    limits = Limits(max_jobs=2, priority_slots=2, priority_threshold=5)
    assert [e.priority for e in choose([*waiting(9, 3), *waiting(5, 1)], limits)] == [5]


def test_zero_priority_slots_treat_all_jobs_alike_apart_from_order():
    entries = [*waiting(9, 2, start=0), *waiting(1, 2, start=10)]
    chosen = choose(entries, Limits(max_jobs=3, priority_slots=0, priority_threshold=5))
    assert [e.priority for e in chosen] == [1, 1, 9]


def test_choose_does_not_mark_entries_admitted():
    entries = waiting(5, 2)
    choose(entries, NO_RESERVE)
    assert not any(e.admitted for e in entries)


# --- concurrency keys ------------------------------------------------------------------------

WIDE = Limits(max_jobs=10, priority_slots=0, priority_threshold=5)


def test_one_job_per_concurrency_key_is_admitted_at_a_time():
    first, second, other = entry(key="db"), entry(key="db", queued=1), entry(key="mail", queued=2)
    assert ids(choose([first, second, other], WIDE)) == [first.job_id, other.job_id]


def test_a_job_waits_while_another_with_its_key_runs_and_later_jobs_pass_it():
    holder, keyed, free = entry(key="db", admitted=True), entry(key="db"), entry(queued=5)
    assert ids(choose([holder, keyed, free], WIDE)) == [free.job_id]


def test_the_next_job_of_a_key_is_admitted_once_the_holder_is_gone():
    second, third = entry(key="db", queued=1), entry(key="db", queued=2)
    assert ids(choose([second, third], WIDE)) == [second.job_id]


def test_concurrency_keys_are_per_client():
    alice, bob = entry(key="db"), entry(key="db", client="bob", queued=1)
    assert ids(choose([alice, bob], WIDE)) == [alice.job_id, bob.job_id]


def test_a_key_blocked_job_takes_no_slot():
    limits = Limits(max_jobs=2, priority_slots=0, priority_threshold=5)
    holder, keyed = entry(key="db", admitted=True), entry(key="db", priority=1)
    free = entry(queued=3)
    assert ids(choose([holder, keyed, free], limits)) == [free.job_id]


# --- randomized invariants ----------------------------------------------------------------


def expected_choice(entries: list[Entry], limits: Limits) -> list[Entry]:
    """The docstring's rule, stated in counts rather than as a loop."""
    reserved = min(limits.priority_slots, limits.max_jobs)
    held = [e for e in entries if e.admitted]
    rp = sum(limits.is_priority(e) for e in held)
    ro = len(held) - rp
    ready = sorted((e for e in entries if not e.admitted), key=lambda e: e.order)
    wp = [e for e in ready if limits.is_priority(e)]
    wo = [e for e in ready if not limits.is_priority(e)]
    free = max(0, limits.max_jobs - rp - ro)
    take_p = min(len(wp), free)
    unreserved_left = (limits.max_jobs - reserved) - ro - max(0, rp + take_p - reserved)
    take_o = max(0, min(len(wo), free - take_p, unreserved_left))
    return wp[:take_p] + wo[:take_o]


def random_state(rng: random.Random) -> tuple[list[Entry], Limits]:
    max_jobs = rng.randint(1, 8)
    limits = Limits(
        max_jobs=max_jobs,
        priority_slots=rng.randint(0, max_jobs + 2),
        priority_threshold=rng.randint(1, 10),
    )
    entries: list[Entry] = []
    # Mostly within max_jobs; sometimes over it (max_jobs lowered while jobs ran).
    for _ in range(rng.randint(0, max_jobs + (2 if rng.random() < 0.2 else 0))):
        entries.append(entry(rng.randint(1, 10), queued=rng.randint(-50, 0), admitted=True))
    for _ in range(rng.randint(0, 12)):
        # few distinct queued_at values so ties are common and job_id breaks them
        entries.append(entry(rng.randint(1, 10), queued=rng.randint(0, 5)))
    rng.shuffle(entries)
    return entries, limits


@pytest.mark.parametrize("seed", range(5))
def test_random_states_keep_the_admission_invariants(seed):
    rng = random.Random(seed)
    for _ in range(100):
        entries, limits = random_state(rng)
        state = f"limits={limits} entries={[(e.priority, e.admitted) for e in entries]}"
        reserved = min(limits.priority_slots, limits.max_jobs)
        held = [e for e in entries if e.admitted]
        ready = [e for e in entries if not e.admitted]

        chosen = choose(list(entries), limits)

        # only waiting entries, each at most once
        assert all(not e.admitted for e in chosen), state
        assert len({id(e) for e in chosen}) == len(chosen), state
        assert all(any(e is r for r in ready) for e in chosen), state
        # in admission order
        assert [e.order for e in chosen] == sorted(e.order for e in chosen), state

        total = len(held) + len(chosen)
        after = held + chosen
        priority_after = sum(limits.is_priority(e) for e in after)
        ordinary_after = len(after) - priority_after
        overflow_after = max(0, priority_after - reserved)

        # never more than max_jobs hold a slot (nothing admitted if already over)
        if len(held) >= limits.max_jobs:
            assert chosen == [], state
        else:
            assert total <= limits.max_jobs, state

        # ordinary jobs, with priority overflow, stay within the unreserved slots
        if any(not limits.is_priority(e) for e in chosen):
            assert ordinary_after + overflow_after <= limits.max_jobs - reserved, state
            assert ordinary_after <= limits.max_jobs - reserved, state

        # a waiting priority job is left only when every slot is taken
        if any(limits.is_priority(e) and e not in chosen for e in ready):
            assert total >= limits.max_jobs, state
            assert all(limits.is_priority(e) for e in chosen), state

        # a waiting ordinary job is left only when no slot it may use is free
        if any(not limits.is_priority(e) and e not in chosen for e in ready):
            assert (
                total >= limits.max_jobs
                or ordinary_after + overflow_after >= limits.max_jobs - reserved
            ), state

        # FIFO within each class: the chosen are a prefix of that class's waiting jobs
        for is_priority in (True, False):
            queue = sorted((e for e in ready if limits.is_priority(e) is is_priority), key=_order)
            picked = [e for e in chosen if limits.is_priority(e) is is_priority]
            assert picked == queue[: len(picked)], state

        assert chosen == expected_choice(entries, limits), state


def _order(e: Entry) -> tuple[int, datetime, int]:
    return e.order
