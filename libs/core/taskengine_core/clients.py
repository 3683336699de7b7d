"""Client keys: generated, hashed for storage, verified, and masked for display."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from typing import overload

_ITERATIONS = 120_000
HMAC_SCHEME = "hmac_sha256"
PBKDF2_SCHEME = "pbkdf2_sha256"
_SECRET_LABEL = b"taskengine client key hashing v1"


def new_key() -> str:
    """192 random bits: too many to guess, so a fast keyed hash is as safe as a slow one."""
    return secrets.token_hex(24)


def key_secret(master: str) -> bytes:
    """The server secret client keys are hashed under, derived from `TASKENGINE_WEBHOOK_KEY`
    with its own label (so it is never the key that signs callbacks or worker tokens)."""
    return hmac.new(master.encode(), _SECRET_LABEL, hashlib.sha256).digest()


def hash_key(key: str, secret: bytes | None) -> str:
    """`hmac_sha256$<hex>` under the server secret: what the store keeps instead of the key.

    Without a secret (a command run where the webhook key is unknown) the salted, slow
    `pbkdf2_hash`; the gateway replaces it with the HMAC on the key's first use.
    """
    if secret is None:
        return pbkdf2_hash(key)
    return f"{HMAC_SCHEME}${hmac.new(secret, key.encode(), hashlib.sha256).hexdigest()}"


def pbkdf2_hash(key: str, salt: str | None = None) -> str:
    """`pbkdf2_sha256$<iterations>$<salt>$<hex digest>`: how keys were stored before HMAC."""
    salt = salt or secrets.token_hex(8)
    digest = hashlib.pbkdf2_hmac("sha256", key.encode(), salt.encode(), _ITERATIONS).hex()
    return f"{PBKDF2_SCHEME}${_ITERATIONS}${salt}${digest}"


def is_slow_hash(stored: str) -> bool:
    """A PBKDF2 hash: verifying it costs ~100 ms of CPU, so it is migrated on first use."""
    return stored.startswith(PBKDF2_SCHEME + "$")


def verify_key(key: str, stored: str, secret: bytes | None = None) -> bool:
    """Whether `key` is the one `stored` was made from (an HMAC hash needs the secret)."""
    scheme, _, rest = stored.partition("$")
    if scheme == HMAC_SCHEME:
        return secret is not None and hmac.compare_digest(hash_key(key, secret), stored)
    try:
        iterations, salt, digest = rest.split("$")
    except ValueError:
        return False
    if scheme != PBKDF2_SCHEME or not iterations.isdigit() or int(iterations) < 1:
        return False
    candidate = hashlib.pbkdf2_hmac("sha256", key.encode(), salt.encode(), int(iterations)).hex()
    return hmac.compare_digest(candidate, digest)


def key_lookup(key: str) -> str:
    """A short, non-identifying prefix of the key's digest, to narrow a bearer-key search."""
    return hashlib.sha256(key.encode()).hexdigest()[:6]


def mask(secret: str) -> str:
    """All but the last 4 characters replaced (all of a short one): the most ever shown."""
    if len(secret) < 12:
        return "*" * max(len(secret), 4)
    return "*" * (len(secret) - 4) + secret[-4:]


# Masking reads client-sized text (a 300 kB parameter, a long log line), so every pattern
# below is linear: no quantifier can backtrack over a value (possessive `*+`, atomic `(?>)`).
_NAMES = r"api[-_]?key|access[-_]?key|secret|token|passw(?:or)?d|authorization|credentials?"
_NAME_STEMS = ("key", "secret", "token", "passw", "authorization", "credential")
_SECRET_NAME = re.compile(rf"(?i){_NAMES}")
_NAME_CHARS = re.compile(r"[\w-]++")
_SECRETISH = re.compile(
    # A whole word that contains a secret name, tried only where a word starts; the atomic
    # group keeps a failed word from being searched again for a later name in it.
    rf"(?is)((?<![\w-])(?>[\w-]*?(?:{_NAMES}))[\w-]*+[\"']?+\s*+[:=]\s*+)"
    # Its value: quoted (to the closing quote, or to the end if there is none), or one bare
    # word, after `Bearer `/`Basic ` if present.
    r"(?:(\")((?:[^\"\\]++|\\.?)*+)(\"?)|(')([^']*+)('?)|((?:bearer|basic)\s++)?([^\s\"',}&]++))"
)


def _mask_match(m: re.Match[str]) -> str:
    name = m.group(1)
    if m.group(2):  # a double-quoted value, spaces and all
        return f'{name}"{mask(m.group(3))}{m.group(4)}'
    if m.group(5):
        return f"{name}'{mask(m.group(6))}{m.group(7)}"
    return name + (m.group(8) or "") + mask(m.group(9))


def is_secret_name(key: str) -> bool:
    """Whether a key (`api_key`, `X-Auth-Token`, `db_password`) names a secret."""
    return bool(_NAME_CHARS.fullmatch(key) and _SECRET_NAME.search(key))


@overload
def mask_values(data: dict[str, object]) -> dict[str, object]: ...
@overload
def mask_values(data: object) -> object: ...
def mask_values(data: object) -> object:
    """A copy of JSON data with the values of secret-looking keys masked, at any depth."""
    if isinstance(data, dict):
        return {
            key: mask(str(value))
            if isinstance(value, (str, int)) and is_secret_name(str(key))
            else mask_values(value)
            for key, value in data.items()
        }
    if isinstance(data, list):
        return [mask_values(item) for item in data]
    return data


def mask_secrets(text: str) -> str:
    """Masks values that follow secret-looking names (`api_key=...`, `"token": "..."`), in
    time linear in the text; an unterminated quoted value is masked to the end."""
    folded = text.casefold()
    if not any(name in folded for name in _NAME_STEMS):  # the common case, at `str.find` speed
        return text
    return _SECRETISH.sub(_mask_match, text)


def parse_bootstrap(spec: str) -> list[tuple[str, str, bool]]:
    """`name:key[:admin],...` -> [(name, key, admin)]."""
    clients = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        parts = item.split(":")
        if (
            len(parts) not in (2, 3)
            or not parts[0]
            or not parts[1]
            or (len(parts) == 3 and parts[2] != "admin")
        ):
            raise ValueError(f"TASKENGINE_BOOTSTRAP_CLIENT entry {item!r} is not name:key[:admin]")
        clients.append((parts[0], parts[1], len(parts) == 3))
    return clients
