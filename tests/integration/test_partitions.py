"""Partition leases in PostgreSQL: each partition held by one live instance, fair shares,
a dead instance's partitions taken over naming it, positions kept per partition."""

from __future__ import annotations

import time

from taskengine_contracts.events import (
    CallbackAttemptFailed,
    JobEvent,
    JobRetryScheduled,
    JobStarted,
    JobSucceeded,
)
from taskengine_core.jobs import JobRef, advance
from taskengine_core.partitions import PARTITIONS, partition_of
from taskengine_store.partitions import PartitionLeases

from tests.integration.test_dispatcher import admit
from tests.integration.test_notifier import started
from tests.support.factories import job_number, settings, submitted
from tests.support.receiver import CallbackReceiver
from tests.support.system import wait_events
from tests.support.waiting import wait_until

ALL = frozenset(range(PARTITIONS))


def test_a_second_instance_gets_half_as_the_first_gives_back_what_it_has_nothing_of(services):
    a = PartitionLeases(services.store, "dispatcher", "a", ttl=30)
    b = PartitionLeases(services.store, "dispatcher", "b", ttl=30)
    first = a.refresh()
    assert first.partitions == ALL and first.taken == dict.fromkeys(ALL)  # nobody held them
    assert b.refresh().partitions == frozenset()  # all held, and alive
    busy = {0, 1, 2}  # a has attempts running in these: it keeps them
    kept = a.refresh(idle=ALL - busy).partitions
    assert len(kept) == PARTITIONS // 2 and busy <= kept
    got = b.refresh().partitions
    assert len(got) == PARTITIONS // 2 and not got & kept
    assert a.refresh(idle=ALL).partitions == kept  # at its share: gives back nothing more


def test_a_dead_instances_partitions_are_taken_over_naming_it(services):
    a = PartitionLeases(services.store, "notifier", "a", ttl=1)
    b = PartitionLeases(services.store, "notifier", "b", ttl=1)
    a.refresh()
    time.sleep(1.2)  # a stops renewing: dead
    taken = b.refresh()
    assert taken.partitions == ALL and taken.taken == dict.fromkeys(ALL, "a")
    assert a.refresh().partitions == frozenset()  # back, but all held by a live b


def test_an_instance_that_leaves_hands_its_partitions_on_at_once(services):
    a = PartitionLeases(services.store, "dispatcher", "a", ttl=60)
    b = PartitionLeases(services.store, "dispatcher", "b", ttl=60)
    a.refresh()
    a.leave()
    assert b.refresh().taken == dict.fromkeys(ALL, "a")


def test_services_lease_apart_and_positions_are_kept_per_partition(services):
    store = services.store
    dispatcher = PartitionLeases(store, "dispatcher", "x", ttl=30)
    notifier = PartitionLeases(store, "notifier", "x", ttl=30)
    assert dispatcher.refresh().partitions == notifier.refresh().partitions == ALL
    store.commit((), None, [("INSERT INTO notification_tracking VALUES ('dispatcher', 40)", ())])
    assert dispatcher.tracked([3, 4]) == {3: 40, 4: 40}  # from before partitions
    store.commit((), None, [dispatcher.track({3: 50, 4: 45})])
    store.commit((), None, [dispatcher.track({3: 45})])  # never backwards
    assert dispatcher.tracked([3, 4, 5]) == {3: 50, 4: 45, 5: 40}
    assert notifier.tracked([3]) == {3: 0}


# --- instances of the services sharing the work -----------------------------------------


def holders(services, service: str) -> dict[str, set[int]]:  # type: ignore[no-untyped-def]
    rows = services.store.query(
        "SELECT holder, partition FROM partition_leases"
        " WHERE service = %s AND holder IS NOT NULL AND expires_at > now()",
        (service,),
    )
    found: dict[str, set[int]] = {}
    for row in rows:
        found.setdefault(row["holder"], set()).add(row["partition"])
    return found


def two_sharing(services, service: str) -> dict[str, set[int]]:  # type: ignore[no-untyped-def]
    """Starts a second instance of `service` beside the first; returns once they hold half
    each."""
    services.env["TASKENGINE_PARTITION_TTL"] = "2"
    services.start("relay", service)
    services.start_as(service, f"{service}-b")

    def halves() -> dict[str, set[int]] | None:
        found = holders(services, service)
        return found if sorted(map(len, found.values())) == [PARTITIONS // 2] * 2 else None

    return wait_until(halves, timeout=60, what=f"two {service}s holding half each")


def one_per_partition(**kwargs) -> list:  # type: ignore[no-untyped-def]
    base = job_number() * PARTITIONS
    return [submitted(job_id=base + p, **kwargs) for p in range(PARTITIONS)]


def test_a_dead_dispatchers_attempts_and_partitions_are_taken_over(services):
    settings(services.store, retry_limit=3, retry_delay=0)
    shares = two_sharing(services, "dispatcher")
    jobs = one_per_partition(workflow="sleep", parameters={"seconds": 4})
    services.store.commit(jobs)
    services.store.commit([admit(job) for job in jobs])
    wait_events(
        services,
        lambda es: sum(isinstance(e, JobStarted) for e in es) == len(jobs),
        timeout=60,
        what="every job started",
    )
    services.kill("dispatcher-b")  # not restarted: the other one takes its partitions over
    later = one_per_partition(workflow="echo")
    services.store.commit(later)
    services.store.commit([admit(job) for job in later])

    lost_with_b = [j for j in jobs if partition_of(j.job_id) in shares["dispatcher-b"]]
    ran_on = {j.job_id for j in jobs + later if j not in lost_with_b}

    def over(events: list) -> bool:  # type: ignore[type-arg]
        succeeded = {e.job_id for e in events if isinstance(e, JobSucceeded)}
        retried = {e.job_id for e in events if isinstance(e, JobRetryScheduled)}
        return ran_on <= succeeded and {j.job_id for j in lost_with_b} <= retried

    events = wait_events(services, over, timeout=120, what="the dead dispatcher's work taken over")
    assert holders(services, "dispatcher") == {"dispatcher-test": set(range(PARTITIONS))}
    for job in jobs + later:
        history = [e for e in events if isinstance(e, JobEvent) and e.job_id == job.job_id]
        starts = [e.attempt for e in history if isinstance(e, JobStarted)]
        assert starts == [1], (job.job_id, starts)  # each attempt started once
        if job in lost_with_b:  # ended as lost, to be retried (by admission, not running here)
            [retry] = [e for e in history if isinstance(e, JobRetryScheduled)]
            assert retry.reason.startswith("lost"), retry
        else:
            assert isinstance(history[-1], JobSucceeded), history


def test_a_dead_notifiers_deliveries_are_sent_by_the_one_that_takes_its_partitions(services):
    # Not the breaker's test: held back after 5 failures, a notifier's untried deliveries would
    # wait behind probes that may go to retries first (5 s, 10 s, 20 s, ...), past the wait below.
    services.env["TASKENGINE_OUTBOUND_BREAKER_FAILURES"] = "1000"
    two_sharing(services, "notifier")
    with CallbackReceiver() as receiver:
        receiver.status = 503  # down: every delivery waits, in both notifiers
        jobs = one_per_partition(callbacks=[receiver.url])
        services.store.commit(jobs)
        services.store.commit([started(job, [receiver.url]) for job in jobs])
        wait_events(
            services,
            lambda es: (
                {e.job_id for e in es if isinstance(e, CallbackAttemptFailed)}
                == {job.job_id for job in jobs}
            ),
            timeout=60,
            what="every delivery tried once",
        )
        services.kill("notifier-b")
        receiver.status = 200
        wait_until(
            lambda: {b["job_id"] for b in receiver.received} == {job.job_id for job in jobs},
            timeout=90,
            what="every job's callback, the dead notifier's too",
        )
        wait_until(
            lambda: not services.store.query("SELECT 1 FROM notifier_deliveries"),
            what="every delivery recorded",
        )
    sent = [b["job_id"] for b in receiver.received]
    assert sorted(sent) == sorted(job.job_id for job in jobs)  # each once


def test_attempts_of_an_instance_no_longer_alive_are_ended_whoever_held_their_partition(services):
    """A row left by an instance that never held the partition (its start landed after its
    lease lapsed, or the takeover that knew of it failed) is found all the same."""
    settings(services.store, retry_limit=3, retry_delay=0)
    job = submitted("sleep", parameters={"seconds": 30})
    admitted = admit(job)
    services.store.commit([job])
    services.store.commit([admitted])
    start = advance(
        JobRef.of(admitted), JobStarted, workflow=job.workflow, attempt=1, executor="local"
    )
    ghost = (
        "INSERT INTO dispatcher_executions (job_uuid, job_id, client, workflow, priority,"
        " attempt, version, instance, started_at)"
        " VALUES (%s, %s, %s, %s, 5, 1, %s, 'ghost', now())",
        (job.id, job.job_id, job.client, job.workflow, start.version),
    )
    services.store.commit([start], None, [ghost])
    services.start("relay", "dispatcher")
    events = wait_events(
        services,
        lambda es: any(isinstance(e, JobRetryScheduled) for e in es),
        timeout=60,
        what="the ghost's attempt ended as lost",
    )
    [retry] = [e for e in events if isinstance(e, JobRetryScheduled)]
    assert retry.job_id == job.job_id and retry.reason.startswith("lost"), retry
    assert [e.attempt for e in events if isinstance(e, JobStarted)] == [1]  # not started again
    assert not services.store.query("SELECT 1 FROM dispatcher_executions")
