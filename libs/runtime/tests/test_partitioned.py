"""A partition taken over behind the consumer is handled from its own position: nothing of it
is passed over, whenever the takeover comes (between two halves of a split batch too)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any
from uuid import uuid4

from taskengine_contracts.events import JobQueued
from taskengine_core.partitions import PARTITIONS
from taskengine_runtime import partitioned as partitions_module
from taskengine_runtime.bus import Delivered
from taskengine_runtime.partitioned import Partitions
from taskengine_store.partitions import Held

AT = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass
class Consumer:
    handled: int
    rewinds: int = 0
    rewound: list[int] = field(default_factory=list)

    def rewind(self, position: int) -> None:
        self.rewound.append(position)


@dataclass
class Leases:
    """The store's side: holds what the test says, each partition tracked where it says."""

    held: set[int]
    positions: dict[int, int]

    def refresh(self, idle: Any = ()) -> Held:
        return Held(frozenset(self.held))

    def tracked(self, partitions: Any) -> dict[int, int]:
        return {p: self.positions[p] for p in partitions}

    def track(self, positions: dict[int, int]) -> tuple[str, tuple]:
        return "track", (dict(positions),)


def event(position: int, partition: int) -> Delivered:
    job_id = PARTITIONS * 1000 + partition
    queued = JobQueued(
        id=uuid4(),
        version=2,
        at=AT,
        job_id=job_id,
        client="a",
        workflow="w",
        priority=5,
        reason="due",
    )
    return Delivered(position, queued, None)


async def call(fn: Any, *args: Any) -> Any:
    return fn(*args)


async def holding_0(positions: dict[int, int], reached: int) -> tuple[Partitions, Consumer]:
    """An instance holding partition 0, its consumer at 100, its batches handed up to
    `reached`; the store tracks each partition at `positions`."""
    runtime: Any = SimpleNamespace(call=call, config=SimpleNamespace(partition_ttl=15.0))
    partitions = Partitions(runtime, "dispatcher", idle=lambda p: False)
    partitions.leases = Leases(held={0}, positions=positions)  # type: ignore[misc]
    await partitions.refresh()
    consumer = Consumer(handled=100)
    partitions.consumer = consumer  # type: ignore[assignment]
    partitions.reached = reached
    return partitions, consumer


async def test_a_partition_taken_between_two_halves_of_a_batch_waits_for_the_rewind():
    partitions, consumer = await holding_0(positions={0: 100, 1: 120}, reached=100)

    # The batch (100, 200] failed once and was split; its first half (100, 150] is handled.
    first = [event(110, 0), event(130, 1), event(150, 0)]
    assert [d.position for d in partitions.mine(first)] == [110, 150]
    partitions.advance(150)
    # Partition 1 is taken over now, tracked at 120: behind where the batches got to.
    partitions.leases.held = {0, 1}  # type: ignore[attr-defined]
    await partitions.refresh()
    assert consumer.rewound == [120]
    # The second half (150, 200]: partition 1 is not handled or tracked yet...
    second = [event(160, 1), event(200, 0)]
    assert [d.position for d in partitions.mine(second)] == [200]
    assert partitions.tracking(200) == ("track", ({0: 200},))
    partitions.advance(200)
    # ...until the consumer went back to 120: then it is, from there, and partition 0 is past.
    consumer.handled, consumer.rewinds = 120, consumer.rewinds + 1
    again = [event(130, 1), event(150, 0), event(160, 1), event(200, 0)]
    assert [d.position for d in partitions.mine(again)] == [130, 160]
    assert partitions.tracking(200) == ("track", ({1: 200},))


async def test_a_partition_taken_ahead_of_the_consumer_needs_no_rewind():
    partitions, consumer = await holding_0(positions={0: 100, 1: 300}, reached=200)
    partitions.leases.held = {0, 1}  # type: ignore[attr-defined]
    await partitions.refresh()
    assert consumer.rewound == [] and partitions.handled == {0: 100, 1: 300}
    assert [d.position for d in partitions.mine([event(250, 1), event(310, 1)])] == [310]


async def test_a_commit_moves_the_records_of_its_batchs_partitions_and_now_and_then_all() -> None:
    runtime: Any = SimpleNamespace(call=call, config=SimpleNamespace(partition_ttl=15.0))
    partitions = Partitions(runtime, "dispatcher", idle=lambda p: False)
    partitions.leases = Leases(held={0, 1, 2}, positions={0: 10, 1: 10, 2: 10})  # type: ignore[misc]
    await partitions.refresh()

    def commit(batch: list[Delivered]) -> dict[int, int]:
        partitions.mine(batch)
        statement = partitions.tracking(batch[-1].position)
        partitions.advance(batch[-1].position)
        return statement[1][0] if statement else {}

    assert commit([event(11, 1)]) == {0: 11, 1: 11, 2: 11}  # the first: every record
    assert commit([event(12, 1), event(13, 2)]) == {1: 13, 2: 13}
    assert commit([event(14, 7)]) == {}  # a partition held elsewhere: nothing of ours moved
    partitions.swept_at -= partitions_module.TRACK_EVERY  # a while later: every record again
    assert commit([event(15, 2)]) == {0: 15, 1: 15, 2: 15}
    assert partitions.handled == {0: 15, 1: 15, 2: 15}
