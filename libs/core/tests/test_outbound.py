"""Outbound calls: the SSRF guard (at submit and at connect) and Standard Webhooks signatures."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from datetime import UTC, datetime

import aiohttp
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from taskengine_core.outbound import (
    JUDGED,
    OutboundGuard,
    parse_allowlist,
    sign,
    webhook_secret,
)
from taskengine_core.outbound_http import exchange, outbound_client

from tests.support.hostile import HostileReceiver
from tests.support.receiver import CallbackReceiver


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/x",
        "http://localhost:8080/",
        "http://10.1.2.3/",
        "http://169.254.169.254/",
        "http://[::1]/",
        "ftp://example.com/",
        "http://example.com:99999/",
        "http://x:abc/",
        "http://a..b/",
        "http://" + "a" * 64 + ".com/",
    ],
)
async def test_internal_or_malformed_urls_are_refused_with_a_reason(url):
    refusal = await OutboundGuard().refusal(url)
    assert isinstance(refusal, str) and refusal


async def test_the_allowlist_lets_an_internal_network_through():
    guard = OutboundGuard(parse_allowlist("127.0.0.0/8, 10.0.0.0/8"))
    assert await guard.refusal("http://127.0.0.1:9/callback") is None
    assert await guard.refusal("http://10.9.8.7/") is None
    assert await guard.refusal("http://192.168.1.1/") is not None


async def test_an_unresolvable_name_is_refused_only_when_asked_to():
    url = "http://no-such-host.invalid/hook"
    assert await OutboundGuard().refusal(url) is not None
    assert await OutboundGuard().refusal(url, unresolvable_ok=True) is None
    assert await OutboundGuard().refusal("http://127.0.0.1/", unresolvable_ok=True) is not None


def test_a_guard_keeps_a_bounded_number_of_judged_urls_and_judges_them_alike():
    guard = OutboundGuard(parse_allowlist("127.0.0.0/8"))
    # A tenant sending ever new URLs: the guard keeps at most JUDGED answers.
    for n in range(3 * JUDGED):
        assert guard.url_refusal(f"http://127.0.0.1:{1 + n % 60000}/{n}") is None
        assert guard._judged.cache_info().currsize <= JUDGED
    # A kept answer is the one judging anew gives.
    for url in ("http://10.0.0.1/x", "ftp://127.0.0.1/", "http://127.0.0.1:99999/"):
        first = guard.url_refusal(url)
        assert first is not None and guard.url_refusal(url) == first == guard._judge(url)


class _Rebinding(OutboundGuard):
    """A name that resolved to a public address at submit time and to loopback now."""

    async def resolve(self, host, port):
        return await super().resolve("127.0.0.1", port)


async def test_the_client_checks_the_address_it_connects_to():
    with socket.socket() as listener:  # a real local server the guard must keep us from
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        async with outbound_client(_Rebinding()) as client:
            with pytest.raises(aiohttp.ClientConnectorError, match="internal address 127.0.0.1"):
                await client.get(f"http://public.example:{port}/")
            # An address in the URL is checked just the same (no name to resolve).
            with pytest.raises(aiohttp.ClientConnectorError, match="internal address 127.0.0.1"):
                await client.get(f"http://127.0.0.1:{port}/")
        allowed = _Rebinding(parse_allowlist("127.0.0.0/8"))
        async with outbound_client(allowed, timeout=0.5) as client:
            # Allowed: it connects (and times out waiting, since the listener never answers).
            with pytest.raises(TimeoutError):
                await client.get(f"http://public.example:{port}/")


def test_signatures_verify_with_the_standard_webhooks_library():
    secret = webhook_secret("engine-master-key", "alice")
    body = json.dumps({"job_id": 7, "event": "complete"}).encode()
    now = datetime.now(UTC).replace(microsecond=0)
    headers = {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": sign(secret, "msg_1", int(now.timestamp()), body),
    }
    assert Webhook(secret).verify(body, headers) == {"job_id": 7, "event": "complete"}
    with pytest.raises(WebhookVerificationError):
        Webhook(webhook_secret("engine-master-key", "bob")).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body + b" ", headers)


def test_each_client_has_its_own_stable_secret():
    assert webhook_secret("k", "alice") == webhook_secret("k", "alice")
    assert webhook_secret("k", "alice") != webhook_secret("k", "bob")
    assert webhook_secret("k", "alice") != webhook_secret("k2", "alice")
    assert webhook_secret("k", "alice").startswith("whsec_")


# --- one deadline and a size cap for the whole exchange --------------------------------------


async def test_a_receiver_dripping_its_answer_is_cut_off_at_the_deadline():
    guard = OutboundGuard(parse_allowlist("127.0.0.0/8"))
    with HostileReceiver("drip", every=0.2) as receiver:
        async with outbound_client(guard) as client:  # per-read timeouts alone never trip
            started = time.monotonic()
            status, error = await exchange(
                client, "POST", receiver.url, deadline=1.0, max_bytes=65536, data=b"{}"
            )
    assert time.monotonic() - started < 5
    assert error == "timeout: no complete answer within 1s" and status is None


async def test_a_receiver_that_never_answers_is_a_timeout():
    guard = OutboundGuard(parse_allowlist("127.0.0.0/8"))
    with HostileReceiver("silent") as receiver:
        async with outbound_client(guard) as client:
            status, error = await exchange(
                client, "GET", receiver.url, deadline=0.5, max_bytes=65536
            )
    assert status is None and error is not None and error.startswith("timeout")


async def test_only_the_first_bytes_of_a_huge_answer_are_read(monkeypatch):
    guard = OutboundGuard(parse_allowlist("127.0.0.0/8"))
    read: list[int] = []
    original = aiohttp.StreamReader.readany

    async def counting(self):  # type: ignore[no-untyped-def]  (counts what the caller reads)
        chunk = await original(self)
        read.append(len(chunk))
        return chunk

    monkeypatch.setattr(aiohttp.StreamReader, "readany", counting)
    with HostileReceiver("huge", size=10 * 1024 * 1024) as receiver:
        async with outbound_client(guard) as client:
            status, error = await exchange(
                client, "GET", receiver.url, deadline=5.0, max_bytes=65536
            )
    assert (status, error) == (200, None)
    assert 65536 <= sum(read) < 65536 * 3  # stopped at the cap, far from 10 MB


async def test_a_refused_url_is_not_called():
    with HostileReceiver("silent") as receiver:
        async with outbound_client(OutboundGuard()) as client:
            status, error = await exchange(
                client, "POST", receiver.url, deadline=5, max_bytes=1, guard=OutboundGuard()
            )
    assert status is None and error is not None and error.startswith("refused: 127.0.0.1")
    assert receiver.connections == 0


async def test_connections_kept_between_calls_are_bounded_however_many_receivers():
    open_now = 0

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal open_now
        open_now += 1
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            open_now -= 1
            writer.close()

    servers = [await asyncio.start_server(answer, "127.0.0.1", 0) for _ in range(12)]
    guard = OutboundGuard(parse_allowlist("127.0.0.0/8"))
    try:
        async with outbound_client(guard, connections=4) as client:
            for server in servers * 2:
                port = server.sockets[0].getsockname()[1]
                url = f"http://127.0.0.1:{port}/hook"
                assert await exchange(client, "POST", url, deadline=5, max_bytes=1) == (204, None)
            await asyncio.sleep(0.1)  # the receivers see the connections closed
            assert open_now <= 4  # kept alive for the next call: no more than it may use at once
            port = servers[0].sockets[0].getsockname()[1]
            before = open_now
            await exchange(client, "POST", f"http://127.0.0.1:{port}/", deadline=5, max_bytes=1)
            assert open_now == before  # the first receiver's connection was kept and reused
    finally:
        for server in servers:
            server.close()


class _Counting(OutboundGuard):
    """Resolves every name to loopback, counting the lookups."""

    def __init__(self, allowlist: str = "") -> None:
        super().__init__(parse_allowlist(allowlist))
        self.lookups = 0

    async def resolve(self, host, port):
        self.lookups += 1
        return await super().resolve("127.0.0.1", port)


async def test_a_name_is_refused_where_it_is_looked_up_and_not_looked_up_per_call():
    with CallbackReceiver() as receiver:
        url = receiver.url.replace("127.0.0.1", "hooks.example")
        refusing = _Counting()
        async with outbound_client(refusing) as client:
            status, error = await exchange(
                client, "POST", url, deadline=5, max_bytes=1, data=b"{}", guard=refusing
            )
        assert status is None
        assert error == "refused: hooks.example resolves to internal address 127.0.0.1"
        assert receiver.received == []
        allowing = _Counting("127.0.0.0/8")
        async with outbound_client(allowing) as client:
            for _ in range(3):
                assert await exchange(
                    client, "POST", url, deadline=5, max_bytes=64, data=b"{}", guard=allowing
                ) == (200, None)
        assert allowing.lookups == 1  # the client keeps what it resolved
        assert len(receiver.received) == 3
