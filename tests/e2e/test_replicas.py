"""`TASKENGINE_REPLICAS`: several gateways behind the one port, standby admission controllers
and schedulers, dispatchers and notifiers sharing the work by partitions; the guarantees hold
across them, and kill -9 of any one replica under load loses and duplicates nothing, starts no
attempt twice and keeps each job's callbacks in order."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import httpx
import pytest

from tests.e2e.test_crash_safety import submitted_while_killing
from tests.e2e.test_observability import metrics_urls, scrape, value
from tests.support.audit import audited_when_final
from tests.support.receiver import CallbackReceiver
from tests.support.system import ADMIN, BIN, System, running_system
from tests.support.waiting import wait_until

REPLICAS = "gateway=2,admission=2,scheduler=2,dispatcher=2,notifier=2"
HEADERS = {"client": ADMIN[0], "api-key": ADMIN[1]}


@pytest.fixture(scope="module")
def system(postgres_url) -> Iterator[System]:
    with running_system(postgres_url, "replicas", env={"TASKENGINE_REPLICAS": REPLICAS}) as system:
        with system.client() as client:
            for name, value in (("max_jobs", 10), ("retry_delay", 0), ("retry_limit", 5)):
                response = client.post("/settings", json={"name": name, "setting": value})
                assert response.status_code == 200, response.text
        yield system


def commits(system: System, instance: str) -> float:
    """How many store commits the process has made (its metrics)."""
    return value(scrape(metrics_urls(system)[instance]), "taskengine_commit_seconds_count")


def test_every_replica_runs_as_its_own_instance(system):
    assert set(system.pids()) == {
        "relay",
        "projector",
        *(
            f"{name}{suffix}"
            for name in ("gateway", "admission", "scheduler", "dispatcher", "notifier")
            for suffix in ("", "-1")
        ),
    }
    for name in ("gateway-1", "admission-1", "scheduler-1", "dispatcher-1", "notifier-1"):
        assert (
            f"started (instance {name})" in (system.data_dir / "logs" / f"{name}.log").read_text()
        )


def test_the_gateways_share_one_address_and_each_answers_what_the_other_stored(system):
    before = {name: commits(system, name) for name in ("gateway", "gateway-1")}
    ids = []
    for n in range(40):  # each request on a connection of its own: the kernel picks a gateway
        response = httpx.post(
            system.url + "/job",
            json={"job": {"workflow": "echo"}, "parameters": {"n": n}},
            headers=HEADERS,
            timeout=30,
        )
        assert response.status_code == 200, response.text
        job_id = response.json()["id"]
        # read your writes, through whichever gateway the next connection lands on
        read = httpx.get(f"{system.url}/jobs/{job_id}", headers=HEADERS, timeout=30)
        assert read.status_code == 200, read.text
        ids.append(job_id)
    assert len(set(ids)) == 40
    after = {name: commits(system, name) for name in ("gateway", "gateway-1")}
    assert all(after[name] > before[name] for name in after), (before, after)
    with system.client() as client:
        wait_until(
            lambda: all(
                client.get(f"/jobs/{job_id}").json()["queue_state"] == "completed" for job_id in ids
            ),
            what="every job to complete",
        )


def test_kill_9_of_one_replica_of_each_under_load_loses_and_duplicates_nothing(system):
    with CallbackReceiver() as receiver:
        bodies = [
            {
                "job": {"workflow": "sleep" if n % 2 else "echo"},
                "parameters": {
                    "seconds": 0.3,
                    "n": n,
                    **({"rest_endpoints": [receiver.url]} if n % 4 == 0 else {}),
                },
            }
            for n in range(240)
        ]
        killed = ["dispatcher", "notifier", "gateway", "admission", "scheduler"]
        killed += ["dispatcher-1", "notifier-1", "gateway-1", "admission-1"]
        accepted = submitted_while_killing(system, bodies, killed, pause=0.7)
        assert len(accepted) >= 230, f"only {len(accepted)} of 240 submissions were accepted"

        states = audited_when_final(system, accepted)
        assert states == {"succeeded": len(accepted)}, states
        called = {
            job_id
            for job_id in accepted
            if any(e.callbacks for e in system.events(job_id) if hasattr(e, "callbacks"))
        }
        wait_until(
            lambda: called <= {b["id"] for b in receiver.received if _final(b)},
            timeout=120,
            what="every job's last callback",
        )
    for job_id in called:  # one may come twice after a failover, but none after the end
        kinds = [b["event"] for b in receiver.received if b["id"] == job_id and not b["step"]]
        kinds = [k for n, k in enumerate(kinds) if n == 0 or kinds[n - 1] != k]
        assert kinds[0] == "start" and kinds[-1] == "complete", (job_id, kinds)
        assert kinds.count("complete") == 1, (job_id, kinds)


def _final(body: dict) -> bool:
    return body.get("event") == "complete" and body.get("step") is None


def test_up_refuses_replicas_of_a_service_that_runs_once(tmp_path):
    result = subprocess.run(
        [str(BIN / "taskengine"), "up"],
        env={
            "PATH": "/usr/bin:/bin",
            "TASKENGINE_REPLICAS": "gateway=2,relay=2",
            "TASKENGINE_DATA_DIR": str(tmp_path),
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "TASKENGINE_REPLICAS" in result.stderr and "the relay runs once" in result.stderr
    assert not (tmp_path / "postgres").exists()  # refused before anything started
