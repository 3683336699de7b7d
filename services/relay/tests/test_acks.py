"""The relay's batch acks: counted on the batch's own reply subject; a stream without a leader
for a moment (a cluster's failover) means publish the batch again, never a crash."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import pytest
from nats.js.errors import (
    APIError,
    BadRequestError,
    NoStreamResponseError,
    ServiceUnavailableError,
)
from taskengine_relay import relay
from taskengine_runtime.bus import Reconnects

ACK = json.dumps({"stream": "TASKENGINE", "seq": 7}).encode()


def publisher(count: int) -> relay.Publisher:
    nc = SimpleNamespace(new_inbox=lambda: "_INBOX.relaytest")
    sent = relay.Publisher(nc)  # type: ignore[arg-type]
    sent.begin(count)
    return sent


def answer(to: str, data: bytes = ACK, headers: dict[str, str] | None = None) -> SimpleNamespace:
    return SimpleNamespace(subject=to, data=data, headers=headers)


def runtime() -> SimpleNamespace:
    return SimpleNamespace(reconnects=Reconnects())


async def test_a_batch_fully_acked_is_done():
    sent = publisher(2)
    for _ in range(2):
        await sent._answered(answer(sent.reply))  # type: ignore[arg-type]
    assert await relay._acked(sent, runtime()) is True  # type: ignore[arg-type]


async def test_an_ack_of_an_earlier_batch_does_not_count_for_this_one(monkeypatch, caplog):
    monkeypatch.setattr(relay, "ACK_TIMEOUT", 0.05)
    sent = publisher(2)
    earlier = sent.reply
    sent.begin(2)
    await sent._answered(answer(earlier))  # type: ignore[arg-type]
    await sent._answered(answer(sent.reply))  # type: ignore[arg-type]
    assert await relay._acked(sent, runtime()) is False  # type: ignore[arg-type]
    assert "no ack for 1 messages" in caplog.text


async def test_an_ack_that_never_comes_means_publish_again_not_a_crash(monkeypatch):
    """The stream's leader died with the message in flight: no answer, not even a 503, and
    no reconnect (the relay's own server lives). Seen in the cluster's kill -9 test."""
    monkeypatch.setattr(relay, "ACK_TIMEOUT", 0.05)
    sent = publisher(3)
    for _ in range(2):
        await sent._answered(answer(sent.reply))  # type: ignore[arg-type]
    assert await relay._acked(sent, runtime()) is False  # type: ignore[arg-type]


async def test_a_batch_the_stream_did_not_answer_is_published_again(monkeypatch):
    monkeypatch.setattr(relay, "FAILOVER_PAUSE", 0)
    sent = publisher(3)
    await sent._answered(answer(sent.reply))  # type: ignore[arg-type]
    # the leader died: no one answered this one
    await sent._answered(answer(sent.reply, b"", {"Status": "503"}))  # type: ignore[arg-type]
    await sent._answered(answer(sent.reply))  # type: ignore[arg-type]
    assert await relay._acked(sent, runtime()) is False  # type: ignore[arg-type]


async def test_a_failover_ends_the_batch_without_waiting_for_answers_that_never_come(monkeypatch):
    monkeypatch.setattr(relay, "FAILOVER_PAUSE", 0)
    monkeypatch.setattr(relay, "ACK_TIMEOUT", 0.05)
    sent = publisher(3)
    await sent._answered(answer(sent.reply))  # type: ignore[arg-type]
    # the leader died: this one was refused, and the third went with the leader (no answer)
    await sent._answered(answer(sent.reply, b"", {"Status": "503"}))  # type: ignore[arg-type]
    assert await relay._acked(sent, runtime()) is False  # type: ignore[arg-type]


async def test_a_batch_refused_for_another_reason_fails_the_relay():
    sent = publisher(1)
    refused = json.dumps({"error": {"code": 400, "err_code": 10054, "description": "bad"}})
    await sent._answered(answer(sent.reply, refused.encode()))  # type: ignore[arg-type]
    with pytest.raises(BadRequestError):
        await relay._acked(sent, runtime())  # type: ignore[arg-type]


async def test_a_reconnect_before_the_acks_came_means_publish_again():
    sent = publisher(1)
    waiting = runtime()
    asyncio.get_running_loop().call_later(
        0.05, lambda: asyncio.ensure_future(waiting.reconnects.happened())
    )
    assert await relay._acked(sent, waiting) is False  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("data", "headers", "refused"),
    [
        (ACK, None, None),
        (json.dumps({"stream": "TASKENGINE", "seq": 7, "duplicate": True}).encode(), None, None),
        (b"", {"Status": "503"}, NoStreamResponseError),
        (
            json.dumps({"error": {"code": 503, "description": "no leader"}}).encode(),
            None,
            ServiceUnavailableError,
        ),  # fmt: skip
        (
            json.dumps({"error": {"code": 400, "description": "bad"}}).encode(),
            None,
            BadRequestError,
        ),
        (b'{"error": ', None, APIError),
    ],
)
def test_an_answer_is_read_as_stored_or_as_its_error(data, headers, refused):
    found = relay.refusal(answer("_INBOX.x.1", data, headers))  # type: ignore[arg-type]
    assert found is None if refused is None else type(found) is refused
