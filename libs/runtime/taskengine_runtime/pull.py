"""A standing pull on a durable JetStream consumer: messages come as they are stored, without a
pull request or an ack for each batch.

A consumer that pulls one batch at a time (nats-py's `fetch`) sends a pull request for every
batch and an ack after it: at a quiet system's pace, a batch is one event, so every event a
service takes costs the server three messages (the request, the delivery, the ack), each a
wake-up of its goroutines. Here one request for up to `size` messages (and at most `max_bytes`
of them) stays open at the server, which delivers each message the moment it is stored; the next
request goes out once that one is used up or expired, and only while fewer than `size` messages
wait to be taken, so a slow consumer holds at most `size` messages and `max_bytes` in hand
beyond the batch it handles. Its consumers acknowledge nothing (`AckPolicy.NONE`): the store's
tracking record, not the server's ack floor, says what a service handled (`BatchConsumer`
re-creates its consumer from it), and a delivery lost on its way shows as a gap in the
consumer's sequence (`BatchConsumer._missed`).

Each request has a reply subject of its own (`<inbox>.<n>`), so the end of a past request (its
"408 Request Timeout", come late) is told from the end of the live one.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import time

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import ConnectionClosedError
from nats.js import api
from nats.js.errors import APIError

log = logging.getLogger(__name__)

EXPIRES = 1.0
"""Seconds a pull request lives at the server: an idle consumer asks again this often (what
nats-py's `fetch(timeout=1)` cost before), and a request the server lost (a restart) is
replaced within this and `GRACE`."""
GRACE = 1.0
"""Seconds past a request's expiry after which its end, never heard, is taken for granted."""
GATHER = 0.05
"""Seconds to wait for a message the server said was pending when it sent the last one."""
MAX_BYTES = 8 * 2**20
"""Bytes one request may deliver (raised to twice the server's largest message)."""
PAUSE = 0.5
"""Seconds before asking again after a refused request (no consumer leader, a conflict)."""
ENDED = (api.StatusCode.NO_MESSAGES, api.StatusCode.REQUEST_TIMEOUT)
DONE = ("Message Size Exceeds MaxBytes", "Batch Completed")
"""409s that end a request normally: the next message would overrun its byte budget; it was
served in full (newer servers say so)."""


class StandingPull:
    def __init__(
        self,
        nc: Client,
        stream: str,
        durable: str,
        size: int,
        expires: float = EXPIRES,
        prefix: str = api.DEFAULT_PREFIX,
    ):
        self.nc, self.size, self.expires = nc, size, expires
        self.subject = f"{prefix}.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self.inbox = nc.new_inbox()
        self.max_bytes = max(MAX_BYTES, 2 * nc.max_payload)
        self.numbers = itertools.count(1)
        self.reply = ""
        """The live request's reply subject ("" before the first)."""
        self.left = 0
        """Messages the live request may still deliver (0: it ended)."""
        self.due = 0.0
        """When the live request's end must have been heard (monotonic)."""
        self.messages: collections.deque[Msg] = collections.deque()
        self.arrived = asyncio.Event()
        self.refusal: Msg | None = None
        """A status that ended the live request as an error (to be raised by `take`)."""
        self.subscription: Subscription | None = None

    async def start(self) -> None:
        self.subscription = await self.nc.subscribe(f"{self.inbox}.*", cb=self._received)
        await self._ask()

    async def stop(self) -> None:
        if self.subscription is not None:
            with contextlib.suppress(ConnectionClosedError):  # gone with it
                await self.subscription.unsubscribe()
            self.subscription = None

    async def take(self, wait: float) -> list[Msg]:
        """The next batch, in the stream's order: waits up to `wait` seconds for a first
        message, then takes what has come and what the server said was on its way (up to
        `size`). Raises the server's refusal of a request (e.g. 503: no consumer leader)."""
        deadline = time.monotonic() + wait
        while not self.messages:
            await self._refused()
            now = time.monotonic()
            if self.left <= 0 or now >= self.due:
                await self._ask()
            if now >= deadline:
                return []
            await self._arrival(min(deadline, self.due) - now)
        batch = self._some(self.size)
        # The server counted what else it had for the consumer when it sent the last one.
        while len(batch) < self.size and (pending_of(batch[-1].reply) or 0) > 0:
            if not self.messages:
                if self.left <= 0:
                    await self._ask()
                if not await self._arrival(GATHER):
                    break
            batch += self._some(self.size - len(batch))
        await self._ask_if_room()
        return batch

    def _some(self, count: int) -> list[Msg]:
        taken: list[Msg] = []
        while self.messages and len(taken) < count:
            taken.append(self.messages.popleft())
        return taken

    async def _arrival(self, timeout: float) -> bool:
        """Whether a message came within `timeout` seconds (no: also when a refusal ended the
        request meanwhile)."""
        self.arrived.clear()
        if not self.messages and self.refusal is None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(timeout, 0.0)):
                    await self.arrived.wait()
        return bool(self.messages)

    async def _refused(self) -> None:
        refusal, self.refusal = self.refusal, None
        if refusal is None:
            return
        headers = refusal.headers or {}
        if headers.get(api.Header.STATUS) == api.StatusCode.CONFLICT:
            # e.g. a leadership change: the next request goes to the new leader.
            why = headers.get(api.Header.DESCRIPTION, "409")
            log.warning("pull on %s refused (%s); asking again", self.subject, why)
            await asyncio.sleep(PAUSE)
            return
        APIError.from_msg(refusal)  # raises: 503 is ServiceUnavailableError

    async def _ask(self) -> None:
        """Sends a request for what the consumer may hold (`size` in all, waiting and asked
        for); the live request, if any, is replaced (its end is no longer awaited)."""
        count = self.size - len(self.messages)
        self.reply = f"{self.inbox}.{next(self.numbers)}"
        self.left = count
        self.due = time.monotonic() + self.expires + GRACE
        request = b'{"batch":%d,"expires":%d,"max_bytes":%d}' % (
            count,
            int(self.expires * 1e9),
            self.max_bytes,
        )
        await self.nc.publish(self.subject, request, reply=self.reply)

    async def _ask_if_room(self) -> None:
        if self.left <= 0 and self.refusal is None and len(self.messages) < self.size:
            await self._ask()

    async def _received(self, msg: Msg) -> None:
        status = msg.headers.get(api.Header.STATUS) if msg.headers else None
        if status is None:  # a delivery (its subject is the event's, not the request's)
            self.messages.append(msg)
            self.left -= 1
            self.arrived.set()
            if self.left <= 0:
                await self._ask_if_room()
            return
        if msg.subject != self.reply or status == api.StatusCode.CONTROL_MESSAGE:
            return  # a past request's end, or a heartbeat
        self.left = 0
        description = msg.headers.get(api.Header.DESCRIPTION, "") if msg.headers else ""
        if status in ENDED or description in DONE:
            await self._ask_if_room()
            return
        self.refusal = msg
        self.arrived.set()


def consumer_sequence(reply: str | None) -> int | None:
    """A JetStream delivery's consumer sequence, read from its reply subject (`_delivery`);
    None for any other message."""
    delivery = _delivery(reply)
    return delivery[0] if delivery else None


def pending_of(reply: str | None) -> int | None:
    """How many more messages the consumer had for delivery when the server sent this one,
    read from its reply subject (`_delivery`); None for any other message. A message
    published meanwhile is not counted: the next request takes it."""
    delivery = _delivery(reply)
    return delivery[1] if delivery else None


def _delivery(reply: str | None) -> tuple[int, int] | None:
    """(consumer sequence, pending) of a JetStream delivery, from its reply subject
    (`$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>`,
    or with a domain and account hash after `ACK`, and a token at the end); None for any
    other message. nats-py's `Msg.metadata` builds a timestamp and three objects for it: a
    tenth of a consumer's CPU per message."""
    tokens = (reply or "").split(".")
    if len(tokens) < 9 or tokens[0] != "$JS" or tokens[1] != "ACK":
        return None
    delivered = 4 if len(tokens) == 9 else 6
    try:
        return int(tokens[delivered + 2]), int(tokens[delivered + 4])
    except (ValueError, IndexError):
        return None
