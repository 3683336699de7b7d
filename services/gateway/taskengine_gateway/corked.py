"""HTTP/1.1 responses in one write: uvicorn writes a response's status line and headers, then its
body, each with its own `send()` on the socket, and each left as its own TCP segment (the
socket has Nagle's algorithm off), so the client woke twice a response. Here what a connection
writes in one turn of the event loop goes out at the end of that turn, in one write."""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

HELD_BYTES = 64 * 1024
"""What a connection may hold back: more goes out at once."""


class CorkedTransport:
    """A transport whose writes are held until the loop's current turn ends. Everything else
    is the transport's own; closing, or ending the writing side, sends what is held first."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop):
        self._transport, self._loop = transport, loop
        self._held: list[bytes] = []
        self._size = 0

    def write(self, data: bytes) -> None:
        if not self._held:
            self._loop.call_soon(self._send)
        self._held.append(bytes(data))
        self._size += len(data)
        if self._size >= HELD_BYTES:  # a large body goes now: the transport's flow control
            self._send()  # (and its memory bound) sees it as before

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def _send(self) -> None:
        held, self._held, self._size = self._held, [], 0
        if held and not self._transport.is_closing():
            self._transport.write(b"".join(held))

    def close(self) -> None:
        self._send()
        self._transport.close()

    def write_eof(self) -> None:
        self._send()
        self._transport.write_eof()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class CorkedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, writing through a `CorkedTransport` (a WebSocket upgraded
    from it keeps writing through it)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        corked = CorkedTransport(transport, self.loop)
        super().connection_made(corked)  # type: ignore[arg-type]
