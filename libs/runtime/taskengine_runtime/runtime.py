"""What every service process shares: configuration, logging, the store, the bus, settings."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol, TypeVar

import msgspec
import uvloop
from eventsourcing.persistence import Tracking
from nats.aio.client import Client
from nats.js import JetStreamContext
from taskengine_contracts import subjects
from taskengine_contracts.events import Heartbeat, SettingChanged
from taskengine_core.config import EngineSettings, engine_settings
from taskengine_core.confinement import not_dumpable
from taskengine_core.ids import SETTINGS_STREAM
from taskengine_core.settings import RuntimeSettings
from taskengine_core.workflows import allow_inline, load_registry
from taskengine_store.commits import CHANNEL, WAITING, listen_to_commits
from taskengine_store.rejected import Rejected, record
from taskengine_store.store import Conflict, EventStore, Statement

from taskengine_runtime import metrics
from taskengine_runtime.bus import Reconnects, StreamError, connect, ensure_stream
from taskengine_runtime.hops import HopTrace
from taskengine_runtime.logs import configure_logging
from taskengine_runtime.threads import Threads

T = TypeVar("T")
SWITCH_INTERVAL = 0.0005
HEARTBEAT = 2.0
ENDS_KEPT = 4096
"""Commits whose last position a service remembers (`Runtime.ends_a_commit`)."""
log = logging.getLogger(__name__)


class Unsaved(Protocol):
    """What a consumer keeps in its own tables but writes with its next commit rather than
    after every batch (admission's queue rows of a job that stopped): whatever records its
    position writes them too, so that its tables and its position never disagree."""

    def rows(self) -> list[Statement]:
        """The statements that write what is unsaved (none: nothing is)."""
        ...

    def saved(self) -> None:
        """They were committed."""
        ...


@dataclass
class Runtime:
    name: str
    config: EngineSettings
    store: EventStore
    nc: Client
    js: JetStreamContext
    settings: RuntimeSettings = field(default_factory=RuntimeSettings)
    on_stop: Callable[[], None] | None = None
    """How SIGTERM stops this service gracefully; by default its main task is cancelled."""
    working: Callable[[], int] = lambda: 0
    """What this instance has in hand, for its heartbeat (e.g. running attempts)."""
    reconnects: Reconnects = field(default_factory=Reconnects)
    """The bus connection's reconnects (a restarted NATS may have lost its unsynced tail)."""
    threads: Threads = field(default_factory=Threads)
    """Where `call` runs blocking store work."""
    _ends_heard: dict[int, None] = field(default_factory=dict)
    """The last positions of the last `ENDS_KEPT` commits heard, oldest first (commits are
    announced in the order they committed, so the newest is the store's head as heard)."""
    _hearing: asyncio.Task[None] | None = None
    _waited_for: Callable[[str], None] | None = None
    _told: Callable[[str], None] | None = None
    _news: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when a commit is heard."""

    async def heartbeat_forever(self) -> None:
        """Says this instance is alive every HEARTBEAT seconds (what /health counts)."""
        subject = subjects.heartbeat_subject(self.name)
        while True:
            beat = Heartbeat(
                service=self.name,
                instance=self.instance,
                working=self.working(),
                at=datetime.now(UTC),
            )
            try:
                await self.nc.publish(subject, msgspec.json.encode(beat))
            except Exception as error:  # the bus reconnects by itself; try again next beat
                log.debug("heartbeat not sent: %s", error)
            await asyncio.sleep(HEARTBEAT)

    @property
    def instance(self) -> str:
        return self.config.instance or f"{self.name}-{os.uname().nodename}"

    async def call(self, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
        """Runs blocking store work off the event loop: one thread hop per batch."""
        return await self.threads.call(fn, *args, **kwargs)

    def tracker(
        self, name: str, fence: Statement | None = None, unsaved: Unsaved | None = None
    ) -> Callable[[int], Awaitable[None]]:
        """Records a consumer's position on its own, for batches that committed nothing. A
        leader passes its lock's fence: a process that lost the lock must not move the
        position. What the consumer left `unsaved` goes in the same transaction."""

        async def track(position: int) -> None:
            if position <= await self.call(self.store.tracked, name):
                return
            rows = unsaved.rows() if unsaved is not None else []
            if fence is None and not rows:
                await self.call(self.store.track, name, position)
            else:
                statements = [fence, *rows] if fence is not None else rows
                tracking = Tracking(name, position)
                await self.call(self.store.commit, (), tracking, statements, durable=False)
            if unsaved is not None:
                unsaved.saved()

        return track

    def rejecter(
        self,
        name: str,
        fence: Statement | None = None,
        track: bool = True,
        unsaved: Unsaved | None = None,
    ) -> Callable[[list[Rejected], int | None], Awaitable[None]]:
        """Records messages a consumer set aside; with a position, its tracking record moves
        there in the same transaction (behind the leader's fence, and with what the consumer
        left `unsaved`, as for `tracker`). A partitioned service (`track` False) tracks its
        partitions as its batches go on."""

        async def reject(rejected: list[Rejected], position: int | None) -> None:
            statements = [record(r) for r in rejected]
            if fence is not None:
                statements.insert(0, fence)
            tracking = None if position is None or not track else Tracking(name, position)
            rows = unsaved.rows() if unsaved is not None and tracking is not None else []
            try:
                await self.call(self.store.commit, (), tracking, [*statements, *rows])
            except Conflict as conflict:
                if conflict.stale:
                    raise
                log.info("%s: position %s was already handled", name, position)
                return
            if rows and unsaved is not None:
                unsaved.saved()

        return reject

    def hop_trace(self, consumer: str) -> HopTrace | None:
        """Where `consumer` traces its hops, when the debug setting is on."""
        return HopTrace.at(self.config.data_dir, consumer) if self.config.hop_trace else None

    async def latest(self) -> int:
        """The store's last position."""
        return await self.call(self.store.max_position)

    def heard(self) -> int:
        """The last position the store's commits announced (their NOTIFY): a lower bound of
        its head, known without a round trip; 0 until the first. Listens from the first call
        on."""
        if self._hearing is None:
            also = {WAITING: self._waited_for} if self._waited_for else None
            channel = self.store.relay_channel if self._told is not None else CHANNEL
            self._hearing = asyncio.create_task(
                listen_to_commits(self.config.database_url, self._heard, self.name, also, channel)
            )
        return self._last_heard()

    def when_waited_for(self, follower: str, hurry: Callable[[], None]) -> None:
        """Calls `hurry` whenever a reader waits for `follower` to catch up with the store
        (`EventStore.head_and_tracked(..., waiting=True)`); before the first `heard`."""
        assert self._hearing is None, "set before listening"
        self._waited_for = lambda name: hurry() if name == follower else None

    def when_committed(self, told: Callable[[str], None]) -> None:
        """Tells `told` the payload of each commit heard on the relay's channel (its last
        position, and the events of a small one: `store.carried`), which it then listens to
        instead of the commits' own; before the first `heard`. For the relay only."""
        assert self._hearing is None, "set before listening"
        self._told = told

    async def news(self, past: int, timeout: float) -> None:
        """Returns once a commit that ends past `past` is heard, or after `timeout` (a NOTIFY
        sent while the listener reconnects is lost: whoever follows the log reads it then
        anyway). A follower that holds everything heard waits here instead of reading the
        log to find it has nothing new."""
        self.heard()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while self._last_heard() <= past:
                    self._news.clear()
                    await self._news.wait()

    def _last_heard(self) -> int:
        return next(reversed(self._ends_heard), 0)

    def ends_a_commit(self, position: int) -> bool:
        """Whether `position` was heard to be the last of its commit (False: not known)."""
        return position in self._ends_heard

    def _heard(self, payload: str) -> None:
        last = payload.partition("\n")[0]
        if not last.isdigit():  # a NOTIFY without a position (not a commit) tells nothing
            return
        self._ends_heard[int(last)] = None
        if self._told is not None:
            self._told(payload)
        self._news.set()
        if len(self._ends_heard) > ENDS_KEPT:
            del self._ends_heard[next(iter(self._ends_heard))]

    async def load_settings(self) -> None:
        events = await self.call(self.store.stream, SETTINGS_STREAM)
        self.settings = RuntimeSettings.fold(e for e in events if isinstance(e, SettingChanged))

    def apply(self, event: object) -> bool:
        """Applies a settings event; True if it was one."""
        if isinstance(event, SettingChanged):
            self.settings.apply(event)
            log.info("%s: setting %s = %s", self.name, event.name, event.value)
            return True
        return False


async def _open_store(name: str, config: EngineSettings) -> EventStore:
    """The event store, once PostgreSQL answers: a service started while it is restarting
    waits for it here rather than exiting (which would only pile up restarts)."""
    delay = 0.2
    while True:
        store = None
        try:
            store = await asyncio.to_thread(
                EventStore, config.database_url, config.pool_size, config.create_tables
            )
            await asyncio.to_thread(store.max_position)
            return store
        except Exception as error:
            if store is not None:
                store.close()
            log.warning("%s: waiting for the database (%s)", name, str(error).splitlines()[0])
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


def run_service(name: str, main: Callable[[Runtime], Awaitable[None]]) -> None:
    """Entry point of a service process: wire everything, run `main`, stop on SIGTERM/SIGINT."""
    config = engine_settings()
    instance = config.instance or f"{name}-{os.uname().nodename}"
    configure_logging(config.log_level, config.log_format, name, instance)
    # The store thread re-takes the GIL after each database round trip; with the default
    # 5 ms switch interval a busy event loop makes every commit wait ~5 ms per round trip.
    sys.setswitchinterval(SWITCH_INTERVAL)
    # Every PostgreSQL connection of the process says whose it is (pg_stat_activity).
    os.environ.setdefault("PGAPPNAME", f"taskengine-{name}")
    if not config.database_url or not config.nats_url:
        sys.exit(f"{name}: TASKENGINE_DATABASE_URL and TASKENGINE_NATS_URL must be set")
    load_registry(config.workflows_dir)  # the operators' workflows, next to the built-ins
    allow_inline(config.inline_steps)
    not_dumpable()  # no process of our user (a step) may read our environment's secrets

    async def start() -> None:
        if config.metrics_port:  # answers from the start, even while the store is away
            metrics.serve(config.metrics_port, config.metrics_host)
        store = await _open_store(name, config)
        reconnects = Reconnects()
        nc, js = await connect(config.nats_url, name, reconnects, **config.nats_options())
        try:
            await ensure_stream(js, config.nats_replicas)
        except StreamError as error:
            await nc.close()
            store.close()
            sys.exit(f"{name}: {error}")
        runtime = Runtime(name, config, store, nc, js, reconnects=reconnects)
        store.observe_commit = metrics.COMMIT_LATENCY.observe
        metrics.LAG.follow_head(store.max_position)
        await runtime.load_settings()
        task = asyncio.current_task()
        assert task is not None

        def stop() -> None:
            (runtime.on_stop or task.cancel)()

        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop)
        log.info("%s started (instance %s)", name, runtime.instance)
        heartbeat = asyncio.create_task(runtime.heartbeat_forever())
        try:
            await main(runtime)
        except asyncio.CancelledError:
            log.info("%s stopping", name)
        finally:
            heartbeat.cancel()
            await nc.close()  # handled batches are acked; the rest is redelivered
            runtime.threads.close()  # the store work in hand ends before the store closes
            store.close()

    try:
        uvloop.run(start())
    except SystemExit as leaving:
        if isinstance(leaving.code, str):  # said as a log record (a JSON line where asked)
            log.critical(leaving.code)
            raise SystemExit(1) from None
        raise
