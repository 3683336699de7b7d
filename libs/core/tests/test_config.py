"""Process settings (`TASKENGINE_*`) refused at start, saying what is wrong."""

import pytest
from pydantic import ValidationError
from taskengine_core.config import EngineSettings


@pytest.mark.parametrize(
    "url", ["nats://a:4222", "tls://a:4222,tls://b:4222", "a:4222", "nats://a:4222, nats://b:4222"]
)
def test_nats_servers_are_nats_or_tls(url):
    assert EngineSettings(nats_url=url).nats_url == url


@pytest.mark.parametrize("url", ["ws://a:8080", "nats://a:4222,wss://b:443", "http://a:4222"])
def test_other_nats_schemes_are_refused(url):
    with pytest.raises(ValidationError, match="nats://host:port or tls://host:port"):
        EngineSettings(nats_url=url)
