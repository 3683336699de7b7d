"""`WebSocket /ui/ws`: the dashboard's live updates, one message per job lifecycle event and
callback delivery attempt the caller may see (its own jobs'; an admin's: every job's).

The page sends its credentials as the socket's first message, `{"client": ..., "key": ...}`,
so the key never appears in a URL (or a log that records URLs); until then, for at most
`SIGN_IN_SECONDS`, nothing is sent. Then the socket follows the job and callback subjects on
an ordered JetStream consumer (as `/ws/tasks` does) and says `{"type": "ready"}`: what
happened before that the page reads over HTTP. Each update is `{"type": "job", "position",
"job_id", "client", "event", "state"}`, `state` being the state the event leaves the job in,
or `{"type": "callback", "position", "job_id", "client", "event"}`; the page refreshes what it
shows from them. A callback event names its job, not its client: the socket remembers the
clients of the jobs it saw (`KNOWN_JOBS`) and asks the read model about the others.

Close codes as `/ws/tasks`: 4401 no valid credentials, 4429 too many failed attempts or too
many sockets (`TASKENGINE_MAX_SOCKETS_PER_CLIENT`, counted with `/ws/tasks`), 4400 a first
message that is not the credentials.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec
from litestar import WebSocket, websocket
from litestar.di import NamedDependency
from litestar.exceptions import NotAuthorizedException, WebSocketDisconnect
from nats.aio.msg import Msg
from nats.js import api
from taskengine_contracts import subjects
from taskengine_contracts.events import (
    CallbackAttemptFailed,
    CallbackDelivered,
    Event,
    JobEvent,
    decode,
    topic_of,
)
from taskengine_core.jobs import state_after
from taskengine_runtime import Runtime, metrics
from taskengine_store import queries

from taskengine_gateway.auth import Client
from taskengine_gateway.dialects.worktasks_ws import unsubscribe, until_closed
from taskengine_gateway.limits import TooManyAttempts
from taskengine_gateway.state import GatewayState

log = logging.getLogger(__name__)

SIGN_IN_SECONDS = 10.0
MAX_SIGN_IN_BYTES = 4096
KNOWN_JOBS = 10_000
"""Jobs whose client a socket remembers before it forgets them all (and looks up again)."""


class SignIn(msgspec.Struct, forbid_unknown_fields=True):
    client: str
    key: str


@dataclass(frozen=True)
class _SignedIn:
    """The first message's credentials presented as the headers they stand for."""

    headers: Mapping[str, str]
    client: object = None  # the peer, for the failure limit per address


class Refused(Exception):
    def __init__(self, code: int, reason: str):
        super().__init__(reason)
        self.code, self.reason = code, reason


async def _sign_in(socket: WebSocket, gateway: GatewayState) -> Client:
    try:
        text = await asyncio.wait_for(socket.receive_text(), SIGN_IN_SECONDS)
    except TimeoutError:
        raise Refused(4401, "no credentials: send {client, key} first") from None
    if len(text) > MAX_SIGN_IN_BYTES:
        raise Refused(4400, "the first message must be {client, key}")
    try:
        given = msgspec.json.decode(text, type=SignIn)
    except msgspec.DecodeError:
        raise Refused(4400, "the first message must be {client, key}") from None
    headers = {"client": given.client, "api-key": given.key}
    if forwarded := socket.headers.get("x-forwarded-for"):
        headers["x-forwarded-for"] = forwarded
    signed_in = _SignedIn(headers, socket.client)
    try:
        return await gateway.authenticator.authenticate(signed_in)  # type: ignore[arg-type]
    except NotAuthorizedException as error:
        raise Refused(4401, str(error.detail)) from None
    except TooManyAttempts as error:
        raise Refused(4429, str(error.detail)) from None


@websocket("/ui/ws")
async def dashboard_updates(socket: WebSocket, gateway: NamedDependency[GatewayState]) -> None:
    await socket.accept()
    try:
        client = await _sign_in(socket, gateway)
    except (Refused, WebSocketDisconnect) as error:
        if isinstance(error, Refused):
            await socket.close(code=error.code, reason=error.reason[:120])
        return
    most = gateway.runtime.config.max_sockets_per_client
    if not gateway.sockets.take(client.name, most):
        await socket.close(code=4429, reason=f"too many open sockets: at most {most} per client")
        return
    try:
        subscription = await gateway.runtime.js.subscribe(
            subjects.JOBS,
            stream=subjects.STREAM,
            ordered_consumer=True,
            deliver_policy=api.DeliverPolicy.NEW,
            config=api.ConsumerConfig(filter_subjects=[subjects.JOBS, subjects.CALLBACKS]),
        )
        try:
            await socket.send_json({"type": "ready", "client": client.name, "admin": client.admin})
            with metrics.WEBSOCKETS.track_inprogress():
                feed = Feed(gateway.runtime, client)
                await feed.serve(socket, subscription.messages)
        finally:
            await unsubscribe(gateway.runtime, subscription)
    finally:
        gateway.sockets.give_back(client.name)


@dataclass
class Feed:
    """One socket's updates: the events of the jobs its client may see."""

    runtime: Runtime
    client: Client
    owners: dict[int, str | None] = field(default_factory=dict)
    """job number -> its client (None: not known to the read model)"""

    async def serve(self, socket: WebSocket, live: AsyncIterator[Msg]) -> None:
        """Sends until the client disconnects."""
        sending = asyncio.create_task(self._send(socket, live))
        closing = asyncio.create_task(until_closed(socket))
        try:
            await asyncio.wait({sending, closing}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sending, closing):
                task.cancel()
            for task in (sending, closing):
                with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect, Exception):
                    await task
            with contextlib.suppress(Exception):
                await socket.close()

    async def _send(self, socket: WebSocket, live: AsyncIterator[Msg]) -> None:
        async for message in live:
            position = int((message.headers or {}).get(subjects.POSITION_HEADER, 0))
            try:
                event = decode(message.data)
            except msgspec.ValidationError:
                log.warning("ui ws: undecodable event at %s skipped", position)
                continue
            if isinstance(event, JobEvent):
                self._remember(event.job_id, event.client)
                owner: str | None = event.client
            elif isinstance(event, (CallbackDelivered, CallbackAttemptFailed)):
                owner = await self._owner(event.job_id)
            else:
                continue
            update = update_for(event, position, owner, self.client)
            if update is not None:
                await socket.send_json(update)

    async def _owner(self, job_id: int) -> str | None:
        if job_id not in self.owners:
            owner = await self.runtime.call(queries.job_client, self.runtime.store, job_id)
            self._remember(job_id, owner)
        return self.owners[job_id]

    def _remember(self, job_id: int, owner: str | None) -> None:
        if job_id not in self.owners and len(self.owners) >= KNOWN_JOBS:
            self.owners.clear()
        self.owners[job_id] = owner


def update_for(
    event: Event, position: int, owner: str | None, client: Client
) -> dict[str, Any] | None:
    """The message `client` gets for an event of a job of `owner`; None if it may not see it."""
    if owner is None or not (client.admin or owner == client.name):
        return None
    if isinstance(event, JobEvent):
        return {
            "type": "job",
            "position": position,
            "job_id": event.job_id,
            "client": owner,
            "event": topic_of(event),
            "state": str(state_after(event)),
        }
    if isinstance(event, (CallbackDelivered, CallbackAttemptFailed)):
        return {
            "type": "callback",
            "position": position,
            "job_id": event.job_id,
            "client": owner,
            "event": topic_of(event),
        }
    return None
