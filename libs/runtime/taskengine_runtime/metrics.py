"""Prometheus metrics: every `taskengine_*` metric, defined once, and their HTTP exposition.

Each service process serves its own at `http://<host>:<TASKENGINE_METRICS_PORT>/metrics`
(`serve`); a metric a service never touches is still listed, at zero. Names follow the
Prometheus conventions: units in the name (`_seconds`, `_events`), counters end in `_total`.

The hot path stays cheap: counters and histograms are observed once per batch where the code
is batched. What is a difference between two positions (a consumer's lag) or a count of rows
(jobs by state) is not kept up to date at all but computed when scraped (`Lag`, `JobCounts`),
at most once a second however often Prometheus asks.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

SCRAPE_CACHE = 1.0
"""Seconds a value computed at scrape time is reused (a store query at most once a second)."""

# Seconds from a few milliseconds (a commit) to hours (a job's run, a queued job's wait).
_SHORT = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_LONG = (0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 86400.0)

ADMISSION_WAIT = Histogram(
    "taskengine_admission_wait_seconds",
    "How long a job waited in the queue before admission gave it a slot",
    buckets=_LONG,
)
RUN_TIME = Histogram(
    "taskengine_job_run_seconds",
    "How long an attempt ran on its executor, by how it ended",
    ["outcome"],
    buckets=_LONG,
)
COMMIT_LATENCY = Histogram(
    "taskengine_commit_seconds",
    "How long one commit (events, tracking record and rows in one transaction) took",
    buckets=_SHORT,
)
CALLBACKS = Counter(
    "taskengine_callback_deliveries_total",
    "Callback attempts made by the notifier, by outcome: delivered, failed (retried later)"
    " or given_up (the last attempt failed, or the address is refused)",
    ["outcome"],
)
CALLBACK_LATENCY = Histogram(
    "taskengine_callback_duration_seconds",
    "How long one callback attempt took, by outcome",
    ["outcome"],
    buckets=_SHORT,
)
REJECTED = Counter(
    "taskengine_rejected_messages_total",
    "Messages a consumer set aside (rejected_messages) rather than handle",
    ["consumer"],
)
LEADER = Gauge(
    "taskengine_leader",
    "1 while this instance holds its service's leader lock (admission, scheduler), else 0",
)
STALE_READS = Counter(
    "taskengine_stale_reads_total",
    "Lists, searches and counts answered before the read models held every write acknowledged"
    " before them (X-Taskengine-Stale: the projector was further behind than"
    " TASKENGINE_READ_WAIT)",
)
WEBSOCKETS = Gauge("taskengine_websockets_open", "WebSockets (/ws/tasks) open on this gateway")
FIRE_LATENESS = Histogram(
    "taskengine_scheduler_fire_lateness_seconds",
    "How long after it was due the scheduler fired a timer (a delayed job, a retry) or a"
    " scheduled task",
    ["kind"],
    buckets=_SHORT + (30.0, 60.0, 300.0),
)


class _Cached:
    """A value computed by `compute`, reused for SCRAPE_CACHE seconds (scrapes may overlap)."""

    def __init__(self, compute: Callable[[], Any]):
        self.compute = compute
        self.lock = threading.Lock()
        self.value: Any = None
        self.at = -SCRAPE_CACHE

    def get(self) -> Any:
        with self.lock:
            if time.monotonic() - self.at >= SCRAPE_CACHE:
                self.value, self.at = self.compute(), time.monotonic()
            return self.value


class Lag(Collector):
    """Events behind the store's head, per consumer (`taskengine_consumer_lag_events`) and for
    the relay (`taskengine_relay_lag_events`): the head is read when scraped, each position
    is where its follower got to in this process."""

    def __init__(self) -> None:
        self.head: _Cached | None = None
        self.consumers: dict[str, Callable[[], int | None]] = {}
        """Each consumer's position (None: it is caught up with the bus)."""
        self.relay: Callable[[], int] | None = None

    def follow_head(self, head: Callable[[], int]) -> None:
        """`head()` (blocking, called from the scrape thread) is the store's last position."""
        self.head = _Cached(head)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        consumers = GaugeMetricFamily(
            "taskengine_consumer_lag_events",
            "Events in the store past the last one this consumer handled",
            labels=["consumer"],
        )
        relay = GaugeMetricFamily(
            "taskengine_relay_lag_events", "Events in the store the relay has not published yet"
        )
        head = self._head()
        if head is not None:
            for name, position in sorted(self.consumers.items()):
                at = position()
                consumers.add_metric([name], 0 if at is None else max(head - at, 0))
            if self.relay is not None:
                relay.add_metric([], max(head - self.relay(), 0))
        yield consumers
        yield relay

    def _head(self) -> int | None:
        if self.head is None:
            return None
        try:
            return int(self.head.get())
        except Exception as error:  # the store away: no lag to tell, the scrape still answers
            log.debug("metrics: the store's head is unknown (%s)", error)
            return None


LAG = Lag()
REGISTRY.register(LAG)


class JobCounts(Collector):
    """`taskengine_jobs{state, dialect}`: jobs in the read model, counted when scraped."""

    def __init__(self) -> None:
        self.counts: _Cached | None = None

    def count_with(self, count: Callable[[], Iterable[tuple[str, str, int]]]) -> None:
        """`count()` (blocking) gives (state, dialect, jobs) rows."""
        self.counts = _Cached(lambda: list(count()))

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "taskengine_jobs",
            "Jobs in the read model by state and dialect",
            labels=["state", "dialect"],
        )
        if self.counts is not None:
            try:
                for state, dialect, jobs in self.counts.get():
                    family.add_metric([state, dialect], jobs)
            except Exception as error:
                log.debug("metrics: jobs not counted (%s)", error)
        yield family


JOBS = JobCounts()
REGISTRY.register(JOBS)

JOB_COUNTS_SQL = "SELECT state, dialect, count(*) AS jobs FROM rm_jobs GROUP BY state, dialect"


def serve(port: int, host: str = "127.0.0.1") -> bool:
    """Serves this process's metrics at http://host:port/metrics, in a thread of its own.
    A port already taken is logged, not fatal: the service's work matters more than its
    metrics. True if serving."""
    try:
        start_http_server(port, addr=host)
    except OSError as error:
        log.error("metrics: cannot listen on %s:%d (%s); serving none", host, port, error)
        return False
    log.info("metrics at http://%s:%d/metrics", host, port)
    return True
