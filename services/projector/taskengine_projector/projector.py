"""The projector: keeps the read models (`rm_jobs`, `rm_job_log`, `rm_clients`) up to date
with the store.

It follows the notification log directly (the record, not the bus) and writes each batch's
rows together with its tracking record, so a crash never skips or doubles a row. Retention
(`FinishedJobsCleared`) is applied at its place in the log: `project()` cuts the batch there.
"""

from __future__ import annotations

import asyncio
import logging

from eventsourcing.persistence import Tracking
from taskengine_bus import Runtime
from taskengine_store.projections import PROJECTOR, project

log = logging.getLogger(__name__)

BATCH = 2000


async def projector(runtime: Runtime) -> None:
    store = runtime.store
    position = await runtime.call(store.tracked, PROJECTOR)
    log.info("projector resuming after position %d", position)
    idle = 0.01
    while True:
        batch = await runtime.call(store.events_after, position, BATCH)
        if not batch:
            await asyncio.sleep(idle)
            idle = min(idle * 2, 0.2)
            # `taskengine replay --reset` rewinds us to 0 while we run: follow it.
            position = min(position, await runtime.call(store.tracked, PROJECTOR))
            continue
        idle = 0.01
        last = batch[-1].position
        await runtime.call(
            store.commit, tracking=Tracking(PROJECTOR, last), statements=project(batch)
        )
        position = last
