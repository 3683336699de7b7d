"""Calls the engine makes to URLs its clients gave it: callbacks and semaphores.

Such a URL may point inside the network the engine runs in (SSRF). `OutboundGuard` refuses
loopback, private, link-local and other non-global addresses unless an allowlist of networks
lets them through. It is applied twice: to the URL when a client submits it (`refusal`), and at
every connection (`outbound_client`): the client's resolver refuses a name resolving to an
address not allowed, and each socket's address is checked before it connects, so a name that
resolves differently the second time (DNS rebinding) gets nowhere. A call looks no name up of
its own: the client keeps what it resolved for 10 s and reuses connections.

`exchange` bounds one call as a whole: connect, headers and body within one deadline (a
client's per-read timeouts alone would never trip on a receiver sending a byte every few
seconds), and at most a small part of the body is read.

The client is aiohttp's: on one core it takes about a tenth of the CPU time httpx takes per
call (~0.1 ms against ~1.1 ms on loopback), and the notifier makes one call per delivery.

Deliveries are signed the Standard Webhooks way: `webhook-id`, `webhook-timestamp` and
`webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">` with the client's secret.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import hashlib
import hmac
import ipaddress
import socket
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class Refused(OSError):
    """A connection to an address the guard does not allow (never attempted)."""


def parse_allowlist(spec: str) -> list[Network]:
    """`TASKENGINE_CALLBACK_ALLOWLIST`: comma-separated CIDRs, e.g. `10.0.0.0/8,127.0.0.1/32`."""
    return [
        ipaddress.ip_network(part.strip(), strict=False) for part in spec.split(",") if part.strip()
    ]


class OutboundGuard:
    def __init__(self, allowlist: Iterable[Network] = ()):
        self.allowlist = list(allowlist)

    def address_refusal(self, host: str, address: Address) -> str | None:
        if any(address in network for network in self.allowlist):
            return None
        if not address.is_global or address.is_multicast:
            return f"{host} resolves to internal address {address}"
        return None

    async def resolve(self, host: str, port: int) -> list[Address]:
        try:
            return [ipaddress.ip_address(host)]  # an address already: nothing to look up
        except ValueError:
            pass
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        return list(dict.fromkeys(ipaddress.ip_address(info[4][0]) for info in infos))

    def url_refusal(self, url: str) -> str | None:
        """Why `url` may not be called, judged without looking a name up: it is no http(s)
        URL, or the address written in it is not allowed."""
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018  (raises on a port out of range)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                return f"not an http(s) URL: {url}"
            parts.hostname.encode("idna")
        except (ValueError, UnicodeError) as error:
            return f"not a valid URL: {url} ({error})"
        try:
            address = ipaddress.ip_address(parts.hostname)
        except ValueError:
            return None  # a name: see `refusal`, and the client's resolver at every connection
        return self.address_refusal(parts.hostname, address)

    async def refusal(self, url: str, unresolvable_ok: bool = False) -> str | None:
        """Why `url` may not be called, or None when every address it resolves to is allowed.

        `unresolvable_ok`: a name that does not resolve now is not refused (at submit time a
        DNS hiccup must not reject a job; delivery checks again).
        """
        if refusal := self.url_refusal(url):
            return refusal
        parts = urlsplit(url)
        assert parts.hostname
        try:
            addresses = await self.resolve(parts.hostname, parts.port or _PORTS[parts.scheme])
        except (OSError, UnicodeError) as error:
            return None if unresolvable_ok else f"cannot resolve {parts.hostname}: {error}"
        for address in addresses:
            if refusal := self.address_refusal(parts.hostname, address):
                return refusal
        return None


_PORTS = {"http": 80, "https": 443}


class _GuardResolver(AbstractResolver):
    """Looks names up the guard's way and refuses one that resolves to an address the guard
    does not allow (as `refusal` does at submit time). The client keeps what it resolved for
    10 s and reuses connections, so a delivery costs no lookup of its own."""

    def __init__(self, guard: OutboundGuard):
        self.guard = guard

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        try:
            addresses = await self.guard.resolve(host, port)
        except (OSError, UnicodeError) as error:
            raise Refused(errno.EHOSTUNREACH, f"refused: cannot resolve {host}: {error}") from None
        for address in addresses:
            if refusal := self.guard.address_refusal(host, address):
                raise Refused(errno.EACCES, f"refused: {refusal}")
        return [
            ResolveResult(
                hostname=host,
                host=str(address),
                port=port,
                family=socket.AF_INET6 if address.version == 6 else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
            )
            for address in addresses
        ]

    async def close(self) -> None:
        pass


def _guarded_socket(guard: OutboundGuard) -> Callable[[Any], socket.socket]:
    """The connector's socket factory: it sees the very address a socket is about to connect
    to (a name's or a literal's) and refuses one the guard does not allow."""

    def open_socket(addr_info: Any) -> socket.socket:
        family, kind, proto, _, sockaddr = addr_info
        address = ipaddress.ip_address(sockaddr[0])
        if guard.address_refusal(sockaddr[0], address):
            raise Refused(errno.EACCES, f"refused: internal address {address}")
        return socket.socket(family=family, type=kind, proto=proto)

    return open_socket


class _Connector(aiohttp.TCPConnector):
    """aiohttp bounds the connections in use (`limit`), not those kept open between calls: a
    released connection is closed rather than kept when `idle` are kept already, so calls to
    many receivers (a client's thousand ports) cannot pile up open sockets."""

    def __init__(self, idle: int, **kwargs: Any):
        super().__init__(**kwargs)
        self.idle = idle

    def _release(self, key: Any, protocol: Any, *, should_close: bool = False) -> None:
        kept = sum(len(connections) for connections in self._conns.values())
        super()._release(key, protocol, should_close=should_close or kept >= self.idle)


def outbound_client(
    guard: OutboundGuard, timeout: float = 10.0, connections: int = 100
) -> aiohttp.ClientSession:
    """An HTTP client whose every connection goes through `guard`: no proxies, no cookies, no
    decompression (the response size cap counts the bytes on the wire).

    At most `connections` are in use at once, the caller's own concurrency
    (`outbound_concurrency`), so the pool is never the narrower bound that lets slow receivers
    hold back others (the lanes bound each receiver); as many more are kept alive between calls
    for the next call to the same receiver, each at most 15 s.
    TLS still verifies the URL's host name: only the TCP connection is pinned to the address.
    """
    connector = _Connector(
        idle=connections,
        limit=connections,
        resolver=_GuardResolver(guard),
        socket_factory=_guarded_socket(guard),
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=timeout),
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        trust_env=False,
    )


async def exchange(
    client: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    deadline: float,
    max_bytes: int,
    guard: OutboundGuard | None = None,
    **kwargs: Any,
) -> tuple[int | None, str | None]:
    """(status, None) once the receiver answered within `deadline` seconds, else (status or
    None, why not). At most about `max_bytes` of the body are read: the rest is left unread
    (the connection is dropped) and the answer counts by its status. A URL the guard refuses
    is not called: (None, "refused: ..."), judged by `guard.url_refusal` (when given) and, for
    a name, by the client's resolver. Redirects are not followed. Never raises but
    cancellation.
    """
    status = None
    try:
        async with asyncio.timeout(deadline):
            if guard and (refusal := guard.url_refusal(url)):
                return None, f"refused: {refusal}"
            async with client.request(method, url, allow_redirects=False, **kwargs) as response:
                status = response.status
                received = 0
                while received < max_bytes and (chunk := await response.content.readany()):
                    received += len(chunk)
        return status, None
    except TimeoutError:
        return status, f"timeout: no complete answer within {deadline:g}s"
    except aiohttp.ClientConnectorError as error:
        if isinstance(error.os_error, Refused):
            return None, str(error.os_error.strerror)
        return status, f"{type(error).__name__}: {error}"[:300]
    except Exception as error:  # whatever the URL or the receiver does, the call failed
        return status, f"{type(error).__name__}: {error}"[:300]


# --- signing (Standard Webhooks) -----------------------------------------------------------

SECRET_PREFIX = "whsec_"


def webhook_secret(master_key: str, client: str) -> str:
    """The client's signing secret, derived from the engine's key: never stored anywhere."""
    digest = hmac.new(master_key.encode(), f"webhook:{client}".encode(), hashlib.sha256).digest()
    return SECRET_PREFIX + base64.b64encode(digest).decode()


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header value for one delivery attempt."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    signed = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
