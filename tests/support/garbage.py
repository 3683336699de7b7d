"""Messages that are not events from the store, published straight onto JetStream as anyone
with access to NATS could: on every subject an event can have."""

from __future__ import annotations

import asyncio
import typing
from datetime import UTC, datetime

import nats
from taskengine_contracts import subjects
from taskengine_contracts.events import AnyEvent, SettingChanged, encode
from taskengine_core.ids import SETTINGS_STREAM

from tests.support.factories import submitted

EVENT_SUBJECTS = sorted(subjects.subject_for(t) for t in typing.get_args(AnyEvent))
"""Every subject an event goes out on (what any consumer's filters can name)."""
FORGED_POSITION = 10**12
"""Far past anything stored: a consumer taking it at its word would skip every real event."""


def garbage_for(subject: str) -> list[tuple[str, bytes, dict[str, str] | None]]:
    """(kind, payload, headers) of each garbage message sent on `subject`."""
    other = (
        submitted()
        if subject == subjects.subject_for(SettingChanged)
        else SettingChanged(
            id=SETTINGS_STREAM, version=1, at=datetime.now(UTC), name="max_jobs", value="1"
        )
    )
    return [
        ("not json", b"\x00\xffnot json at all {", None),
        ("json of the wrong type", b"[1, 2, 3]", None),
        ("an unknown event type", b'{"type": "job.exploded", "version": 1}', None),
        # Wrong type for the subject, with a forged position header far ahead of the store.
        ("another event type", encode(other), {subjects.POSITION_HEADER: str(FORGED_POSITION)}),
        ("oversized", b'{"type": "' + b"x" * 700_000 + b'"}', None),
    ]


async def _publish(nats_url: str, subjects_: list[str]) -> int:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    sent = 0
    try:
        for subject in subjects_:
            for _, payload, headers in garbage_for(subject):
                await js.publish(subject, payload, headers=headers)
                sent += 1
    finally:
        await nc.close()
    return sent


def publish_garbage(nats_url: str, on: list[str] | None = None) -> int:
    """Publishes every kind of garbage on each subject (all event subjects by default)."""
    return asyncio.run(_publish(nats_url, on or EVENT_SUBJECTS))


KINDS = len(garbage_for(EVENT_SUBJECTS[0]))
