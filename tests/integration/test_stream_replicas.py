"""The stream's replicas (TASKENGINE_NATS_REPLICAS) on a real NATS cluster: created with them,
raised to them, never lowered, and a count the servers cannot hold refused in plain words."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import nats
import pytest
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from taskengine_contracts import subjects
from taskengine_embedded import EmbeddedNatsCluster
from taskengine_runtime.bus import StreamError, connect, ensure_stream

from tests.support.servers import nats_cluster

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNatsCluster]:
    with nats_cluster(tmp_path_factory.mktemp("replicas"), size=3) as started:
        yield started


@pytest.fixture
async def js(cluster: EmbeddedNatsCluster) -> AsyncIterator[JetStreamContext]:
    nc, js = await connect(cluster.url, "test-replicas")  # every node named, comma-separated
    try:
        await js.delete_stream(subjects.STREAM)
    except NotFoundError:
        pass
    yield js
    await nc.close()


async def replicas(js: JetStreamContext) -> int:
    return (await js.stream_info(subjects.STREAM)).config.num_replicas or 1


async def test_the_stream_is_created_with_the_replicas_asked_for(js):
    await ensure_stream(js, 3)
    info = await js.stream_info(subjects.STREAM)
    assert info.config.num_replicas == 3
    assert info.cluster is not None and len(info.cluster.replicas or []) == 2


async def test_a_stream_with_fewer_replicas_is_raised_and_keeps_its_events(js):
    await ensure_stream(js)
    assert await replicas(js) == 1
    await js.publish(f"{subjects.PREFIX}.job.submitted", b"{}")
    await ensure_stream(js, 3)
    info = await js.stream_info(subjects.STREAM)
    assert info.config.num_replicas == 3
    assert info.state.messages == 1
    assert info.config.max_age == 7 * 24 * 3600  # its other settings kept


async def test_a_lower_setting_never_shrinks_the_stream(js):
    await ensure_stream(js, 3)
    await ensure_stream(js, 1)
    assert await replicas(js) == 3


async def test_more_replicas_than_servers_is_refused_clearly(js):
    with pytest.raises(StreamError, match="at most the number of JetStream servers"):
        await ensure_stream(js, 5)
    await ensure_stream(js, 1)
    with pytest.raises(StreamError, match="raising its replicas to 5 was refused"):
        await ensure_stream(js, 5)
    assert await replicas(js) == 1


async def test_a_server_that_is_not_clustered_refuses_replicas_clearly(nats_url):
    nc = await nats.connect(nats_url)
    try:
        await nc.jetstream().delete_stream(subjects.STREAM)
    except NotFoundError:
        pass
    try:
        with pytest.raises(StreamError, match="TASKENGINE_NATS_REPLICAS"):
            await ensure_stream(nc.jetstream(), 3)
    finally:
        await nc.close()
