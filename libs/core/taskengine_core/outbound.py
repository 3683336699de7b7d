"""Calls the engine makes to URLs its clients gave it: callbacks and semaphores.

Such a URL may point inside the network the engine runs in (SSRF). `OutboundGuard` refuses
loopback, private, link-local and other non-global addresses unless an allowlist of networks
lets them through. It is applied twice: to the URL when a client submits it (`refusal`), and to
the address actually connected to (`outbound_client`): the connection goes to the address that
was checked, so a name that resolves differently the second time (DNS rebinding) gets nowhere.

`exchange` bounds one call as a whole: connect, headers and body within one deadline (httpx's
own timeouts are per read, so a receiver sending a byte every few seconds would never trip
them), and at most a small part of the body is read.

Deliveries are signed the Standard Webhooks way: `webhook-id`, `webhook-timestamp` and
`webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">` with the client's secret.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import socket
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class Refused(httpx.ConnectError):
    """The URL's host resolves to an address the guard does not allow."""


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
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        return list(dict.fromkeys(ipaddress.ip_address(info[4][0]) for info in infos))

    async def refusal(self, url: str, unresolvable_ok: bool = False) -> str | None:
        """Why `url` may not be called, or None when every address it resolves to is allowed.

        `unresolvable_ok`: a name that does not resolve now is not refused (at submit time a
        DNS hiccup must not reject a job; delivery checks again).
        """
        try:
            parts = urlsplit(url)
            port = parts.port or (443 if parts.scheme == "https" else 80)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                return f"not an http(s) URL: {url}"
            parts.hostname.encode("idna")
        except (ValueError, UnicodeError) as error:
            return f"not a valid URL: {url} ({error})"
        try:
            addresses = await self.resolve(parts.hostname, port)
        except (OSError, UnicodeError) as error:
            return None if unresolvable_ok else f"cannot resolve {parts.hostname}: {error}"
        for address in addresses:
            if refusal := self.address_refusal(parts.hostname, address):
                return refusal
        return None


class _GuardedBackend(httpcore.AsyncNetworkBackend):
    """Resolves the host itself, checks every address, and connects to a checked one."""

    def __init__(self, guard: OutboundGuard):
        self.guard = guard
        self.inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            addresses = await self.guard.resolve(host, port)
        except OSError as error:
            raise httpcore.ConnectError(f"cannot resolve {host}: {error}") from None
        for address in addresses:
            if refusal := self.guard.address_refusal(host, address):
                raise httpcore.ConnectError(f"refused: {refusal}")
        return await self.inner.connect_tcp(
            str(addresses[0]), port, timeout, local_address, socket_options
        )

    async def connect_unix_socket(self, *args: Any, **kwargs: Any) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("refused: unix sockets are not reachable from outside")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


def outbound_client(guard: OutboundGuard, timeout: float = 10.0) -> httpx.AsyncClient:
    """An HTTP client whose every connection goes through `guard` (no proxies, no redirects).

    TLS still verifies the URL's host name: only the TCP connection is pinned to the address.
    """
    transport = httpx.AsyncHTTPTransport(trust_env=False)
    # httpx has no public hook for name resolution; its pool takes a network backend.
    transport._pool._network_backend = _GuardedBackend(guard)  # noqa: SLF001
    return httpx.AsyncClient(
        transport=transport, timeout=timeout, follow_redirects=False, trust_env=False
    )


async def exchange(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    deadline: float,
    max_bytes: int,
    guard: OutboundGuard | None = None,
    **kwargs: Any,
) -> tuple[int | None, str | None]:
    """(status, None) once the receiver answered within `deadline` seconds, else (status or
    None, why not). At most `max_bytes` of the body are read: the rest is left unread (the
    connection is dropped) and the answer counts by its status. With `guard`, a URL it refuses
    is not called: (None, "refused: ..."). Never raises but cancellation.
    """
    status = None
    try:
        async with asyncio.timeout(deadline):
            if guard and (refusal := await guard.refusal(url)):
                return None, f"refused: {refusal}"
            async with client.stream(method, url, **kwargs) as response:
                status = response.status_code
                received = 0
                async for chunk in response.aiter_raw():
                    received += len(chunk)
                    if received >= max_bytes:
                        break
        return status, None
    except TimeoutError:
        return status, f"timeout: no complete answer within {deadline:g}s"
    except httpx.TimeoutException as error:
        return status, f"timeout: {type(error).__name__}: {error}"[:300]
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
