"""Refuses callbacks to loopback, private, link-local and other internal addresses (SSRF)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_allowlist(spec: str) -> list[Network]:
    return [
        ipaddress.ip_network(part.strip(), strict=False) for part in spec.split(",") if part.strip()
    ]


class CallbackGuard:
    def __init__(self, allowlist: list[Network]):
        self.allowlist = allowlist

    async def refusal(self, url: str) -> str | None:
        """Why `url` may not be called, or None when every address it resolves to is public."""
        try:
            parts = urlsplit(url)
            port = parts.port or (443 if parts.scheme == "https" else 80)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                return f"not an http(s) URL: {url}"
            infos = await asyncio.get_running_loop().getaddrinfo(
                parts.hostname, port, type=socket.SOCK_STREAM
            )
        except (OSError, ValueError) as error:  # bad port, bad IDNA label, unresolvable
            return f"cannot reach {url}: {error}"
        for info in infos:
            address = ipaddress.ip_address(info[4][0])
            if any(address in network for network in self.allowlist):
                continue
            if not address.is_global or address.is_multicast:
                return f"{parts.hostname} resolves to internal address {address}"
        return None
