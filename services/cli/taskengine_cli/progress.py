"""A progress bar over events, with events/s and an ETA, for the long operator commands
(`replay`, `republish`) when they run on a terminal; elsewhere they print only their result."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text
from taskengine_store.store import EventStore

Advance = Callable[[int, int], None]
"""(events done, events in all)."""


class EventsPerSecond(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("-- events/s" if speed is None else f"{speed:,.0f} events/s", style="cyan")


def on_terminal() -> bool:
    return sys.stdout.isatty()


@contextmanager
def events_bar(description: str, console: Console | None = None) -> Iterator[Advance]:
    """A bar while the block runs; the block reports through the callable it gets."""
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        EventsPerSecond(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(description, total=None)

        def advance(done: int, total: int) -> None:
            progress.update(task, completed=done, total=max(total, 1))

        yield advance


def follow_relay(
    store: EventStore,
    after: int,
    advance: Advance,
    every: float = 0.5,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Reports the relay's progress from `after` to the store's head until it gets there."""
    head, tracked = store.head_and_tracked("relay")
    while True:
        advance(max(tracked - after, 0), max(head - after, 0))
        if tracked >= head:
            return
        sleep(every)
        head, tracked = store.head_and_tracked("relay")
