"""The gateway's HTTP protocol writes a response in one write (`taskengine_gateway.corked`):
uvicorn's own protocol, driven with a request, over a transport that records its writes."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from taskengine_gateway.corked import HELD_BYTES, CorkedHttpToolsProtocol, CorkedTransport
from uvicorn.config import Config
from uvicorn.server import ServerState


class RecordingTransport(asyncio.Transport):
    """Records what is written to it, as the socket would receive it, write by write."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: Any) -> None:
        assert not self.closed, "written after close"
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def write_eof(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8080), "peername": ("127.0.0.1", 50000)}.get(
            name, default
        )

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def body_of(size: int):  # type: ignore[no-untyped-def]
    async def app(scope: dict, receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        body = b"x" * size
        headers = [(b"content-length", str(size).encode()), (b"content-type", b"text/plain")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


async def served(size: int, requests: int = 1) -> RecordingTransport:
    config = Config(app=body_of(size), lifespan="off", log_config=None)
    config.load()
    protocol = CorkedHttpToolsProtocol(config=config, server_state=ServerState(), app_state={})
    transport = RecordingTransport()
    protocol.connection_made(transport)
    protocol.data_received(b"GET / HTTP/1.1\r\nhost: test\r\n\r\n" * requests)
    for _ in range(20):  # the app runs as a task; the held bytes go at the end of its turn
        await asyncio.sleep(0)
    protocol.connection_lost(None)
    return transport


async def test_a_response_goes_out_in_one_write() -> None:
    transport = await served(100)
    assert len(transport.writes) == 1
    head, _, body = transport.writes[0].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"content-length: 100" in head
    assert body == b"x" * 100


async def test_pipelined_requests_are_answered_in_order_each_whole() -> None:
    transport = await served(10, requests=3)
    sent = b"".join(transport.writes)
    assert sent.count(b"HTTP/1.1 200 OK") == 3 and sent.endswith(b"\r\n\r\n" + b"x" * 10)


async def test_a_large_body_is_not_held_back() -> None:
    transport = RecordingTransport()
    corked = CorkedTransport(transport, asyncio.get_running_loop())
    corked.write(b"head")
    assert transport.writes == []  # held to the end of the turn
    corked.write(b"x" * HELD_BYTES)
    assert transport.writes == [b"head" + b"x" * HELD_BYTES]  # at once: flow control sees it
    await asyncio.sleep(0)
    assert len(transport.writes) == 1  # nothing held is sent twice


@pytest.mark.parametrize("ending", ["close", "write_eof"])
async def test_closing_sends_what_is_held_first_and_nothing_after(ending: str) -> None:
    transport = RecordingTransport()
    corked = CorkedTransport(transport, asyncio.get_running_loop())
    corked.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
    getattr(corked, ending)()
    assert transport.writes == [b"HTTP/1.1 400 Bad Request\r\n\r\n"] and transport.closed
    await asyncio.sleep(0)
    assert len(transport.writes) == 1


@pytest.mark.parametrize("attribute", ["get_extra_info", "pause_reading", "is_closing"])
def test_everything_else_is_the_transports_own(attribute: str) -> None:
    transport = RecordingTransport()
    corked = CorkedTransport(transport, asyncio.new_event_loop())
    assert getattr(corked, attribute) == getattr(transport, attribute)
