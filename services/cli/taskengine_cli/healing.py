"""The servers `taskengine up` started itself, brought back when they die.

A dead nats-server or PostgreSQL is started again on the same port with the same data dir
(the URLs the services hold stay right): PostgreSQL recovers from its WAL, JetStream from its
store. A restart that fails is retried with a doubling delay, and every step is logged.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

from taskengine_embedded import EmbeddedNats, EmbeddedPostgres

FIRST_DELAY = 0.5
MAX_DELAY = 30.0
STABLE_AFTER = 60.0
"""A server up this long counts as healthy again: its next death restarts it promptly."""


def say(message: str) -> None:
    print(f"taskengine: {message}", file=sys.stderr, flush=True)


@dataclass
class WatchedServer:
    server: EmbeddedNats | EmbeddedPostgres
    delay: float = FIRST_DELAY
    started: float = 0.0
    down_since: float | None = None
    next_start: float = 0.0

    @property
    def name(self) -> str:
        return self.server.name

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def noticed_death(self, now: float) -> bool:
        """True once when the server has just been found dead; schedules its restart."""
        code = self.server.died()
        if code is None:
            return False
        if now - self.started > STABLE_AFTER:
            self.delay = FIRST_DELAY
        self.down_since, self.next_start = now, now + self.delay
        say(
            f"{self.name} exited ({_exit(code)}); restarting it in {self.delay:.1f}s on port"
            f" {self.server.port} with data dir {self.server.data_dir}"
            f" (log: {self.server.log_path})"
        )
        return True

    def restart_if_due(self, now: float) -> bool:
        """Starts a dead server once its delay is over; True if it is back."""
        if self.down_since is None or now < self.next_start:
            return False
        try:
            self.server.start()
        except Exception as error:  # whatever it was, the supervisor goes on and tries again
            self.delay = min(self.delay * 2, MAX_DELAY)
            self.next_start = time.monotonic() + self.delay
            say(f"{self.name} did not start again ({error}); next try in {self.delay:.1f}s")
            return False
        back = time.monotonic()
        say(
            f"{self.name} is back on port {self.server.port} (pid {self.server.pid}),"
            f" {back - self.down_since:.1f}s after it died"
        )
        self.delay = min(self.delay * 2, MAX_DELAY)  # reset once it stays up STABLE_AFTER
        self.started, self.down_since = back, None
        return True


def _exit(code: int) -> str:
    return f"killed by signal {-code}" if code < 0 else f"code {code}"
