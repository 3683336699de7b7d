"""The events a commit's NOTIFY carried are published as they came only where they follow the
last position published without a gap; anything else sends the relay to the log."""

from __future__ import annotations

import collections

import pytest
from taskengine_relay import relay
from taskengine_store.store import Outgoing, carried


def told(*positions: int) -> collections.deque[Outgoing]:
    return collections.deque(Outgoing(p, "s", p, "job.submitted", b"{}") for p in positions)


def test_events_that_follow_without_a_gap_are_taken_and_those_before_dropped():
    heard = told(3, 4, 5, 6)
    assert [e.position for e in relay.following(heard, 4)] == [5, 6]
    assert not heard


def test_a_gap_sends_the_relay_to_the_log():
    # 5 was used up by an insert rolled back, or its NOTIFY was lost: the log says which.
    heard = told(6, 7)
    assert relay.following(heard, 4) == []
    assert [e.position for e in heard] == [6, 7]  # kept: once past 5, they may follow again
    assert [e.position for e in relay.following(heard, 5)] == [6, 7]


def test_a_gap_inside_what_was_heard_ends_the_batch_there():
    heard = told(5, 6, 8)
    assert [e.position for e in relay.following(heard, 4)] == [5, 6]
    assert relay.following(heard, 6) == []


def test_a_batch_is_at_most_the_relays_batch(monkeypatch):
    monkeypatch.setattr(relay, "BATCH", 2)
    heard = told(1, 2, 3)
    assert [e.position for e in relay.following(heard, 0)] == [1, 2]
    assert [e.position for e in relay.following(heard, 2)] == [3]


def test_a_payload_not_as_a_commit_writes_it_is_not_carried():
    with pytest.raises(ValueError):
        carried("12\n12\tnot enough fields")
    with pytest.raises(ValueError):
        carried("12\n12\ts\t1\tjob.submitted\tnot hex")
    assert carried("12") == []
