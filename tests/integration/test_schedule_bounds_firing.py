"""A stored schedule whose next fire cannot be found within the search bound ends alone, with
its id in the scheduler's log, while the other tasks keep firing (real NATS and PostgreSQL)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

from taskengine_contracts.events import TaskCreated, TaskDefinition, TaskFired

from tests.support.waiting import wait_until

NEVER = "DTSTART:20260101T000000Z\nRRULE:FREQ=SECONDLY;BYHOUR=1;BYMONTH=4;BYMONTHDAY=31"


def task(kind: str, expr: str, next_fire_at: datetime) -> TaskCreated:
    definition = TaskDefinition(
        title="t",
        description="",
        schedule_kind=kind,
        schedule_expr=expr,
        payload={"workflow": "noop"},
        created_by=UUID(int=7),
    )
    return TaskCreated(
        id=uuid4(),
        version=1,
        at=datetime.now(UTC),
        client="alice",
        definition=definition,
        next_fire_at=next_fire_at,
    )


def test_a_stored_rule_without_a_findable_next_fire_ends_alone(services):
    # Stored before the bound existed (the gateway refuses it now): due in 2 s.
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=2)
    bad = task("rrule", NEVER, start)
    good = [task("cron", "* * * * * *", start) for _ in range(3)]
    services.store.commit([bad, *good])
    services.start("relay", "scheduler")

    def fires(task_id: UUID) -> list[TaskFired]:
        return [e for e in services.events() if isinstance(e, TaskFired) and e.id == task_id]

    wait_until(
        lambda: all(len(fires(t.id)) >= 5 for t in good),
        timeout=60,
        what="the other tasks to keep firing",
    )
    [only] = fires(bad.id)  # its due run, then no next fire
    assert only.fire_at == start and only.next_fire_at is None
    log = services.log("scheduler")
    assert f"task {bad.id}: no next fire" in log and "no fire found within" in log
