"""The projector builds the read models from the log, survives kill -9, equals a replay."""

from __future__ import annotations

from datetime import UTC, datetime

from taskengine_cli.ops import replay
from taskengine_contracts.events import FinishedJobsCleared, JobAdmitted
from taskengine_core.ids import RETENTION_STREAM
from taskengine_core.jobs import JobRef, advance

from tests.support.factories import submitted
from tests.support.waiting import wait_until


def test_read_models_follow_the_log_through_a_kill_and_match_a_replay(services):
    jobs = [submitted(priority=p % 10 + 1) for p in range(400)]
    services.store.commit(jobs[:200])
    services.start("projector")
    services.store.commit(jobs[200:])
    now = datetime.now(UTC)
    # A clearing among them removes nothing: no job has finished.
    clearing = FinishedJobsCleared(
        id=RETENTION_STREAM, version=1, at=now, finished_before=now, retention_seconds=1
    )
    services.store.commit([clearing])
    services.kill("projector")
    services.store.commit(
        [
            advance(
                JobRef.of(j),
                JobAdmitted,
                workflow="noop",
                priority=j.priority,
                attempt=1,
                running=1,
                max_jobs=400,
            )
            for j in jobs
        ]
    )
    services.start("projector")

    def caught_up() -> bool:
        return services.store.tracked("projector") == services.store.max_position()

    wait_until(caught_up, what="the projector to catch up")
    rows = services.store.query("SELECT state, count(*) AS n FROM rm_jobs GROUP BY state")
    assert rows == [{"state": "admitted", "n": 400}]
    log = services.store.query(
        "SELECT progname, count(*) AS n FROM rm_job_log GROUP BY progname ORDER BY progname"
    )
    assert log == [{"progname": "api", "n": 400}, {"progname": "controller", "n": 400}]
    replayed, live, position = replay(services.store)
    assert replayed == live and position == services.store.max_position()
