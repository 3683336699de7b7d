"""What a receiver is told: the callback body for each job event it hears of."""

from __future__ import annotations

from datetime import datetime

import msgspec
from taskengine_contracts.events import Event, StepChanged
from taskengine_core.deliveries import NOTIFIED, Notified, delivery_key
from taskengine_core.ids import callback_stream
from taskengine_core.jobs import state_after


class CallbackBody(msgspec.Struct, frozen=True):
    """What a receiver gets: the job, what happened, and the job's state after it.

    `step` and `step_name` are set for a step's callbacks and null for the job's own;
    `custom_data` (the job's `parameters.custom_data`) comes with the job's end.
    """

    id: int
    job_id: int
    client: str
    event: str
    status: str
    attempt: int
    at: datetime
    failed: bool
    workflow: str | None = None
    step: int | None = None
    step_name: str | None = None
    reason: str | None = None
    exit_code: int | None = None
    custom_data: object = None


def callback_body(event: Event) -> tuple[str, CallbackBody] | None:
    """(delivery key, body) for an event a receiver hears of; None for any other event."""
    key = delivery_key(event)
    if key is None:
        return None
    if isinstance(event, StepChanged):
        return key, CallbackBody(
            id=event.job_id,
            job_id=event.job_id,
            client=event.client,
            event=event.event,
            status="running",
            attempt=event.attempt,
            at=event.at,
            failed=event.event == "fail",
            step=event.step,
            step_name=event.name,
            reason=event.reason,
            exit_code=event.exit_code,
        )
    assert isinstance(event, Notified)
    kind = NOTIFIED[type(event)]
    return key, CallbackBody(
        id=event.job_id,
        job_id=event.job_id,
        client=event.client,
        event=kind,
        status=str(state_after(event)),
        attempt=event.attempt,
        at=event.at,
        failed=kind == "fail",
        workflow=event.workflow,
        reason=getattr(event, "reason", None),
        exit_code=getattr(event, "exit_code", None),
        custom_data=getattr(event, "custom_data", None),
    )


def deliveries_for(event: Event) -> list[tuple]:
    """Rows for the callbacks an event asks for (none unless the job has rest_endpoints)."""
    callbacks = getattr(event, "callbacks", [])
    described = callback_body(event) if callbacks else None
    if described is None:
        return []
    key, body = described
    encoded = msgspec.json.encode(body)
    return [
        (callback_stream(body.job_id, key, url), body.job_id, url, body.event, encoded, event.at)
        for url in dict.fromkeys(callbacks)  # one delivery per distinct URL
    ]
