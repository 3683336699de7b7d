"""Client keys: generated, hashed for storage, verified, and masked for display."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

_ITERATIONS = 120_000


def new_key() -> str:
    return secrets.token_hex(24)


def hash_key(key: str, salt: str | None = None) -> str:
    """`pbkdf2_sha256$<iterations>$<salt>$<hex digest>`: what the store keeps instead of the key."""
    salt = salt or secrets.token_hex(8)
    digest = hashlib.pbkdf2_hmac("sha256", key.encode(), salt.encode(), _ITERATIONS).hex()
    return f"pbkdf2_sha256${_ITERATIONS}${salt}${digest}"


def verify_key(key: str, stored: str) -> bool:
    try:
        scheme, iterations, salt, digest = stored.split("$")
    except ValueError:
        return False
    if scheme != "pbkdf2_sha256":
        return False
    candidate = hashlib.pbkdf2_hmac("sha256", key.encode(), salt.encode(), int(iterations)).hex()
    return hmac.compare_digest(candidate, digest)


def key_lookup(key: str) -> str:
    """A short, non-identifying prefix of the key's digest, to narrow a bearer-key search."""
    return hashlib.sha256(key.encode()).hexdigest()[:6]


def mask(secret: str) -> str:
    """All but the last 4 characters replaced: the most of a secret that may ever be shown."""
    return "*" * max(len(secret) - 4, 0) + secret[-4:]


_SECRETISH = re.compile(
    r"(?i)((?:api[-_]?key|token|secret|password|authorization|credentials?)"
    r"[\"']?\s*[:=]\s*[\"']?(?:bearer\s+|basic\s+)?)([^\s\"',}&]+)"
)


def mask_secrets(text: str) -> str:
    """Masks values that follow secret-looking names (`api_key=...`, `"token": "..."`)."""
    return _SECRETISH.sub(lambda m: m.group(1) + mask(m.group(2)), text)


def parse_bootstrap(spec: str) -> list[tuple[str, str, bool]]:
    """`name:key[:admin],...` -> [(name, key, admin)]."""
    clients = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        parts = item.split(":")
        if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
            raise ValueError(f"TASKENGINE_BOOTSTRAP_CLIENT entry {item!r} is not name:key[:admin]")
        clients.append((parts[0], parts[1], len(parts) == 3 and parts[2] == "admin"))
    return clients
