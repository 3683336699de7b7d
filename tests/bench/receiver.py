"""A callback receiver for `make bench`, run as its own process so it does not share the
bench's event loop: `python -m tests.bench.receiver PORT...` (one receiver per port: the
notifier's lanes are per scheme, host and port). Answers every POST with 204,
after `SLOW` seconds for paths under `/slow`; `GET /count/<name>` tells how many POSTs
`/<name>` got and when the first and the last arrived (Unix seconds)."""

from __future__ import annotations

import asyncio
import json
import sys
import time

SLOW = 5.0


class Counts:
    def __init__(self) -> None:
        self.arrivals: dict[str, list[float]] = {}

    def answer(self, name: str) -> bytes:
        times = self.arrivals.get(name, [])
        body = json.dumps(
            {
                "n": len(times),
                "first": times[0] if times else None,
                "last": max(times, default=None),
            }
        ).encode()
        return (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (
                len(body),
                body,
            )
        )


async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, counts: Counts) -> None:
    try:
        while request := await reader.readline():
            method, path, _ = request.decode().split(" ", 2)
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode().partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            if length:
                await reader.readexactly(length)
            name = path.strip("/").split("/")[-1 if method == "GET" else 0]
            if method == "GET":
                writer.write(counts.answer(name))
            else:
                counts.arrivals.setdefault(name, []).append(time.time())
                if name == "slow":
                    await asyncio.sleep(SLOW)
                writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError, ValueError):
        pass
    finally:
        writer.close()


async def main(ports: list[int]) -> None:
    counts = Counts()
    servers = [
        await asyncio.start_server(lambda r, w: serve(r, w, counts), "127.0.0.1", port)
        for port in ports
    ]
    await asyncio.gather(*(server.serve_forever() for server in servers))


if __name__ == "__main__":
    asyncio.run(main([int(port) for port in sys.argv[1:]]))
