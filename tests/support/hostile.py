"""Receivers that misbehave, as real TCP servers on loopback (for callbacks and semaphores).

- `drip`: answers a status line, then one byte of its headers every `every` seconds.
- `silent`: accepts the connection, reads the request and never answers.
- `huge`: answers 200 with a `size`-byte body (sent as fast as the caller reads it).
"""

from __future__ import annotations

import socket
import threading
import time

KINDS = ("drip", "silent", "huge")


class HostileReceiver:
    def __init__(self, kind: str, every: float = 3.0, size: int = 10 * 1024 * 1024):
        assert kind in KINDS, kind
        self.kind = kind
        self.every = every
        self.size = size
        self.connections = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/hook"
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> HostileReceiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.thread.join(timeout=5)
        self.listener.close()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                connection, _ = self.listener.accept()
            except TimeoutError:
                continue
            self.connections += 1
            threading.Thread(target=self._serve, args=(connection,), daemon=True).start()

    def _serve(self, connection: socket.socket) -> None:
        with connection:
            try:
                connection.settimeout(1.0)
                try:
                    connection.recv(65536)  # the request (its head at least)
                except TimeoutError:
                    pass
                if self.kind == "silent":
                    self.stopped.wait()
                elif self.kind == "drip":
                    connection.sendall(b"HTTP/1.1 200 OK\r\n")
                    while not self.stopped.wait(self.every):
                        connection.sendall(b"X")
                else:
                    head = f"HTTP/1.1 200 OK\r\ncontent-length: {self.size}\r\n\r\n"
                    connection.sendall(head.encode())
                    chunk = b"x" * 65536
                    sent = 0
                    connection.settimeout(10.0)
                    while sent < self.size and not self.stopped.is_set():
                        connection.sendall(chunk)
                        sent += len(chunk)
                    time.sleep(0.1)
            except OSError:  # the caller hung up: that is what a bounded caller does
                pass
