"""GET /health: live checks and every service's instances, from the services themselves."""

from __future__ import annotations

from taskengine_embedded import EmbeddedNats

from tests.support.system import System
from tests.support.waiting import wait_until


def test_health_reports_every_service_alive_and_job_counters(system_factory):
    system = system_factory()
    with system.client() as client:
        job = client.post("/job", json={"job": {"workflow": "noop"}}).json()["id"]
        wait_until(lambda: client.get(f"/jobs/{job}").json()["queue_state"] == "completed")

        def healthy() -> dict | None:
            report = client.get("/health").json()
            queues = report.get("queues", {})
            alive = queues and all(q["workers"] == 1 for q in queues.values())
            return report if alive and report["jobs"]["completed"] == 1 else None

        # Every service up and beating: on a busy machine a service takes long to start.
        report = wait_until(healthy, timeout=120, what="every service's heartbeat")
    assert report["databases"] == {"postgres": "OK", "nats": "OK"}
    assert set(report["queues"]) >= {"scheduler", "work", "controller", "callback", "gateway"}
    assert all(set(q) == {"workers", "working", "pending"} for q in report["queues"].values())
    assert report["jobs"]["max_jobs"] == 2 and report["jobs"]["priority_slots"] == 0
    assert report["tasks"]["processed"] == 1 and report["version"]


def test_health_is_500_with_an_error_when_nats_is_down(engine_root, database_url):
    server = EmbeddedNats(engine_root / "own-nats")  # one this test may stop
    system = System(engine_root, server.start(), database_url).start()
    try:
        with system.client() as client:
            assert client.get("/health").status_code == 200
            server.stop()
            response = client.get("/health")
        assert response.status_code == 500 and response.json()["error"].startswith("nats")
        assert "Traceback" not in response.text
    finally:
        system.stop()
        server.stop()
