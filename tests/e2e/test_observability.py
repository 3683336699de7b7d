"""Operating the system: each service's Prometheus metrics, and logs as JSON lines.

One system (`taskengine up`, logging JSON) runs jobs; every service's /metrics is scraped and
parsed as Prometheus parses it, and every line each service logged must be a JSON object.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from taskengine_contracts import subjects
from taskengine_contracts.events import JobSubmitted

from tests.support.garbage import garbage_for, publish_garbage
from tests.support.receiver import CallbackReceiver
from tests.support.system import ADMIN, OTHER, WEBHOOK_KEY, System, running_system
from tests.support.waiting import wait_until
from tests.support.worktask_clients import socket

SERVICES = ("gateway", "relay", "projector", "admission", "scheduler", "dispatcher", "notifier")
JOBS = 3


@pytest.fixture(scope="module")
def system(postgres_url) -> Iterator[System]:
    with running_system(postgres_url, "observe", env={"TASKENGINE_LOG_FORMAT": "json"}) as system:
        yield system


def metrics_urls(system: System) -> dict[str, str]:
    """Each service's metrics URL, as `taskengine up` wrote them down."""
    endpoints = json.loads((system.data_dir / "run" / "endpoints.json").read_text())
    return endpoints["metrics"]


def scrape(url: str) -> list[Sample]:
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return [s for family in text_string_to_metric_families(response.text) for s in family.samples]


def families(url: str) -> set[str]:
    text = httpx.get(url, timeout=10).text
    return {family.name for family in text_string_to_metric_families(text)}


def value(samples: list[Sample], name: str, **labels: str) -> float:
    """The sum of `name`'s samples with `labels` (0 if none)."""
    return sum(
        s.value
        for s in samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def test_every_service_serves_its_metrics_and_they_move_with_the_work(system):
    urls = metrics_urls(system)
    assert set(urls) == set(SERVICES)
    assert len({httpx.URL(u).port for u in urls.values()}) == len(SERVICES)
    banner = wait_until(lambda: "Ctrl-C" in system.log() and system.log(), what="the banner")
    for service, url in urls.items():  # what `taskengine up` printed
        assert re.search(rf"^ +{service} +{httpx.URL(url).port}$", banner, re.M), service
    shared = {
        "taskengine_commit_seconds",
        "taskengine_consumer_lag_events",
        "taskengine_relay_lag_events",
        "taskengine_rejected_messages",
        "taskengine_jobs",
    }
    own = {
        "gateway": {"taskengine_websockets_open"},
        "admission": {"taskengine_admission_wait_seconds"},
        "dispatcher": {"taskengine_job_run_seconds"},
        "notifier": {"taskengine_callback_deliveries", "taskengine_callback_duration_seconds"},
        "scheduler": {"taskengine_scheduler_fire_lateness_seconds"},
    }
    for service, url in urls.items():
        missing = (shared | own.get(service, set())) - families(url)
        assert not missing, f"{service} lacks {missing}"

    before = {service: scrape(url) for service, url in urls.items()}
    with CallbackReceiver() as receiver, system.client() as client:
        ids = []
        for _ in range(JOBS):
            body = {"job": {"workflow": "echo"}, "parameters": {"rest_endpoints": [receiver.url]}}
            accepted = client.post("/job", json=body)
            assert accepted.status_code == 200, accepted.text
            ids.append(accepted.json()["id"])
        due = datetime.now(UTC) + timedelta(seconds=1)  # held by the scheduler until then
        run_at = due.strftime("%Y-%m-%dT%H:%M:%S.") + f"{due.microsecond // 1000:03d}"
        later = client.post("/job", json={"job": {"workflow": "echo"}, "run_at": run_at})
        assert later.status_code == 200, later.text
        ids.append(later.json()["id"])

        def done() -> bool:
            return all(client.get(f"/jobs/{i}").json()["queue_state"] == "completed" for i in ids)

        wait_until(done, timeout=60, what="the jobs to complete")
        wait_until(lambda: len(receiver.received) == 4 * JOBS, what="every callback")

    def moved(service: str, name: str, **labels: str) -> float:
        return value(scrape(urls[service]), name, **labels) - value(before[service], name, **labels)

    # Counted from the read model when scraped (cached a second): wait for the projection.
    wait_until(
        lambda: (
            moved("gateway", "taskengine_jobs", state="succeeded", dialect="taskengine") == JOBS + 1
        ),
        what="the gateway to count the succeeded jobs",
    )
    assert moved("admission", "taskengine_admission_wait_seconds_count") == JOBS + 1
    assert moved("dispatcher", "taskengine_job_run_seconds_count", outcome="succeeded") == JOBS + 1
    assert moved("scheduler", "taskengine_scheduler_fire_lateness_seconds_count", kind="timer") == 1
    delivered = {"outcome": "delivered"}  # counted once recorded, after the receiver has it
    wait_until(
        lambda: moved("notifier", "taskengine_callback_deliveries_total", **delivered) == 4 * JOBS,
        what="the notifier to count the deliveries",
    )
    assert moved("notifier", "taskengine_callback_duration_seconds_count", **delivered) == 4 * JOBS
    assert moved("notifier", "taskengine_callback_deliveries_total", outcome="failed") == 0
    for service in ("admission", "dispatcher", "notifier", "projector", "scheduler"):
        assert moved(service, "taskengine_commit_seconds_count") > 0, service

    # Lag: every follower catches up with the store's head once the work is done.
    for service in ("admission", "scheduler"):  # the one instance of each leads
        assert value(scrape(urls[service]), "taskengine_leader") == 1, service
    assert value(scrape(urls["dispatcher"]), "taskengine_leader") == 0

    wait_until(lambda: value(scrape(urls["relay"]), "taskengine_relay_lag_events") == 0)
    for service in ("projector", "admission", "dispatcher", "notifier"):
        samples = scrape(urls[service])
        assert [s.labels["consumer"] for s in samples if s.name.endswith("_lag_events")] == [
            service
        ]
        wait_until(
            lambda s=service: value(scrape(urls[s]), "taskengine_consumer_lag_events") == 0,
            what=f"{service} to catch up",
        )


def test_set_aside_messages_are_counted_per_consumer(system):
    url = metrics_urls(system)["admission"]
    before = value(scrape(url), "taskengine_rejected_messages_total", consumer="admission")
    subject = subjects.subject_for(JobSubmitted)
    sent = publish_garbage(system.nats_url, on=[subject])
    assert sent == len(garbage_for(subject))
    wait_until(
        lambda: (
            value(scrape(url), "taskengine_rejected_messages_total", consumer="admission")
            == before + sent
        ),
        what="admission to count what it set aside",
    )


def test_open_websockets_are_a_gauge_on_the_gateway(system):
    url = metrics_urls(system)["gateway"]
    assert value(scrape(url), "taskengine_websockets_open") == 0
    with socket(system, ADMIN[1]), socket(system, OTHER[1]):
        wait_until(lambda: value(scrape(url), "taskengine_websockets_open") == 2)
    wait_until(lambda: value(scrape(url), "taskengine_websockets_open") == 0)


def test_json_logs_are_one_object_per_line_with_context_and_no_keys(system):
    with system.client() as client:  # a failure, logged with its job and client
        failing = client.post("/job", json={"job": {"workflow": "fail"}})
        assert failing.status_code == 200, failing.text
        job_id = failing.json()["id"]

    def records(service: str) -> list[dict]:
        lines = (system.data_dir / "logs" / f"{service}.log").read_text().splitlines()
        parsed = []
        for line in lines:
            try:
                parsed.append(json.loads(line))
            except json.JSONDecodeError:
                raise AssertionError(
                    f"{service} logged a line that is not JSON: {line!r}"
                ) from None
        return parsed

    failures = wait_until(
        lambda: [r for r in records("dispatcher") if r.get("job_id") == job_id],
        what="the failure logged with its job",
    )
    assert failures[0]["client"] == ADMIN[0] and failures[0]["level"] == "WARNING"

    fields = {"time", "level", "service", "instance", "logger", "message"}
    for service in SERVICES:
        logged = records(service)
        assert logged, f"{service} logged nothing"
        for record in logged:
            assert isinstance(record, dict) and fields <= set(record), record
            assert record["service"] == service and record["instance"] == f"{service}-0"
            datetime.fromisoformat(record["time"])
        text = (system.data_dir / "logs" / f"{service}.log").read_text()
        assert ADMIN[1] not in text and OTHER[1] not in text and WEBHOOK_KEY not in text
