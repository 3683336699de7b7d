"""The metrics computed when scraped (lag, jobs by state) and the JSON log lines."""

from __future__ import annotations

import io
import json
import logging
import socket
import sys

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from taskengine_runtime import metrics
from taskengine_runtime.logs import JsonFormatter, configure_logging, context


def scraped(collector) -> dict[tuple[str, tuple], float]:  # type: ignore[no-untyped-def]
    """What Prometheus would read from `collector`: (sample name, labels) -> value."""
    registry = CollectorRegistry()
    registry.register(collector)
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_lag_is_the_heads_distance_from_each_follower():
    lag = metrics.Lag()
    positions = {"admission": 90, "projector": 100}
    lag.follow_head(lambda: 100)
    lag.consumers["admission"] = lambda: positions["admission"]
    lag.consumers["projector"] = lambda: positions["projector"]
    lag.consumers["notifier"] = lambda: None  # nothing left on the bus for it
    lag.relay = lambda: 97
    assert scraped(lag) == {
        ("taskengine_consumer_lag_events", (("consumer", "admission"),)): 10,
        ("taskengine_consumer_lag_events", (("consumer", "notifier"),)): 0,
        ("taskengine_consumer_lag_events", (("consumer", "projector"),)): 0,
        ("taskengine_relay_lag_events", ()): 3,
    }


def test_without_the_stores_head_the_scrape_answers_with_no_lag():
    lag = metrics.Lag()

    def away() -> int:
        raise ConnectionError("the store is away")

    lag.follow_head(away)
    lag.consumers["admission"] = lambda: 5
    assert scraped(lag) == {}


def test_jobs_are_counted_by_state_and_dialect_once_per_cache_period(monkeypatch):
    counted = []

    def count() -> list[tuple[str, str, int]]:
        counted.append(1)
        return [("succeeded", "taskengine", 3), ("queued", "worktasks", 1)]

    monkeypatch.setattr(metrics, "SCRAPE_CACHE", 3600.0)
    jobs = metrics.JobCounts()
    assert scraped(jobs) == {}  # not counting anything: a service other than the gateway
    jobs.count_with(count)
    first, second = scraped(jobs), scraped(jobs)
    assert (
        first
        == second
        == {
            ("taskengine_jobs", (("dialect", "taskengine"), ("state", "succeeded"))): 3,
            ("taskengine_jobs", (("dialect", "worktasks"), ("state", "queued"))): 1,
        }
    )
    assert len(counted) == 1
    monkeypatch.setattr(metrics, "SCRAPE_CACHE", 0.0)
    scraped(jobs)
    assert len(counted) == 2


def record(message: str, **extra: object) -> logging.LogRecord:
    made = logging.LogRecord("taskengine_x", logging.ERROR, __file__, 1, message, (), None)
    made.__dict__.update(extra)
    return made


def test_a_json_line_has_the_fields_and_only_the_known_context():
    formatter = JsonFormatter("dispatcher", "dispatcher-0")
    line = formatter.format(
        record("job 7 failed", **context(job_id=7, client="acme", position=None), api_key="k")
    )
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed.pop("time").endswith("+00:00")
    assert parsed == {
        "level": "ERROR",
        "service": "dispatcher",
        "instance": "dispatcher-0",
        "logger": "taskengine_x",
        "message": "job 7 failed",
        "job_id": 7,
        "client": "acme",
    }


def test_a_log_context_names_only_known_fields():
    with pytest.raises(ValueError, match="api_key"):
        context(job_id=1, api_key="secret")


def test_json_logging_writes_exceptions_into_the_line(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    monkeypatch.setattr("sys.excepthook", sys.excepthook)  # restored after the test
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging("INFO", "json", "relay", "relay-0")
        try:
            raise RuntimeError("boom\nsecond line")
        except RuntimeError:
            logging.getLogger("taskengine_relay").exception("failed", extra=context(position=5))
    finally:
        root.handlers, root.level = saved[0], saved[1]
        logging.captureWarnings(False)
    (line,) = stream.getvalue().splitlines()
    parsed = json.loads(line)
    assert parsed["position"] == 5 and parsed["service"] == "relay"
    assert "RuntimeError: boom" in parsed["exception"]


def test_a_taken_metrics_port_is_logged_and_the_service_goes_on(caplog):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with caplog.at_level(logging.ERROR):
            assert metrics.serve(port) is False
    assert f"cannot listen on 127.0.0.1:{port}" in caplog.text
