"""Pacing the followers that are not on a job's way to its start."""

from __future__ import annotations

import asyncio
from contextlib import suppress
from time import monotonic


class Pacing:
    """At least `interval` seconds from the start of one batch to the start of the next
    (`EngineSettings.follow_interval` for the projector, `reaction_interval` for the scheduler and
    the notifier).

    The projector, the scheduler and the notifier gain nothing from taking each commit the
    moment it comes: under load they would handle many batches of an event or two, each with
    its own reads, commit and wake-ups, on the cores the jobs' own path needs. Paced, each
    takes what came meanwhile as one batch. After a quiet spell the first batch goes at once,
    and someone waiting for the next batch (`hurry`) ends the pause.
    """

    def __init__(self, interval: float):
        self.interval = interval
        self._began = float("-inf")
        self._hurried = asyncio.Event()

    async def wait(self) -> None:
        """Returns once `interval` has passed since the last batch began, or at once when
        hurried since."""
        pause = self._began + self.interval - monotonic()
        if pause > 0 and not self._hurried.is_set():
            await sleep(pause, self._hurried)
        self._hurried.clear()

    def hurry(self) -> None:
        """Someone waits for the next batch (a read for the read models): it goes now."""
        self._hurried.set()

    def began(self) -> None:
        """A batch begins now."""
        self._began = monotonic()


async def sleep(seconds: float, until: asyncio.Event) -> None:
    """Sleeps `seconds`, or less if `until` is set meanwhile."""
    with suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await until.wait()
