"""A commit whose answer never came: the store committed, then the connection died."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from eventsourcing.persistence import OperationalError
from taskengine_store.store import EventStore


@contextmanager
def answer_lost_once(store: EventStore) -> Iterator[list[bool]]:
    """The store's next commit goes through, then its connection dies before the answer came
    (as eventsourcing reports it): its insert is retried and finds its own events stored."""
    real = store.datastore.get_connection
    lost: list[bool] = []

    @contextmanager
    def get_connection(*args, **kwargs):  # type: ignore[no-untyped-def]
        with real(*args, **kwargs) as conn:
            yield conn
        if not lost:
            lost.append(True)
            raise OperationalError("server closed the connection unexpectedly")

    store.datastore.get_connection = get_connection
    try:
        yield lost
    finally:
        store.datastore.get_connection = real
