"""Hop tracing, a debug mode (`TASKENGINE_HOP_TRACE=true`) for finding where an event's time
goes: the relay stamps each message with the instant it published it (`Taskengine-Published`),
and each consumer appends, per event it handled, when it was written (the event's `at`, just
before its commit), published, received and handled (its batch's effects committed), as a CSV
line to `<data dir>/run/hops-<consumer>.csv`. `make bench` turns it on and prints the
breakdown. Off, nothing is stamped or written: the hot path pays nothing for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING

from taskengine_contracts import subjects
from taskengine_contracts.events import topic_of

if TYPE_CHECKING:
    from taskengine_runtime.bus import Delivered

COLUMNS = ("consumer", "topic", "position", "written", "published", "received", "handled")
"""One line per handled event; instants are Unix seconds."""


class HopTrace:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fresh = not path.exists()
        self.file: IO[str] = path.open("a", encoding="utf-8")
        if fresh:
            self.file.write(",".join(COLUMNS) + "\n")

    @classmethod
    def at(cls, data_dir: Path, consumer: str) -> HopTrace:
        return cls(data_dir / "run" / f"hops-{consumer}.csv")

    def record(
        self, consumer: str, batch: Sequence[Delivered], received: float, handled: float
    ) -> None:
        """Appends one line per event of a handled batch (a few KB per batch: debug only)."""
        lines = []
        for item in batch:
            headers = (item.message.headers if item.message else None) or {}
            published = headers.get(subjects.PUBLISHED_HEADER, "")
            written = item.event.at.timestamp()
            lines.append(
                f"{consumer},{topic_of(item.event)},{item.position},{written:.6f},"
                f"{published},{received:.6f},{handled:.6f}\n"
            )
        self.file.write("".join(lines))
        self.file.flush()
