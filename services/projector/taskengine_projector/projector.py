"""The projector: keeps the read models up to date with the store: the jobs' (`rm_jobs`,
`rm_job_log`, `rm_clients`) and the scheduled tasks' (`rm_tasks`, `rm_task_runs`).

It follows the notification log directly (the record, not the bus) and writes each batch's
rows together with its tracking record, so a crash never skips or doubles a row. Retention
(`FinishedJobsCleared`) is applied at its place in the log: `project()` cuts the batch there.

An event that cannot be projected (undecodable, or failing the same way N times once isolated
from its batch, e.g. text PostgreSQL refuses) is set aside in `rejected_messages` with the
tracking record, and the projector goes on; `taskengine replay` leaves the same events out.
A transient failure (the store away) is retried without skipping anything.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from eventsourcing.persistence import Tracking
from taskengine_contracts import subjects
from taskengine_contracts.events import Event, encode
from taskengine_runtime import Runtime, metrics
from taskengine_runtime.failures import describe, is_transient, isolating
from taskengine_runtime.logs import context
from taskengine_runtime.pacing import Pacing
from taskengine_store.projections import KEYED_PLANS, PROJECTOR, project
from taskengine_store.rejected import Rejected, decoded, record, set_aside_positions
from taskengine_store.store import Position

log = logging.getLogger(__name__)

BATCH = 2000
IDLE_POLL = 1.0
"""Seconds idle between reads of the log when no commit woke it (a lost NOTIFY, a rewind)."""


async def projector(runtime: Runtime) -> None:
    store = runtime.store
    position = await runtime.call(store.tracked, PROJECTOR)
    log.info("projector resuming after position %d", position)
    skip = await runtime.call(set_aside_positions, store, PROJECTOR)
    await follow(runtime, position, skip)


async def follow(runtime: Runtime, position: int, skip: set[int]) -> None:
    """Projects the log from `position` on, forever. Idle, it sleeps until a commit is heard
    (at most IDLE_POLL): lists wait for the projector to hold the writes acknowledged before
    them, so its pick-up time is what a list after a write costs."""
    store = runtime.store
    attempts = runtime.config.poison_attempts
    track = runtime.tracker(PROJECTOR)
    metrics.LAG.consumers[PROJECTOR] = lambda: position

    async def commit(batch: Sequence[Position]) -> None:
        tracking = Tracking(PROJECTOR, batch[-1].position)
        # Derived state only: the commit need not wait for the disk (see `EventStore.commit`).
        statements = [KEYED_PLANS, *project(batch)]
        await runtime.call(store.commit, (), tracking, statements, durable=False)

    async def set_aside(item: Position, error: BaseException, failures: int) -> None:
        text = f"projecting failed {failures} times: {describe(error)}"
        await reject([rejected(item.position, item.event, text, failures)], item.position)
        skip.add(item.position)

    async def reject(items: list[Rejected], position: int) -> None:
        for item in items:
            log.error(
                "projector: event set aside: position %s, subject %s: %s",
                item.position,
                item.subject,
                item.error,
                extra=context(position=item.position),
            )
        metrics.REJECTED.labels(PROJECTOR).inc(len(items))
        statements = [record(r) for r in items]
        tracking = Tracking(PROJECTOR, position)
        await runtime.call(store.commit, tracking=tracking, statements=statements)

    pacing = Pacing(runtime.config.follow_interval)
    runtime.when_waited_for(PROJECTOR, pacing.hurry)  # a list waits for what we project
    delay = 0.2
    while True:
        try:
            await pacing.wait()
            heard = runtime.heard()
            notes = await runtime.call(store.entries, position, BATCH)
            if not notes:
                await runtime.news(max(heard, position), IDLE_POLL)
                # `taskengine replay --reset` rewinds us to 0 while we run: follow it.
                position = min(position, await runtime.call(store.tracked, PROJECTOR))
                continue
            pacing.began()
            batch, undecodable = decoded(notes, skip)
            # What cannot be decoded is set aside at once, after what precedes it is projected.
            for note, error in undecodable:
                before = [p for p in batch if p.position < note.id]
                if before:
                    await isolating(before, commit, set_aside, attempts, PROJECTOR)
                    batch = batch[len(before) :]
                subject = subjects.subject_for_topic(note.topic)
                await reject(
                    [Rejected(PROJECTOR, subject, note.state, error, None, note.id)], note.id
                )
                skip.add(note.id)
            if batch:
                await isolating(batch, commit, set_aside, attempts, PROJECTOR)
            else:  # only events set aside (now or before a rewind): move past them
                await track(notes[-1].id)
            position = notes[-1].id
            delay = 0.2
            # Past all that was heard, it waits for news rather than read the log for nothing.
            await runtime.news(position, IDLE_POLL)
        except Exception as error:
            if not is_transient(error):
                raise
            log.warning("projector: %s; retry in %.1fs", describe(error), delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


def rejected(position: int, event: Event, error: str, attempts: int) -> Rejected:
    subject = subjects.subject_for(event)
    payload = encode(event)
    return Rejected(PROJECTOR, subject, payload, error, None, position, attempts=attempts)
