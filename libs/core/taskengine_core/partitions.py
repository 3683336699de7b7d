"""How the dispatcher's and the notifier's work is split among their instances.

A job belongs to one of `PARTITIONS` partitions by its number. Each partition is leased to one
live instance at a time (`taskengine_store.partitions`); that instance starts the job's attempts
or sends its callbacks, and tracks its own position in the event log for the partition, so the
instance that takes it over goes on from there.
"""

from __future__ import annotations

import secrets

PARTITIONS = 16
PARTITIONED = ("dispatcher", "notifier")


def partition_of(job_id: int) -> int:
    return job_id % PARTITIONS


def tracking_name(service: str, partition: int) -> str:
    """The tracking record of a service's partition (`dispatcher.3`)."""
    return f"{service}.{partition}"


def consumer_name(service: str, instance: str) -> str:
    """An instance's own JetStream consumer, new at each start: `<service>-<instance>-<random>`.

    The random part keeps it out of lifecycle subscribers' reach: they may create, read and
    delete consumers by name but cannot list them (deploy/nats-users.conf), and a wildcard
    cannot reserve a prefix of one name as it reserves the other services' names."""
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in instance)[:64]
    return f"{service}-{safe}-{secrets.token_hex(8)}"


def tracking_names(consumers: list[str]) -> list[str]:
    """Patterns (SQL LIKE) of the tracking records behind the stream's `consumers`: a
    consumer's own name, and for an instance of a partitioned service, its partitions'."""
    names = [name.replace("_", "\\_").replace("%", "\\%") for name in consumers]
    for service in PARTITIONED:
        if any(name.startswith(f"{service}-") for name in consumers):
            names.append(f"{service}.%")
    return names
