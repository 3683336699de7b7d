"""Which callback a job's event is, so any reader can address its delivery's stream.

The notifier delivers one callback per (event, URL) and records each try in the stream
`callback_stream(job_id, delivery_key(event), url)`; the gateway's dashboard reads the same
streams to show a job's callbacks. One function names the key for both.
"""

from __future__ import annotations

from taskengine_contracts.events import (
    Event,
    JobFailed,
    JobStarted,
    JobSucceeded,
    JobTimedOut,
    StepChanged,
)

Notified = JobStarted | JobSucceeded | JobFailed | JobTimedOut
"""Job events a receiver hears of (and `StepChanged`: each step's start, complete or fail)."""

NOTIFIED: dict[type[Notified], str] = {
    JobStarted: "start",
    JobSucceeded: "complete",
    JobFailed: "fail",
    JobTimedOut: "fail",
}
"""What a receiver is told happened, per event it hears of."""


def delivery_key(event: Event) -> str | None:
    """The delivery key of an event a receiver hears of; None for any other event."""
    if isinstance(event, StepChanged):
        return f"step:{event.attempt}:{event.step}:{event.event}"
    if isinstance(event, Notified):
        return f"{NOTIFIED[type(event)]}:{event.version}"
    return None
