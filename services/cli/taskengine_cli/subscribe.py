"""`taskengine subscribe`: follow lifecycle events from JetStream, a line (or JSON) per event.

It reads the `TASKENGINE` stream through a pull consumer of its own. With `--durable NAME` the
consumer outlives the command: each event is acknowledged after it is printed, so a restart
(also after a crash) continues after the last acknowledged event, and nothing acknowledged is
delivered again. Without it the consumer is ephemeral and goes when the command stops.

`--from POSITION` starts after that `Taskengine-Position` (the store's order, what each line
shows): the stream is searched for the first event past it. Events the relay published twice
(after a NATS restart, beyond the duplicate window) are skipped by their position.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable

import msgspec
import nats
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext, api
from nats.js.errors import APIError, NotFoundError
from taskengine_contracts import subjects
from taskengine_contracts.events import AnyEvent, JobEvent, decode
from taskengine_core.config import EngineSettings, engine_settings

from taskengine_cli.probe import nats_url

BATCH = 100
ACK_WAIT = 10.0
"""Seconds before an event delivered but not acknowledged (its subscriber crashed) comes again."""
SERVICES_USER = "taskengine"
"""The services' NATS user (deploy/nats-users.conf): it receives on `_INBOX.>`, every other
user on `subjects.SUBSCRIBER_INBOX`."""
_json = msgspec.json.Encoder()


def inbox_prefix(config: EngineSettings) -> str:
    return "_INBOX" if config.nats_user == SERVICES_USER else subjects.SUBSCRIBER_INBOX


def position_of(msg: Msg | api.RawStreamMsg) -> int:
    headers = msg.headers or {}
    return int(headers.get(subjects.POSITION_HEADER, 0))


async def first_after(js: JetStreamContext, position: int) -> int:
    """The stream sequence of the first event whose position is past `position` (the stream is
    in store order), or the sequence after the last when none is."""
    info = await js.stream_info(subjects.STREAM)
    low, high = info.state.first_seq, info.state.last_seq + 1
    while low < high:
        middle = (low + high) // 2
        try:
            found = await js.get_msg(subjects.STREAM, middle, subject=subjects.ALL, next=True)
        except NotFoundError:  # nothing at or after `middle`
            high = middle
            continue
        if position_of(found) > position:
            high = middle
        else:
            low = (found.seq or middle) + 1
    return low


async def consumer(
    js: JetStreamContext,
    durable: str | None,
    filters: list[str],
    start: int | None,
    say: Callable[[str], None],
) -> tuple[JetStreamContext.PullSubscription, int]:
    """Binds to `durable` if it exists (resuming), else creates it (or an ephemeral consumer)
    from `start`; returns the subscription and the position it has already handled."""
    if durable:
        try:
            info = await js.consumer_info(subjects.STREAM, durable)
        except NotFoundError:
            pass
        else:
            if start is not None:
                say(f"resuming {durable}: --from applies only when it is created")
            handled = 0
            if info.ack_floor.stream_seq:
                try:
                    acked = await js.get_msg(subjects.STREAM, info.ack_floor.stream_seq)
                    handled = position_of(acked)
                except NotFoundError:  # aged out of the stream
                    pass
            return await js.pull_subscribe_bind(durable=durable, stream=subjects.STREAM), handled
    config = api.ConsumerConfig(
        durable_name=durable,
        name=durable,
        ack_policy=api.AckPolicy.EXPLICIT,
        ack_wait=ACK_WAIT,
        filter_subjects=filters,
        inactive_threshold=None if durable else 60.0,
    )
    if start is None:
        config.deliver_policy = api.DeliverPolicy.NEW
    else:
        config.deliver_policy = api.DeliverPolicy.BY_START_SEQUENCE
        config.opt_start_seq = await first_after(js, start)
    info = await js.add_consumer(subjects.STREAM, config)
    sub = await js.pull_subscribe_bind(consumer=info.name, stream=subjects.STREAM)
    return sub, start or 0


def line_for(msg: Msg, event: AnyEvent, as_json: bool) -> str:
    position = position_of(msg)
    if as_json:
        seq = msg.metadata.sequence.stream
        return _json.encode(
            {"position": position, "stream_seq": seq, "subject": msg.subject, "event": event}
        ).decode()
    topic = msg.subject.removeprefix(f"{subjects.PREFIX}.")
    text = f"{position}\t{event.at.isoformat()}\t{topic}"
    if isinstance(event, JobEvent):
        text += f"\tjob {event.job_id}\t{event.client}"
    return text


async def follow(
    url: str,
    config: EngineSettings,
    durable: str | None,
    filters: list[str],
    start: int | None,
    as_json: bool,
    out: Callable[[str], None] = print,
    say: Callable[[str], None] = print,
    stop_after: int | None = None,
) -> int:
    """Prints every event the consumer delivers (acknowledging each after printing it) until
    interrupted, or until `stop_after` events were printed; returns how many were."""
    nc = await nats.connect(
        [server.strip() for server in url.split(",") if server.strip()],
        name=f"taskengine-subscribe-{durable or 'ephemeral'}",
        inbox_prefix=inbox_prefix(config),
        **config.nats_options(),
    )
    printed = 0
    try:
        js = nc.jetstream()
        sub, floor = await consumer(js, durable, filters, start, say)
        latest = floor
        while stop_after is None or printed < stop_after:
            try:
                batch = await sub.fetch(BATCH, timeout=5)
            except NatsTimeout:
                continue
            for msg in batch:
                position = position_of(msg)
                # New deliveries come in store order: one at or below the latest is the relay's
                # re-publish. A redelivery (printed, not acknowledged before a crash) may come
                # after later events, and is printed unless it was acknowledged before.
                again = msg.metadata.num_delivered > 1
                if position > latest or (again and position > floor):
                    try:
                        out(line_for(msg, decode(msg.data), as_json))
                    except msgspec.DecodeError as error:
                        say(f"position {position} ({msg.subject}): not an event here: {error}")
                    latest = max(latest, position)
                    printed += 1
                await msg.ack()
    finally:
        await nc.close()
    return printed


def cmd_subscribe(args: argparse.Namespace) -> int:
    config = engine_settings()
    url = args.nats_url or nats_url(config)
    if not url:
        print("taskengine subscribe: no NATS (set TASKENGINE_NATS_URL)", file=sys.stderr)
        return 1

    def say(text: str) -> None:
        print(f"taskengine subscribe: {text}", file=sys.stderr, flush=True)

    def out(text: str) -> None:
        print(text, flush=True)

    filters = args.subject or [subjects.JOBS]
    try:
        asyncio.run(follow(url, config, args.durable, filters, args.start, args.json, out, say))
        return 0
    except KeyboardInterrupt:
        return 0
    except APIError as error:  # JetStream's own refusal, e.g. no such stream
        say(f"JetStream refused: {error}")
    except (NatsTimeout, NoRespondersError):
        say(
            "no answer from JetStream: is it enabled, and may this user use the consumer (a"
            " service's name is reserved)?"
        )
    except ValueError as error:  # e.g. a consumer name with a dot or a space
        say(str(error))
    except Exception as error:  # unreachable or refused; its text may hold the URL's password
        say(f"cannot reach NATS ({type(error).__name__})")
    return 1


def register(commands: argparse._SubParsersAction) -> None:
    """Adds `subscribe` to the `taskengine` command."""
    sub = commands.add_parser(
        "subscribe",
        help="follow lifecycle events from JetStream, a line (or JSON) per event",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
    )
    sub.add_argument(
        "--from",
        dest="start",
        type=int,
        metavar="POSITION",
        help="start after this Taskengine-Position (0: every event the stream holds);"
        " default: new events only",
    )
    sub.add_argument(
        "--durable",
        metavar="NAME",
        help="a durable consumer: a restart continues after the last acknowledged event",
    )
    sub.add_argument(
        "--subject",
        action="append",
        help=f"subjects to follow (repeatable; default {subjects.JOBS})",
    )
    sub.add_argument("--json", action="store_true", help="one JSON object per event")
    sub.add_argument("--nats-url", help="default: TASKENGINE_NATS_URL, else `taskengine up`'s")
    sub.set_defaults(func=cmd_subscribe)


__all__ = ["follow", "first_after", "line_for", "register"]
