"""`GET /jobs` query parameters as a `JobFilter`: the seed's integer `order_by` and `failed`."""

from __future__ import annotations

import pytest
from taskengine_core.jobs import JobState
from taskengine_gateway.dialects.taskengine_lists import ORDER_NUMBERS, list_filter
from taskengine_gateway.errors import BadRequest

S = JobState


def states(**params: str) -> set[str] | None:
    wanted = list_filter(params, "demo").states
    return None if wanted is None else set(wanted)


def test_order_by_takes_a_property_number_or_name():
    assert list_filter({"order_by": "3"}, "demo").order_by == "priority"
    assert list_filter({"order_by": "priority"}, "demo").order_by == "priority"
    assert list_filter({"order_by": "0"}, "demo").order_by == "id"
    assert list_filter({}, "demo").order_by == "id"
    assert [ORDER_NUMBERS[n] for n in (5, 7, 8)] == ["created_at", "queue_state", "run_at"]


@pytest.mark.parametrize("given", ["9", "-1", "²", "3.0", "nope", ""])
def test_order_by_outside_the_numbers_and_names_is_refused(given):
    with pytest.raises(BadRequest, match="order_by"):
        list_filter({"order_by": given}, "demo")


def test_failed_without_state_filters_every_state():
    assert states(failed="1") == {str(S.FAILED), str(S.TIMED_OUT)}
    not_failed = states(failed="0")
    assert not_failed is not None and str(S.FAILED) not in not_failed
    assert {str(S.SUCCEEDED), str(S.QUEUED), str(S.PAUSED)} <= not_failed
    assert states() is None


def test_failed_with_a_state_lists_only_completed_failures():
    assert states(state="2", failed="true") == {str(S.FAILED), str(S.TIMED_OUT)}
    assert states(state="2", failed="false") == {str(S.SUCCEEDED)}
    assert states(state="0", failed="1") == set()
    assert states(state="0", failed="0") == {str(S.QUEUED)}
    assert states(state="0") == {str(S.QUEUED)}


def test_failed_must_be_a_flag_even_without_state():
    with pytest.raises(BadRequest, match="failed"):
        list_filter({"failed": "maybe"}, "demo")
