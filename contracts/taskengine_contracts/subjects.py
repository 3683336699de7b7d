"""JetStream stream and subject names: the only place they are spelled."""

from __future__ import annotations

from taskengine_contracts.events import Event, topic_of

STREAM = "TASKENGINE"
"""One stream holds every event, in store order."""

PREFIX = "taskengine"
ALL = f"{PREFIX}.>"

JOBS = f"{PREFIX}.job.>"
EXECUTIONS = f"{PREFIX}.execution.>"
CALLBACKS = f"{PREFIX}.callback.>"
CLIENTS = f"{PREFIX}.client.>"
SETTINGS = f"{PREFIX}.settings.>"
SCHEDULES = f"{PREFIX}.schedule.>"
TASKS = f"{PREFIX}.task.>"

HEARTBEATS = "heartbeat.taskengine.>"
"""Core NATS (not JetStream): each service instance says it is alive every few seconds."""


def heartbeat_subject(service: str) -> str:
    return f"heartbeat.taskengine.{service}"


POSITION_HEADER = "Taskengine-Position"
"""Header carrying the event's notification id: its position in the store's global order."""

MSG_ID_HEADER = "Nats-Msg-Id"

SUBSCRIBER_INBOX = "_INBOX_subscriber"
"""The inbox prefix a lifecycle subscriber connects with (`nats.connect(inbox_prefix=...)`):
the only inboxes the `taskengine-subscriber` user of deploy/nats-users.conf may receive on."""

PUBLISHED_HEADER = "Taskengine-Published"
"""With hop tracing on (`TASKENGINE_HOP_TRACE`): when the relay published the message (Unix
seconds)."""


def subject_for(event: Event | type[Event]) -> str:
    """`taskengine.<topic>`, e.g. `taskengine.job.submitted`."""
    return f"{PREFIX}.{topic_of(event)}"


def subject_for_topic(topic: str) -> str:
    return f"{PREFIX}.{topic}"


def message_id(stream_id: object, version: int) -> str:
    """`<aggregate id>:<version>`: unique per stored event, so JetStream drops re-publishes."""
    return f"{stream_id}:{version}"
