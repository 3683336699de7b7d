"""A NATS cluster electing a new leader (a node died) is waited out, not a crash."""

from __future__ import annotations

from types import SimpleNamespace

import nats.errors
import pytest
from nats.js.errors import ServiceUnavailableError
from taskengine_runtime import bus
from taskengine_runtime.bus import BatchConsumer

MESSAGE = SimpleNamespace(reply=None)
"""A message that is no JetStream delivery (nothing said of what is pending)."""


class LeaderlessPull:
    """A standing pull whose consumer has no leader for `failures` takes."""

    def __init__(self, failures: int, error: Exception) -> None:
        self.failures, self.error = failures, error

    async def take(self, wait: float) -> list[object]:
        if self.failures:
            self.failures -= 1
            raise self.error
        return [MESSAGE]


def consumer() -> BatchConsumer:
    async def nothing(*_: object) -> None:
        return None

    async def handler(_: object) -> bool:
        return True

    async def latest() -> int:
        return 0

    return BatchConsumer(None, "test-failover", [], handler, 0, nothing, nothing, latest)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "error", [ServiceUnavailableError(), nats.errors.NoRespondersError()], ids=type
)
async def test_a_fetch_without_a_consumer_leader_is_an_empty_batch(monkeypatch, error):
    monkeypatch.setattr(bus, "FAILOVER_PAUSE", 0)
    taking = consumer()
    pull = LeaderlessPull(2, error)
    assert await taking._fetch(pull) == []  # type: ignore[arg-type]
    assert await taking._fetch(pull) == []  # type: ignore[arg-type]
    assert await taking._fetch(pull) == [MESSAGE]  # type: ignore[arg-type]


async def test_any_other_failure_of_a_fetch_is_not_hidden(monkeypatch):
    taking = consumer()
    with pytest.raises(ValueError):
        await taking._fetch(LeaderlessPull(1, ValueError("broken")))  # type: ignore[arg-type]


class Delivery:
    """A message as JetStream delivered it: its consumer sequence in its reply subject."""

    def __init__(self, sequence: int) -> None:
        self.reply = f"$JS.ACK.TASKENGINE.test.1.{100 + sequence}.{sequence}.1764800000000000000.0"


def test_deliveries_that_never_arrived_are_noticed():
    taking = consumer()
    assert not taking._missed([Delivery(1), Delivery(2)])  # type: ignore[list-item]
    assert not taking._missed([Delivery(3)])  # type: ignore[list-item]
    # 4 and 5 went to a consumer leader that died: the server never delivers them again
    assert taking._missed([Delivery(6), Delivery(7)])  # type: ignore[list-item]
