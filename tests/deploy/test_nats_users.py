"""deploy/nats-users.conf on a real nats-server: the services' user can do everything the
services do (stream, events, durable pull consumers, ordered consumers, heartbeats); the
lifecycle subscriber can read the stream through consumers of its own, ephemeral or durable
(resuming after a restart), and can do nothing else: no publishing on taskengine subjects, no
touching the services' consumers (every service's name is reserved), no overhearing."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from uuid import uuid4

import nats
import pytest
from nats.errors import TimeoutError as NatsTimeout
from nats.js import api
from taskengine_cli.subscribe import follow
from taskengine_contracts import subjects
from taskengine_contracts.events import JobPaused, encode
from taskengine_core.config import EngineSettings
from taskengine_runtime import connect, ensure_stream

from tests.support.nats_users import (
    SERVICES_USER,
    SUBSCRIBER_INBOX,
    SUBSCRIBER_USER,
    USERS_CONF,
    SecuredNats,
    secured_nats,
)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def server() -> Iterator[SecuredNats]:
    with secured_nats() as started:
        yield started


class Connected:
    """A connection as one user, with the errors the server sent it (permission violations)."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.nc: nats.NATS | None = None

    async def open(self, url: str, user: str, password: str, **options) -> nats.NATS:  # type: ignore[no-untyped-def]
        async def on_error(error: Exception) -> None:
            self.errors.append(str(error))

        self.nc = await nats.connect(
            url,
            user=user,
            password=password,
            error_cb=on_error,
            max_reconnect_attempts=0,
            allow_reconnect=False,
            **options,
        )
        return self.nc

    def violations(self) -> list[str]:
        return [e for e in self.errors if "permissions violation" in e.lower()]


async def services_connection(server: SecuredNats):  # type: ignore[no-untyped-def]
    """As the services connect: taskengine_runtime.connect with the settings' NATS options."""
    config = EngineSettings(nats_user=SERVICES_USER, nats_password=server.passwords[SERVICES_USER])
    return await connect(server.url, "test-services", **config.nats_options())


async def subscriber(server: SecuredNats) -> Connected:
    connected = Connected()
    await connected.open(
        server.url,
        SUBSCRIBER_USER,
        server.passwords[SUBSCRIBER_USER],
        inbox_prefix=SUBSCRIBER_INBOX,
    )
    return connected


def event(n: int) -> bytes:
    return json.dumps({"type": "job.submitted", "id": f"job-{n}", "job_id": n}).encode()


async def stream_messages(js) -> int:  # type: ignore[no-untyped-def]
    return (await js.stream_info(subjects.STREAM)).state.messages


async def test_the_services_user_runs_the_stream_consumers_and_heartbeats(server):
    nc, js = await services_connection(server)
    try:
        await ensure_stream(js)
        before = await stream_messages(js)
        for n in (1, 2, 3):
            ack = await js.publish(
                "taskengine.job.submitted", event(n), headers={"Nats-Msg-Id": f"s-{n}:1"}
            )
            assert ack.stream == subjects.STREAM
        assert await stream_messages(js) == before + 3
        assert (await js.get_msg(subjects.STREAM, before + 1)).data == event(1)

        # A durable pull consumer, as taskengine_runtime.BatchConsumer makes and uses one.
        config = api.ConsumerConfig(
            durable_name="admission-test",
            ack_policy=api.AckPolicy.ALL,
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=before + 1,
            filter_subjects=[subjects.JOBS],
        )
        await js.add_consumer(subjects.STREAM, config)
        pull = await js.pull_subscribe_bind(durable="admission-test", stream=subjects.STREAM)
        fetched = await pull.fetch(3, timeout=5)
        assert [m.data for m in fetched] == [event(1), event(2), event(3)]
        await fetched[-1].ack_sync()
        info = await js.consumer_info(subjects.STREAM, "admission-test")
        assert info.ack_floor.stream_seq == before + 3
        await js.delete_consumer(subjects.STREAM, "admission-test")

        # An ordered consumer, as the gateway follows jobs for WebSockets.
        ordered = await js.subscribe(
            subjects.JOBS,
            stream=subjects.STREAM,
            ordered_consumer=True,
            deliver_policy=api.DeliverPolicy.ALL,
        )
        first = await ordered.next_msg(timeout=5)
        assert first.subject.startswith("taskengine.job.")
        await ordered.unsubscribe()

        # Heartbeats, published by every service and heard by /health and `taskengine probe`.
        beats = await nc.subscribe(subjects.HEARTBEATS)
        await nc.publish(subjects.heartbeat_subject("relay"), b"{}")
        assert (await beats.next_msg(timeout=5)).subject == "heartbeat.taskengine.relay"
    finally:
        await nc.close()


async def test_the_subscriber_reads_the_lifecycle_through_its_own_consumer(server):
    nc, js = await services_connection(server)
    reader = await subscriber(server)
    try:
        await ensure_stream(js)
        await js.publish("taskengine.job.submitted", event(7), headers={"Nats-Msg-Id": "r-7:1"})
        assert reader.nc is not None
        sub = await reader.nc.jetstream().subscribe(
            subjects.JOBS,
            stream=subjects.STREAM,
            ordered_consumer=True,
            deliver_policy=api.DeliverPolicy.ALL,
        )
        seen = []
        while event(7) not in seen:
            seen.append((await sub.next_msg(timeout=5)).data)
        # Without naming the stream, the client looks it up by subject: allowed too.
        found = await reader.nc.jetstream().find_stream_name_by_subject("taskengine.job.queued")
        assert found == subjects.STREAM
        assert reader.violations() == []
    finally:
        await reader.nc.close()  # type: ignore[union-attr]
        await nc.close()


async def test_the_subscriber_cannot_publish_events_or_heartbeats(server):
    nc, js = await services_connection(server)
    reader = await subscriber(server)
    try:
        await ensure_stream(js)
        before = await stream_messages(js)
        rjs = reader.nc.jetstream()  # type: ignore[union-attr]
        for subject in ("taskengine.job.submitted", "taskengine.client.registered"):
            with pytest.raises(NatsTimeout):
                await rjs.publish(subject, event(666), timeout=1)
        heard = await nc.subscribe(subjects.HEARTBEATS)
        await reader.nc.publish("heartbeat.taskengine.dispatcher", b"{}")  # type: ignore[union-attr]
        await reader.nc.flush()  # type: ignore[union-attr]
        with pytest.raises(NatsTimeout):
            await heard.next_msg(timeout=1)
        assert await stream_messages(js) == before  # nothing forged reached the stream
        denied = " ".join(reader.violations())
        assert 'publish to "taskengine.job.submitted"' in denied.lower()
        assert 'publish to "heartbeat.taskengine.dispatcher"' in denied.lower()
    finally:
        await reader.nc.close()  # type: ignore[union-attr]
        await nc.close()


async def request(nc, subject: str, body: dict | None = None) -> dict:  # type: ignore[no-untyped-def]
    response = await nc.request(subject, json.dumps(body or {}).encode(), timeout=1)
    return json.loads(response.data)


async def test_the_subscriber_cannot_touch_the_services_consumers_or_the_stream(server):
    nc, js = await services_connection(server)
    reader = await subscriber(server)
    try:
        await ensure_stream(js)
        await js.publish("taskengine.job.admitted", event(8), headers={"Nats-Msg-Id": "t-8:1"})
        durable = api.ConsumerConfig(
            durable_name="dispatcher",
            ack_policy=api.AckPolicy.ALL,
            filter_subjects=[subjects.JOBS],
        )
        await js.add_consumer(subjects.STREAM, durable)
        rnc = reader.nc
        assert rnc is not None
        stream = subjects.STREAM
        denied = [
            f"$JS.API.CONSUMER.DELETE.{stream}.dispatcher",
            f"$JS.API.CONSUMER.INFO.{stream}.dispatcher",
            f"$JS.API.CONSUMER.MSG.NEXT.{stream}.dispatcher",
            f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.dispatcher",
            f"$JS.API.CONSUMER.CREATE.{stream}.dispatcher",
            f"$JS.API.CONSUMER.CREATE.{stream}.dispatcher.taskengine.job.>",
            f"$JS.API.CONSUMER.PAUSE.{stream}.dispatcher",
            f"$JS.API.CONSUMER.LEADER.STEPDOWN.{stream}.dispatcher",
            f"$JS.API.CONSUMER.DELETE.{stream}.projector",
            # a dispatcher's or notifier's instance consumer is reached only by its name,
            # whose random part a subscriber cannot learn: listing consumers is refused
            f"$JS.API.CONSUMER.LIST.{stream}",
            f"$JS.API.CONSUMER.NAMES.{stream}",
            f"$JS.API.STREAM.DELETE.{stream}",
            f"$JS.API.STREAM.PURGE.{stream}",
            f"$JS.API.STREAM.UPDATE.{stream}",
            f"$JS.API.STREAM.MSG.DELETE.{stream}",
            "$JS.API.STREAM.CREATE.OTHER",
            f"$JS.ACK.{stream}.dispatcher.1.1.1.0.0",
        ]
        for subject in denied:
            with pytest.raises(NatsTimeout):
                await request(rnc, subject, {"stream_name": stream})
        # The ephemeral consumers' subject takes no name: a durable (or named) one there, e.g.
        # to replace the services' consumer, is refused by the server; through an allowed name
        # in the subject, a different name in the request is refused or ignored.
        for field in ("durable_name", "name"):
            config = {"deliver_policy": "all", "ack_policy": "none", field: "dispatcher"}
            config["deliver_subject"] = f"{SUBSCRIBER_INBOX}.x"
            answer = await request(
                rnc, f"$JS.API.CONSUMER.CREATE.{stream}", {"stream_name": stream, "config": config}
            )
            assert "error" in answer, (field, answer)
            answer = await request(
                rnc,
                f"$JS.API.CONSUMER.CREATE.{stream}.mine",
                {"stream_name": stream, "config": {**config, "ack_policy": "explicit"}},
            )
            assert "error" in answer or answer["name"] == "mine", (field, answer)
            if "error" not in answer:
                await js.delete_consumer(stream, "mine")
        # ...and no consumer that delivers onto the stream's own subjects (it would re-publish).
        config = {"deliver_policy": "all", "ack_policy": "none", "deliver_subject": "taskengine.x"}
        answer = await request(
            rnc, f"$JS.API.CONSUMER.CREATE.{stream}", {"stream_name": stream, "config": config}
        )
        assert "error" in answer, answer
        info = await js.consumer_info(stream, "dispatcher")  # untouched
        assert info.config.filter_subjects == [subjects.JOBS]
        assert info.config.ack_policy == api.AckPolicy.ALL and info.num_pending >= 1
        assert (await js.stream_info(stream)).state.messages >= 1
        await js.delete_consumer(stream, "dispatcher")
    finally:
        await reader.nc.close()  # type: ignore[union-attr]
        await nc.close()


async def test_the_subscriber_cannot_overhear_the_services_inboxes(server):
    nc, js = await services_connection(server)
    reader = Connected()
    await reader.open(server.url, SUBSCRIBER_USER, server.passwords[SUBSCRIBER_USER])
    try:
        await ensure_stream(js)
        await reader.nc.subscribe("_INBOX.>")  # type: ignore[union-attr]
        live = await reader.nc.subscribe("taskengine.>")  # type: ignore[union-attr]
        await reader.nc.flush()  # type: ignore[union-attr]
        await asyncio.sleep(0.2)
        denied = " ".join(reader.violations()).lower()
        assert 'subscription to "_inbox.>"' in denied
        # The events themselves, as the relay publishes them, it may hear (read-only).
        assert 'subscription to "taskengine.>"' not in denied
        await js.publish("taskengine.job.queued", event(9), headers={"Nats-Msg-Id": "o-9:1"})
        assert (await live.next_msg(timeout=5)).data == event(9)
    finally:
        await reader.nc.close()  # type: ignore[union-attr]
        await nc.close()


async def test_the_subscriber_keeps_a_durable_consumer_of_its_own_across_restarts(server):
    """Its own durable pull consumer: what it acknowledged is not delivered again after it
    reconnects, and it goes on with what came meanwhile; it may delete it."""
    nc, js = await services_connection(server)
    try:
        await ensure_stream(js)
        start = (await js.stream_info(subjects.STREAM)).state.last_seq + 1
        for n in (21, 22):
            await js.publish("taskengine.job.started", event(n), headers={"Nats-Msg-Id": f"d-{n}"})
        config = api.ConsumerConfig(
            durable_name="audit",
            ack_policy=api.AckPolicy.EXPLICIT,
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=start,
            filter_subjects=[subjects.JOBS],
        )

        async def pull(count: int) -> list[bytes]:
            reader = await subscriber(server)
            try:
                rjs = reader.nc.jetstream()  # type: ignore[union-attr]
                try:
                    await rjs.consumer_info(subjects.STREAM, "audit")
                except nats.js.errors.NotFoundError:
                    await rjs.add_consumer(subjects.STREAM, config)
                sub = await rjs.pull_subscribe_bind(durable="audit", stream=subjects.STREAM)
                fetched = await sub.fetch(count, timeout=5)
                for msg in fetched:
                    await msg.ack_sync()
                assert reader.violations() == []
                return [m.data for m in fetched]
            finally:
                await reader.nc.close()  # type: ignore[union-attr]

        assert await pull(2) == [event(21), event(22)]
        await js.publish("taskengine.job.started", event(23), headers={"Nats-Msg-Id": "d-23"})
        assert await pull(1) == [event(23)]  # acknowledged events do not come again
        reader = await subscriber(server)
        await reader.nc.jetstream().delete_consumer(subjects.STREAM, "audit")  # type: ignore[union-attr]
        await reader.nc.close()  # type: ignore[union-attr]
    finally:
        await nc.close()


def test_every_service_name_is_reserved_from_subscribers():
    """The services' durable consumers are named after them; each service's name is denied to
    the subscriber in every consumer operation, so a new service is covered once listed."""
    services = Path(__file__).resolve().parents[2] / "services"
    names = {p.name for p in services.iterdir() if (p / "pyproject.toml").exists()} - {"cli"}
    text = USERS_CONF.read_text()
    for pattern in (
        r'"\$JS\.API\.CONSUMER\.\*\.TASKENGINE\.([a-z]+)"',
        r'"\$JS\.API\.CONSUMER\.\*\.\*\.TASKENGINE\.([a-z]+)"',
        r'"\$JS\.API\.CONSUMER\.CREATE\.TASKENGINE\.([a-z]+)\.>"',
        r'"\$JS\.ACK\.TASKENGINE\.([a-z]+)\.>"',
    ):
        assert set(re.findall(pattern, text)) == names, pattern
    from taskengine_admission.admission import NAME as admission
    from taskengine_dispatcher.dispatcher import NAME as dispatcher
    from taskengine_notifier.notifier import NAME as notifier
    from taskengine_scheduler.scheduler import NAME as scheduler

    assert {admission, dispatcher, notifier, scheduler} <= names


@pytest.mark.parametrize(
    ("user", "password"),
    [(None, None), (SERVICES_USER, "wrong"), (SUBSCRIBER_USER, "wrong"), ("nobody", "x")],
)
async def test_a_connection_without_the_right_password_is_refused(server, user, password):
    options = {} if user is None else {"user": user, "password": password}
    with pytest.raises(Exception, match="(?i)authorization"):
        nc = await nats.connect(
            server.url, allow_reconnect=False, max_reconnect_attempts=0, **options
        )
        await nc.close()


def test_no_password_is_written_in_the_users_file():
    text = USERS_CONF.read_text()
    passwords = [line.split(":", 1)[1].strip() for line in text.splitlines() if "password:" in line]
    assert passwords == ["$TASKENGINE_NATS_PASSWORD", "$TASKENGINE_NATS_SUBSCRIBER_PASSWORD"]


async def test_with_tls_the_services_connect_checking_the_server_against_the_ca():
    with secured_nats(tls=True) as secured:
        assert secured.url.startswith("tls://") and secured.ca is not None
        password = secured.passwords[SERVICES_USER]
        config = EngineSettings(
            nats_user=SERVICES_USER, nats_password=password, nats_tls_ca=str(secured.ca)
        )
        nc, js = await connect(secured.url, "test-tls", **config.nats_options())
        try:
            assert nc.connected_url is not None and nc.connected_url.scheme == "tls"
            await ensure_stream(js)
            ack = await js.publish("taskengine.job.submitted", event(1))
            assert ack.stream == subjects.STREAM
        finally:
            await nc.close()
        # Without the CA (the system's CAs do not know this one) the server is not trusted.
        untrusted = EngineSettings(nats_user=SERVICES_USER, nats_password=password)
        with pytest.raises(Exception, match="(?i)certificate verify failed"):
            await nats.connect(
                secured.url, allow_reconnect=False, max_reconnect_attempts=0,
                **untrusted.nats_options(),
            )  # fmt: skip


async def test_taskengine_subscribe_resumes_a_durable_consumer_as_the_subscriber_user(server):
    """`taskengine subscribe --durable` with exactly this user's permissions: it creates its
    consumer, reads, acknowledges, resumes after it stopped, and may look events up (--from)."""
    nc, js = await services_connection(server)
    config = EngineSettings(
        nats_user=SUBSCRIBER_USER, nats_password=server.passwords[SUBSCRIBER_USER]
    )
    lines: list[str] = []
    subject = "taskengine.job.paused"

    async def follow_as_subscriber(count: int, durable: str = "cli-paused") -> int:
        return await asyncio.wait_for(
            follow(server.url, config, durable, [subject], None, True, lines.append, print, count),
            timeout=20,
        )

    async def publish(n: int) -> None:
        headers = {"Nats-Msg-Id": f"p-{n}", subjects.POSITION_HEADER: str(n)}
        await js.publish(subject, json_event(n), headers=headers)

    try:
        await ensure_stream(js)
        assert await follow_as_subscriber(0) == 0  # creates the consumer: new events from now
        for n in (31, 32):
            await publish(n)
        assert await follow_as_subscriber(2) == 2
        await publish(33)
        assert await follow_as_subscriber(1) == 1
        assert [json.loads(line)["position"] for line in lines] == [31, 32, 33]
        for _ in range(100):  # every one acknowledged (the server applies acks on its own time)
            info = await js.consumer_info(subjects.STREAM, "cli-paused")
            if info.num_ack_pending == 0:
                break
            await asyncio.sleep(0.05)
        assert info.num_ack_pending == 0 and info.ack_floor.stream_seq == info.delivered.stream_seq
        reader = await subscriber(server)
        found = await reader.nc.jetstream().get_msg(  # type: ignore[union-attr]
            subjects.STREAM, 1, subject=subjects.ALL, next=True
        )
        assert found.seq is not None and reader.violations() == []
        await reader.nc.jetstream().delete_consumer(subjects.STREAM, "cli-paused")  # type: ignore[union-attr]
        await reader.nc.close()  # type: ignore[union-attr]
        with pytest.raises(NatsTimeout):  # a service's consumer is out of its reach
            await follow_as_subscriber(1, durable="dispatcher")
    finally:
        await nc.close()


def json_event(n: int) -> bytes:
    """A job event the contracts decode, of job `n`."""
    paused = JobPaused(id=uuid4(), version=3, at=datetime.now(UTC), job_id=n, client="c", by="c")
    return encode(paused)
