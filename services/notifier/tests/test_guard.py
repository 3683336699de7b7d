"""The SSRF guard refuses internal and malformed URLs, and never raises."""

from __future__ import annotations

import pytest
from taskengine_notifier.guard import CallbackGuard, parse_allowlist


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/x",
        "http://localhost:8080/",
        "http://10.1.2.3/",
        "http://169.254.169.254/",
        "http://[::1]/",
        "ftp://example.com/",
        "http://example.com:99999/",
        "http://x:abc/",
        "http://a..b/",
        "http://" + "a" * 64 + ".com/",
    ],
)
async def test_internal_or_malformed_urls_are_refused_with_a_reason(url):
    refusal = await CallbackGuard([]).refusal(url)
    assert isinstance(refusal, str) and refusal


async def test_the_allowlist_lets_an_internal_network_through():
    guard = CallbackGuard(parse_allowlist("127.0.0.0/8, 10.0.0.0/8"))
    assert await guard.refusal("http://127.0.0.1:9/callback") is None
    assert await guard.refusal("http://10.9.8.7/") is None
    assert await guard.refusal("http://192.168.1.1/") is not None
