"""Client keys: hashing, verification, lookup prefixes, masking, and the bootstrap spec."""

from __future__ import annotations

import hashlib
import re

import pytest
from taskengine_core.clients import (
    key_lookup,
    mask,
    mask_secrets,
    mask_values,
    new_key,
    parse_bootstrap,
    pbkdf2_hash,
    verify_key,
)

KEY = "3f9a2c7d1e8b4f60a5c2d9e7b1f4a8c3d6e0b2f5a7c9d1e3"


# --- keys -------------------------------------------------------------------------------


def test_new_keys_are_48_hex_characters_and_unique():
    keys = {new_key() for _ in range(20)}
    assert len(keys) == 20
    assert all(re.fullmatch(r"[0-9a-f]{48}", key) for key in keys)


def test_hash_key_has_the_documented_shape_and_never_contains_the_key():
    stored = pbkdf2_hash(KEY)
    scheme, iterations, salt, digest = stored.split("$")
    assert scheme == "pbkdf2_sha256"
    assert int(iterations) >= 100_000
    assert salt and re.fullmatch(r"[0-9a-f]{64}", digest)
    assert KEY not in stored


def test_hash_key_with_a_given_salt_is_deterministic_and_uses_it():
    assert pbkdf2_hash(KEY, salt="pepper") == pbkdf2_hash(KEY, salt="pepper")
    assert pbkdf2_hash(KEY, salt="pepper").split("$")[2] == "pepper"
    assert pbkdf2_hash(KEY, salt="pepper") != pbkdf2_hash(KEY, salt="salt")


def test_a_key_verifies_against_its_hash():
    assert verify_key(KEY, pbkdf2_hash(KEY))


def test_a_wrong_key_does_not_verify():
    stored = pbkdf2_hash(KEY)
    assert not verify_key(KEY[:-1] + "0", stored)
    assert not verify_key("", stored)
    assert not verify_key(KEY + " ", stored)


def test_two_hashes_of_the_same_key_differ_by_salt_and_both_verify():
    first, second = pbkdf2_hash(KEY), pbkdf2_hash(KEY)
    assert first != second
    assert first.split("$")[2] != second.split("$")[2]
    assert verify_key(KEY, first) and verify_key(KEY, second)


@pytest.mark.parametrize(
    "stored",
    [
        "",
        "not-a-hash",
        KEY,  # the plain key stored by mistake
        "pbkdf2_sha256$120000$salt",  # too few fields
        "pbkdf2_sha256$120000$salt$digest$extra",  # too many fields
        "md5$120000$salt$" + "0" * 64,  # another scheme
    ],
)
def test_a_malformed_stored_hash_does_not_verify(stored):
    assert verify_key(KEY, stored) is False


def test_a_tampered_digest_does_not_verify():
    scheme, iterations, salt, digest = pbkdf2_hash(KEY).split("$")
    tampered = f"{scheme}${iterations}${salt}${'0' * len(digest)}"
    assert not verify_key(KEY, tampered)


@pytest.mark.parametrize(
    "stored", ["pbkdf2_sha256$many$salt$" + "0" * 64, "pbkdf2_sha256$0$salt$" + "0" * 64]
)
def test_a_stored_hash_with_bad_iterations_does_not_verify(stored):
    assert verify_key(KEY, stored) is False


def test_key_lookup_is_the_first_six_hex_digits_of_the_sha256():
    assert key_lookup(KEY) == hashlib.sha256(KEY.encode()).hexdigest()[:6]
    assert len(key_lookup("x")) == 6
    assert key_lookup("a") != key_lookup("b")


# --- masking ----------------------------------------------------------------------------


def test_mask_keeps_only_the_last_four_characters_of_a_long_secret():
    assert mask("abcdefghijkl") == "********ijkl"
    assert mask(KEY) == "*" * (len(KEY) - 4) + KEY[-4:]


def test_mask_keeps_the_length_of_a_long_secret():
    for secret in ("abcdefghijkl", KEY):
        assert len(mask(secret)) == len(secret)


@pytest.mark.parametrize("secret", ["", "a", "abcd", "abcdefgh", "abcdefghijk"])
def test_mask_hides_a_short_secret_entirely(secret):
    # Four visible characters of a short secret would give most of it away.
    masked = mask(secret)
    assert set(masked) == {"*"} and len(masked) >= 4


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("api_key=abcdef123456", "api_key=********3456"),
        ("API-KEY: abcdef123456", "API-KEY: ********3456"),
        ("apikey=abcdef123456", "apikey=********3456"),
        ('{"token": "abcdefghijkl"}', '{"token": "********ijkl"}'),
        ("{'secret': 'abcdefghijkl'}", "{'secret': '********ijkl'}"),
        ('"password":"hunter2hunter2"', '"password":"**********ter2"'),
        ("Authorization: Bearer abcdefghijkl", "Authorization: Bearer ********ijkl"),
        ("authorization: basic dXNlcjpwYXNz", "authorization: basic ********YXNz"),
        ("credential=abcdefgh", "credential=********"),
        ("GET /x?token=abcdefghijkl&page=2", "GET /x?token=********ijkl&page=2"),
        ('{"password": 123456789012}', '{"password": ********9012}'),
    ],
)
def test_mask_secrets_masks_values_after_secret_names(text, expected):
    assert mask_secrets(text) == expected


def test_mask_secrets_masks_every_secret_in_the_text():
    text = 'api_key=abcdef123456 then {"token": "zyxwvutsrqpo"}'
    assert mask_secrets(text) == 'api_key=********3456 then {"token": "********rqpo"}'


def test_mask_secrets_masks_secrets_inside_json_dumped_parameters():
    text = '{"parameters": {"api_key": "sk-live-0123456789", "n": 3}}'
    masked = mask_secrets(text)
    assert "sk-live-0123456789" not in masked
    assert masked == '{"parameters": {"api_key": "**************6789", "n": 3}}'


@pytest.mark.parametrize(
    "text",
    [
        "",
        "step 1 exited 0",
        "the token bucket is full",
        "password reset requested",
        '{"workflow": "echo", "priority": 3}',
        "key=value with no secret name",
    ],
)
def test_mask_secrets_leaves_ordinary_text_alone(text):
    assert mask_secrets(text) == text


def test_mask_secrets_hides_a_short_bearer_token():
    assert "xyz" not in mask_secrets("Authorization: Bearer xyz")


@pytest.mark.parametrize("text", ["secret_key=supersecretvalue", "passwd=supersecretvalue"])
def test_mask_secrets_masks_other_common_secret_names(text):
    assert "supersecretvalue" not in mask_secrets(text)


def test_mask_secrets_masks_the_whole_of_a_quoted_secret_with_spaces():
    assert "horse battery" not in mask_secrets('{"password": "correct horse battery"}')


# --- bootstrap --------------------------------------------------------------------------


def test_parse_bootstrap_reads_names_keys_and_the_admin_flag():
    assert parse_bootstrap("ops:k1:admin,alice:k2") == [
        ("ops", "k1", True),
        ("alice", "k2", False),
    ]


def test_parse_bootstrap_ignores_blanks_and_surrounding_spaces():
    assert parse_bootstrap(" alice:k1 , ,, bob:k2:admin ,") == [
        ("alice", "k1", False),
        ("bob", "k2", True),
    ]


def test_parse_bootstrap_of_nothing_is_empty():
    assert parse_bootstrap("") == []
    assert parse_bootstrap(" , ") == []


@pytest.mark.parametrize("spec", ["alice:k1:user", "alice:k1:ADMIN"])
def test_parse_bootstrap_refuses_a_third_field_other_than_admin(spec):
    with pytest.raises(ValueError, match="name:key"):
        parse_bootstrap(spec)


@pytest.mark.parametrize(
    "spec", ["alice", "alice:", ":k1", "alice::admin", "a:b:admin:extra", "ok:k,broken"]
)
def test_parse_bootstrap_refuses_malformed_entries(spec):
    with pytest.raises(ValueError, match="is not name:key\\[:admin\\]"):
        parse_bootstrap(spec)


def test_parse_bootstrap_error_names_the_bad_entry():
    with pytest.raises(ValueError, match="'broken'"):
        parse_bootstrap("ok:k,broken")


def test_mask_values_masks_secret_keys_at_any_depth_and_nothing_else():
    data = {
        "api_key": "sk-live-0123456789",
        "n": 3,
        "nested": [{"password": "correct horse battery", "title": "keep me"}],
    }
    masked = mask_values(data)
    assert masked == {
        "api_key": "**************6789",
        "n": 3,
        "nested": [{"password": "*****************tery", "title": "keep me"}],
    }
    assert data["api_key"] == "sk-live-0123456789"  # the original is untouched
