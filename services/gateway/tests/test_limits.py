"""The failure limiter's buckets, the byte budget, and the caller's address behind trusted
proxies."""

from __future__ import annotations

import pytest
from taskengine_gateway.limits import (
    ByteBudget,
    FailureLimiter,
    TooManyAttempts,
    TooManyBytes,
    client_address,
    parse_networks,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_address_may_fail_burst_times_then_waits_for_a_token():
    clock = Clock()
    limiter = FailureLimiter(burst=3, per_minute=6, clock=clock)  # a token every 10 s
    assert limiter.wait("address:x") == 0
    assert [limiter.fail("address:x") for _ in range(2)] == [0, 0]
    assert limiter.fail("address:x") == pytest.approx(10)
    clock.now += 4
    assert limiter.wait("address:x") == pytest.approx(6)
    clock.now += 6
    assert limiter.wait("address:x") == 0
    assert limiter.fail("address:x") == pytest.approx(10)


def test_buckets_refill_only_up_to_the_burst():
    clock = Clock()
    limiter = FailureLimiter(burst=2, per_minute=60, clock=clock)
    limiter.fail("k")
    clock.now += 3600
    assert [limiter.fail("k"), limiter.fail("k")] == [0, pytest.approx(1)]


def test_failures_charge_the_address_and_the_name_apart():
    clock = Clock()
    limiter = FailureLimiter(burst=2, per_minute=60, clock=clock)
    assert limiter.failed("10.0.0.1", "b") == 0
    assert limiter.failed("10.0.0.2", "b") == pytest.approx(1)  # the name is now empty
    assert limiter.wait("address:10.0.0.1") == 0 and limiter.wait("address:10.0.0.2") == 0
    assert limiter.wait("name:b") == pytest.approx(1)
    assert limiter.wait("address:10.0.0.3") == 0  # another address is untouched
    assert limiter.failed("10.0.0.4", None) == 0  # no name: only the address is charged


def test_too_many_attempts_is_a_429_with_whole_seconds_to_wait():
    error = TooManyAttempts(0.2)
    assert error.status_code == 429
    assert error.headers == {"Retry-After": "1"}
    assert TooManyAttempts(9.01).headers == {"Retry-After": "10"}
    assert "retry in 10 s" in TooManyAttempts(9.01).detail


def test_the_peer_is_the_caller_unless_it_is_a_trusted_proxy():
    forwarded = {"x-forwarded-for": "203.0.113.9"}
    assert client_address("127.0.0.1", forwarded, ()) == "127.0.0.1"
    trusted = parse_networks("127.0.0.1, 10.0.0.0/8")
    assert client_address("192.0.2.1", forwarded, trusted) == "192.0.2.1"
    assert client_address("127.0.0.1", forwarded, trusted) == "203.0.113.9"
    assert client_address("127.0.0.1", {}, trusted) == "127.0.0.1"
    assert client_address(None, {}, ()) == "unknown"


def test_behind_proxies_the_last_untrusted_hop_counts_not_what_the_caller_prepended():
    trusted = parse_networks("127.0.0.1,10.0.0.0/8")
    headers = {"x-forwarded-for": "1.2.3.4, 198.51.100.7, 10.1.2.3"}
    assert client_address("127.0.0.1", headers, trusted) == "198.51.100.7"
    assert client_address("127.0.0.1", {"x-forwarded-for": "10.0.0.5"}, trusted) == "10.0.0.5"


def test_a_bad_trusted_proxy_entry_is_a_clear_configuration_error():
    with pytest.raises(ValueError, match="TASKENGINE_TRUSTED_PROXIES"):
        parse_networks("127.0.0.1, not-an-ip")
    assert parse_networks("") == ()


def test_a_clients_bytes_pass_within_the_burst_then_wait_their_turn_then_are_refused():
    clock = Clock()
    budget = ByteBudget(per_second=1000, burst=2000, clock=clock)
    assert budget.charge("a", 1500) == 0  # within the burst
    assert budget.charge("a", 1000) == pytest.approx(0.5)  # 500 short: half a second
    assert budget.charge("b", 2000) == 0  # another client's bucket is its own
    with pytest.raises(TooManyBytes) as refused:
        budget.charge("a", 1000)  # would wait 1.5 s: more than a second
    assert refused.value.status_code == 429
    assert refused.value.headers == {"Retry-After": "1"}
    clock.now += 0.5  # a refusal took nothing: the earlier request's wait is over
    assert budget.charge("a", 1000) == pytest.approx(1.0)
    clock.now += 3600
    assert budget.charge("a", 2000) == 0  # refilled up to the burst, no more
    assert budget.charge("a", 1) == pytest.approx(0.001)


def test_the_burst_is_at_least_a_seconds_worth():
    assert ByteBudget(per_second=5000, burst=10).burst == 5000
