"""`WebSocket /ws/tasks` (seed 000): every status change of the caller's work tasks.

Each message is `{"event": "task_update", "position": N, "task": {"worktask_id", "status",
...the fields that change set}}`; `position` is the event's place in the store's global order.
A client reconnecting with `?after=<position>` first gets what it missed, read from the event
store, then live updates from an ordered JetStream consumer on the job lifecycle subjects:
nothing is skipped or sent twice. The replay reads pages of `TASKENGINE_WS_REPLAY_PAGE` events
and sends each before reading the next: up to the projector's position only the events of the
client's own work tasks (named by `rm_jobs`; a job retention cleared is not replayed), then
every event after it. Credentials: the foundation's headers, or `?token=<key>` (browsers
cannot set headers on a WebSocket), which is masked in the server's log.

Close codes: 4401 no valid credentials, 4400 a malformed `after`, 4429 too many failed
attempts, or the client has `TASKENGINE_MAX_SOCKETS_PER_CLIENT` sockets open on this gateway
already (the reason says which).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from uuid import UUID

import msgspec
from litestar import WebSocket, websocket
from litestar.di import NamedDependency
from litestar.exceptions import NotAuthorizedException, WebSocketDisconnect
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from taskengine_contracts import subjects
from taskengine_contracts.events import Event, JobEvent, JobSubmitted, decode
from taskengine_core.clients import mask_secrets
from taskengine_core.dialects.worktasks import DIALECT
from taskengine_core.dialects.worktasks.view import update
from taskengine_runtime import Runtime, metrics
from taskengine_store import queries
from taskengine_store.projections import PROJECTOR
from taskengine_store.store import Position

from taskengine_gateway.auth import Client, credentials
from taskengine_gateway.limits import TooManyAttempts
from taskengine_gateway.state import GatewayState

log = logging.getLogger(__name__)

KNOWN_JOBS = 10_000
"""Jobs whose dialect a socket remembers before it forgets them all (and looks up again)."""


class _TokenMask(logging.Filter):
    """Masks `token=...` in log lines (uvicorn logs each WebSocket's path with its query)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "token=" in message.lower():
            record.msg, record.args = mask_secrets(message), ()
        return True


def mask_tokens_in_logs() -> None:
    """Installs the mask on the loggers that print request paths (idempotent)."""
    for name in ("uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _TokenMask) for f in logger.filters):
            logger.addFilter(_TokenMask())


@dataclass(frozen=True)
class _QueryCredentials:
    """`?token=<key>` (and `?client=<name>`) presented as the bearer header they stand for."""

    headers: Mapping[str, str]
    client: object = None  # the peer, for the failure limit per address


async def _client(socket: WebSocket, gateway: GatewayState) -> Client:
    _, key = credentials(socket)
    if key:
        return await gateway.authenticator.authenticate(socket)
    token = socket.query_params.get("token")
    if not token:
        raise NotAuthorizedException("missing credentials: send a key, or ?token=<key>")
    headers = {"authorization": f"Bearer {token}"}
    if forwarded := socket.headers.get("x-forwarded-for"):
        headers["x-forwarded-for"] = forwarded
    if name := socket.query_params.get("client"):
        headers["client"] = name
    query = _QueryCredentials(headers, socket.client)
    return await gateway.authenticator.authenticate(query)  # type: ignore[arg-type]


@websocket("/ws/tasks")
async def task_updates(socket: WebSocket, gateway: NamedDependency[GatewayState]) -> None:
    try:
        client = await _client(socket, gateway)
    except NotAuthorizedException as error:
        await _refuse(socket, 4401, str(error.detail))
        return
    except TooManyAttempts as error:
        await _refuse(socket, 4429, str(error.detail))
        return
    raw = socket.query_params.get("after")
    if raw is not None and not (raw.isdigit() and len(raw) <= 18):
        await _refuse(socket, 4400, "after must be a position (a whole number)")
        return
    config = gateway.runtime.config
    if not gateway.sockets.take(client.name, config.max_sockets_per_client):
        most = config.max_sockets_per_client
        await _refuse(socket, 4429, f"too many open sockets: at most {most} per client")
        return
    try:
        feed = TaskFeed(gateway.runtime, client.name, config.ws_replay_page)
        # Following the bus before the handshake completes: whatever the client does once
        # connected is seen.
        subscription = await gateway.runtime.js.subscribe(
            subjects.JOBS,
            stream=subjects.STREAM,
            ordered_consumer=True,
            deliver_policy=api.DeliverPolicy.NEW,
        )
        try:
            await socket.accept()
            with metrics.WEBSOCKETS.track_inprogress():
                await feed.serve(socket, subscription.messages, None if raw is None else int(raw))
        finally:
            await unsubscribe(gateway.runtime, subscription)
    finally:
        gateway.sockets.give_back(client.name)


async def _refuse(socket: WebSocket, code: int, reason: str) -> None:
    """Accepts only to close with a code a browser can read (a refused handshake shows none)."""
    await socket.accept()
    await socket.close(code=code, reason=reason[:120])


@dataclass
class TaskFeed:
    """One socket's updates: the client's work-task job events, each sent once, in order."""

    runtime: Runtime
    client: str
    page: int = 500
    """Events read per replay query."""
    sent: int = 0
    """Position of the last event looked at (sent or not for this client)."""
    worktask: dict[UUID, bool] = field(default_factory=dict)
    status: dict[UUID, str] = field(default_factory=dict)
    """The status last sent for each job: a change that keeps it is not news."""

    async def serve(self, socket: WebSocket, live: AsyncIterator[Msg], after: int | None) -> None:
        """Sends until the client disconnects. `live` was subscribed before the store is read:
        whatever is committed after the replay's last read is published after that, so it
        arrives live (its position tells a repeat)."""
        sending = asyncio.create_task(self._send(socket, live, after))
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

    async def _send(self, socket: WebSocket, live: AsyncIterator[Msg], after: int | None) -> None:
        if after is not None:
            await self._replay(socket, after)
        async for message in live:
            position = int((message.headers or {}).get(subjects.POSITION_HEADER, 0))
            if position <= self.sent:
                continue
            try:
                event = decode(message.data)
            except msgspec.ValidationError:
                log.warning("ws: undecodable event at %s skipped", position)
                continue
            await self._offer(socket, position, event)

    async def _replay(self, socket: WebSocket, after: int) -> None:
        """Sends what happened after `after`, one page at a time."""
        self.sent, pages = after, 0
        projected = await self.runtime.call(self.runtime.store.tracked, PROJECTOR)
        while self.sent < projected:
            pages += 1
            found = await self.runtime.call(
                _own_worktask_events, self.runtime, self.client, self.sent, projected, self.page
            )
            for item in found:
                self._remember(item.event.id, True)
                await self._offer(socket, item.position, item.event)
            if len(found) < self.page:
                self.sent = projected
        while found := await self.runtime.call(
            self.runtime.store.events_after, self.sent, self.page
        ):
            pages += 1
            for item in found:
                await self._offer(socket, item.position, item.event)
        log.info("ws: replayed %s's updates after %s in %s pages", self.client, after, pages)

    async def _offer(self, socket: WebSocket, position: int, event: Event) -> None:
        self.sent = max(self.sent, position)
        if not isinstance(event, JobEvent) or event.client != self.client:
            return
        if not await self._is_worktask(event):
            return
        changed = update(event)
        if changed is None:
            return
        if len(changed) == 1 and self.status.get(event.id) == changed["status"]:
            return
        self.status[event.id] = changed["status"]
        task = {"worktask_id": str(event.job_id), **changed}
        await socket.send_json({"event": "task_update", "position": position, "task": task})

    async def _is_worktask(self, event: JobEvent) -> bool:
        if isinstance(event, JobSubmitted):
            known = event.dialect == DIALECT
        elif (remembered := self.worktask.get(event.id)) is not None:
            return remembered
        else:
            known = await self.runtime.call(_is_worktask, self.runtime, event.id)
        self._remember(event.id, known)
        return known

    def _remember(self, job: UUID, worktask: bool) -> None:
        if job not in self.worktask and len(self.worktask) >= KNOWN_JOBS:
            self.worktask.clear()
            self.status.clear()
        self.worktask[job] = worktask


def _own_worktask_events(
    runtime: Runtime, client: str, after: int, upto: int, limit: int
) -> list[Position]:
    """The events of `client`'s work tasks in (after, upto], at most `limit` of them."""
    return queries.events_of_jobs(runtime.store, client, DIALECT, after, upto, limit)


def _is_worktask(runtime: Runtime, job: UUID) -> bool:
    dialect = queries.job_dialect(runtime.store, job)
    if dialect is not None:
        return dialect == DIALECT
    # Not projected yet (or cleared by retention): the submission itself says.
    first = runtime.store.streams([job], version=1)[job]
    return bool(first) and isinstance(first[0], JobSubmitted) and first[0].dialect == DIALECT


async def until_closed(socket: WebSocket) -> None:
    """Reads (and ignores) what the client sends until it disconnects."""
    with contextlib.suppress(WebSocketDisconnect):
        while True:
            await socket.receive_data(mode="text")


async def unsubscribe(runtime: Runtime, subscription: JetStreamContext.PushSubscription) -> None:
    """Stops delivery and removes the socket's consumer (the server would, once idle)."""
    name = None
    with contextlib.suppress(Exception):
        name = (await subscription.consumer_info()).name
    with contextlib.suppress(Exception):
        await subscription.unsubscribe()
    if name:
        with contextlib.suppress(Exception):
            await runtime.js.delete_consumer(subjects.STREAM, name)
