"""Calls the engine makes to URLs its clients gave it: callbacks and semaphores.

Such a URL may point inside the network the engine runs in (SSRF). `OutboundGuard` refuses
loopback, private, link-local and other non-global addresses unless an allowlist of networks
lets them through. It is applied twice: to the URL when a client submits it (`refusal`), and at
every connection (`outbound_client`): the client's resolver refuses a name resolving to an
address not allowed, and each socket's address is checked before it connects, so a name that
resolves differently the second time (DNS rebinding) gets nowhere. A call looks no name up of
its own: the client keeps what it resolved for 10 s and reuses connections. The client and
the calls are in `outbound_http` (aiohttp): a process that only judges URLs (the gateway)
does without it.

Deliveries are signed the Standard Webhooks way: `webhook-id`, `webhook-timestamp` and
`webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">` with the client's secret.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import ipaddress
import socket
from collections.abc import Iterable
from urllib.parse import urlsplit

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class Refused(OSError):
    """A connection to an address the guard does not allow (never attempted)."""


def parse_allowlist(spec: str) -> list[Network]:
    """`TASKENGINE_CALLBACK_ALLOWLIST`: comma-separated CIDRs, e.g. `10.0.0.0/8,127.0.0.1/32`."""
    return [
        ipaddress.ip_network(part.strip(), strict=False) for part in spec.split(",") if part.strip()
    ]


JUDGED = 4096
"""URLs whose `url_refusal` a guard keeps (a notifier calls the same few again and again)."""


class OutboundGuard:
    def __init__(self, allowlist: Iterable[Network] = ()):
        self.allowlist = list(allowlist)
        self._judged = functools.lru_cache(maxsize=JUDGED)(self._judge)

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
        URL, or the address written in it is not allowed. The answer depends on the URL alone,
        so the answers for the `JUDGED` URLs used last are kept."""
        return self._judged(url)

    def _judge(self, url: str) -> str | None:
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
