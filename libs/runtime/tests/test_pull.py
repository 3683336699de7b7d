"""`StandingPull`'s bookkeeping, on a stand-in for the connection (its server's answers come
as `_received` calls); against a real JetStream: tests/integration/test_bus_pull.py."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from nats.js.errors import ServiceUnavailableError
from taskengine_runtime.pull import StandingPull


class Connection:
    max_payload = 1024 * 1024

    def __init__(self) -> None:
        self.requests: list[tuple[bytes, str]] = []

    def new_inbox(self) -> str:
        return "_INBOX.test"

    async def publish(self, subject: str, payload: bytes, reply: str = "") -> None:
        self.requests.append((payload, reply))


def delivery(sequence: int, pending: int) -> SimpleNamespace:
    reply = f"$JS.ACK.S.c.1.{sequence}.{sequence}.1764800000000000000.{pending}"
    return SimpleNamespace(subject="taskengine.job.submitted", reply=reply, headers={}, data=b"")


def status(code: str, to: str, description: str = "") -> SimpleNamespace:
    headers = {"Status": code, "Description": description}
    return SimpleNamespace(subject=to, reply="", headers=headers, header=headers, data=b"")


async def standing(size: int = 10) -> tuple[StandingPull, Connection]:
    nc = Connection()
    pull = StandingPull(nc, "S", "c", size)  # type: ignore[arg-type]
    await pull._ask()
    return pull, nc


async def test_a_refusal_while_gathering_ends_the_batch_and_is_raised_by_the_next_take():
    pull, _ = await standing()
    await pull._received(delivery(1, pending=5))  # more were on their way...
    await pull._received(status("503", pull.reply))  # ...when the request was refused
    batch = await asyncio.wait_for(pull.take(5), 2)
    assert [m.reply for m in batch] == [delivery(1, 5).reply]
    with pytest.raises(ServiceUnavailableError):
        await asyncio.wait_for(pull.take(5), 2)


async def test_the_end_of_a_past_request_is_not_the_end_of_the_live_one():
    pull, nc = await standing()
    past = pull.reply
    await pull._ask()
    await pull._received(status("408", past, "Request Timeout"))
    assert pull.left == 10 and len(nc.requests) == 2


async def test_a_request_used_up_is_followed_by_the_next_only_while_there_is_room():
    pull, nc = await standing(size=2)
    await pull._received(delivery(1, pending=3))
    await pull._received(delivery(2, pending=2))  # used up, two waiting: no room
    assert len(nc.requests) == 1
    assert len(await pull.take(1)) == 2  # taken: the next request asks for two
    assert len(nc.requests) == 2 and b'"batch":2' in nc.requests[-1][0]


async def test_a_message_too_large_for_what_is_left_of_the_bytes_ends_the_request_normally():
    pull, nc = await standing()
    await pull._received(status("409", pull.reply, "Message Size Exceeds MaxBytes"))
    assert pull.refusal is None and len(nc.requests) == 2


async def test_a_request_served_in_full_and_said_so_is_no_refusal():
    """Newer servers end a request served in full with "409 Batch Completed": with no room
    for the next request yet, that must not read as a refusal (a pause of the consumer)."""
    pull, nc = await standing(size=2)
    await pull._received(delivery(1, pending=0))
    await pull._received(delivery(2, pending=0))
    await pull._received(status("409", pull.reply, "Batch Completed"))
    assert pull.refusal is None and len(nc.requests) == 1
    assert len(await asyncio.wait_for(pull.take(1), 0.2)) == 2
