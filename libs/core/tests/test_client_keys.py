"""Client keys hashed with HMAC-SHA-256 under the server secret, and the PBKDF2 ones they
replace: both verify, only the right key and the right secret match."""

from __future__ import annotations

import hashlib
import hmac
import re

from taskengine_core.clients import (
    hash_key,
    is_slow_hash,
    key_secret,
    new_key,
    pbkdf2_hash,
    verify_key,
)

SECRET = key_secret("webhook-master-key")
KEY = new_key()


def test_a_new_key_holds_at_least_128_random_bits():
    keys = [new_key() for _ in range(50)]
    assert len(set(keys)) == 50
    # Hex digits carry 4 bits each: 48 of them are 192 bits.
    assert all(re.fullmatch(r"[0-9a-f]+", k) and len(k) * 4 >= 128 for k in keys)


def test_the_key_secret_is_derived_with_its_own_label_not_the_master_itself():
    assert len(SECRET) == 32
    assert SECRET == key_secret("webhook-master-key")
    assert SECRET != key_secret("another-master-key")
    assert SECRET != b"webhook-master-key"
    # Not the webhook secret of any client (those are HMACs of a client name).
    assert SECRET != hmac.new(b"webhook-master-key", b"", hashlib.sha256).digest()


def test_hash_key_is_an_hmac_of_the_key_under_the_secret_and_never_holds_the_key():
    stored = hash_key(KEY, SECRET)
    expected = hmac.new(SECRET, KEY.encode(), hashlib.sha256).hexdigest()
    assert stored == f"hmac_sha256${expected}"
    assert KEY not in stored
    assert not is_slow_hash(stored)


def test_a_key_verifies_against_its_hmac_only_with_the_same_secret():
    stored = hash_key(KEY, SECRET)
    assert verify_key(KEY, stored, SECRET)
    assert not verify_key(KEY, stored, key_secret("another-master-key"))
    assert not verify_key(KEY, stored, None)


def test_a_wrong_key_does_not_verify_against_an_hmac():
    stored = hash_key(KEY, SECRET)
    assert not verify_key(KEY[:-1] + ("0" if KEY[-1] != "0" else "1"), stored, SECRET)
    assert not verify_key("", stored, SECRET)
    assert not verify_key(KEY + " ", stored, SECRET)


def test_a_tampered_or_truncated_hmac_does_not_verify():
    stored = hash_key(KEY, SECRET)
    assert not verify_key(KEY, "hmac_sha256$" + "0" * 64, SECRET)
    assert not verify_key(KEY, stored[:-1], SECRET)
    assert not verify_key(KEY, "hmac_sha256$", SECRET)


def test_without_a_secret_the_key_is_hashed_the_slow_salted_way_and_still_verifies():
    stored = hash_key(KEY, None)
    assert stored.startswith("pbkdf2_sha256$")
    assert is_slow_hash(stored)
    assert verify_key(KEY, stored) and verify_key(KEY, stored, SECRET)
    assert not verify_key(KEY[::-1], stored, SECRET)


def test_an_old_pbkdf2_hash_still_verifies_with_or_without_the_secret():
    stored = pbkdf2_hash(KEY, salt="0011223344556677")
    assert is_slow_hash(stored)
    assert verify_key(KEY, stored, SECRET)
    assert verify_key(KEY, stored)
