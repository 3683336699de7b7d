"""HTTP connections to the gateway: an idle keep-alive connection outlives its clients' pools."""

from __future__ import annotations

import socket
import time
from typing import BinaryIO

import pytest

from tests.support.system import ADMIN, running_system


@pytest.fixture(scope="module")
def system(postgres_url):
    with running_system(postgres_url, "connections") as engine:
        yield engine


def _get(sock: socket.socket, answers: BinaryIO, path: str) -> bytes:
    """Sends a GET on `sock` and reads its whole answer (headers and body); its status line."""
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nclient: {ADMIN[0]}\r\n"
        f"api-key: {ADMIN[1]}\r\n\r\n".encode()
    )
    status = answers.readline()
    length = 0
    while (line := answers.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    answers.read(length)
    return status


def test_an_idle_connection_stays_open_longer_than_a_client_pool_keeps_it(system):
    # httpx drops an idle connection after 5 s; a gateway closing first (uvicorn's default is
    # 5 s) races a client sending on it, which then sees "server disconnected".
    with (
        socket.create_connection(("127.0.0.1", system.port), timeout=10) as sock,
        sock.makefile("rb") as answers,
    ):
        assert _get(sock, answers, "/jobs?limit=1").startswith(b"HTTP/1.1 200")
        time.sleep(6.5)
        assert _get(sock, answers, "/jobs?limit=1").startswith(b"HTTP/1.1 200")
