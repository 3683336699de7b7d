"""A lifecycle subscriber: a FastStream app on NATS JetStream, typed by taskengine_contracts.

It follows every job's lifecycle events (`taskengine.job.>`) through a durable pull consumer
of its own, in stream order: it takes them in batches of up to 100 and handles each batch's
events one after another (FastStream would handle a pulled batch's messages concurrently, so
in no set order, unless the handler takes the batch). A batch is acknowledged once its handler
returned, so after a crash or a restart the app continues after the last acknowledged batch:
nothing acknowledged comes again, nothing published meanwhile is missed.
Run it with `python examples/subscriber/subscriber.py`.

Settings (environment): TASKENGINE_NATS_URL (default nats://127.0.0.1:4222), SUBSCRIBER_NAME
(the durable consumer's name, default `job-audit`; any name but a service's), and in production
TASKENGINE_NATS_USER=taskengine-subscriber, TASKENGINE_NATS_PASSWORD, TASKENGINE_NATS_TLS_CA.
"""

from __future__ import annotations

import asyncio
import os
import ssl

from faststream import FastStream
from faststream.middlewares import AckPolicy
from faststream.nats import JStream, NatsBroker, PullSub
from faststream.nats.message import NatsBatchMessage
from faststream.security import BaseSecurity, SASLPlaintext
from nats.js.api import AckPolicy as ConsumerAckPolicy
from nats.js.api import ConsumerConfig, DeliverPolicy
from taskengine_contracts import subjects
from taskengine_contracts.events import AnyEvent, JobEvent, decode, topic_of

NAME = os.environ.get("SUBSCRIBER_NAME", "job-audit")


def security() -> BaseSecurity | None:
    """The subscriber user's password and the servers' CA, when the environment names them."""
    ca = os.environ.get("TASKENGINE_NATS_TLS_CA")
    context = ssl.create_default_context(cafile=ca) if ca else None
    user = os.environ.get("TASKENGINE_NATS_USER")
    if user:
        return SASLPlaintext(user, os.environ["TASKENGINE_NATS_PASSWORD"], ssl_context=context)
    return BaseSecurity(ssl_context=context) if context else None


broker = NatsBroker(
    os.environ.get("TASKENGINE_NATS_URL", "nats://127.0.0.1:4222").split(","),
    security=security(),
    inbox_prefix=subjects.SUBSCRIBER_INBOX,  # the only inboxes the subscriber user receives on
)
app = FastStream(broker)


async def events_of(batch: NatsBatchMessage) -> list[tuple[str | None, AnyEvent]]:
    """Each message's stream position and event, decoded (and upcast, if it is of an older
    shape) by the contracts, in stream order."""
    return [
        ((m.headers or {}).get(subjects.POSITION_HEADER), decode(m.data)) for m in batch.raw_message
    ]


@broker.subscriber(
    subjects.JOBS,
    stream=JStream(subjects.STREAM, declare=False),  # the engine's stream: never redefined here
    durable=NAME,
    pull_sub=PullSub(batch_size=100, timeout=0.5, batch=True),  # one handler call per batch
    config=ConsumerConfig(
        ack_policy=ConsumerAckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,  # first start: every event the stream holds
        ack_wait=10,  # an event handled but not acknowledged before a crash comes again after
    ),
    ack_policy=AckPolicy.ACK,  # acknowledge the batch after the handler returned
    inbox_prefix=f"{subjects.SUBSCRIBER_INBOX}.".encode(),  # where its pulls are answered
    decoder=events_of,
    description="Every job's lifecycle events, durably",
)
async def on_job_events(events: list) -> None:  # type: ignore[type-arg]
    """Prints one line per event, in stream order: position, type, job number, client."""
    for position, event in events:
        if isinstance(event, JobEvent):
            line = f"event {position} {topic_of(event)} job {event.job_id} {event.client}"
            print(line, flush=True)


if __name__ == "__main__":
    asyncio.run(app.run())
