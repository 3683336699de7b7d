"""Deterministic aggregate ids: every stream id is derived from a public name or number."""

from __future__ import annotations

from uuid import UUID, uuid5

NAMESPACE = UUID("6f1c3a52-5d0e-4a53-9a4e-7b1f2b0d9c11")


def job_stream(job_id: int) -> UUID:
    return uuid5(NAMESPACE, f"job:{job_id}")


def execution_stream(job_id: int, attempt: int) -> UUID:
    return uuid5(NAMESPACE, f"execution:{job_id}:{attempt}")


def callback_stream(job_id: int, event: str, url: str) -> UUID:
    return uuid5(NAMESPACE, f"callback:{job_id}:{event}:{url}")


def client_stream(name: str) -> UUID:
    return uuid5(NAMESPACE, f"client:{name}")


SETTINGS_STREAM = uuid5(NAMESPACE, "settings")
SCHEDULES_STREAM = uuid5(NAMESPACE, "schedules")
RETENTION_STREAM = uuid5(NAMESPACE, "retention")
