"""Partition leases: which live instance of a partitioned service holds which partition.

An instance says it is alive and renews its leases in one transaction every few seconds
(`PartitionLeases.refresh`). Each live instance holds a fair share of the partitions: it takes
free or expired ones up to its share and gives back those beyond it that it has nothing in hand
for. A lease not renewed for `ttl` seconds expires, and whoever takes it learns from whom (the
instance presumed dead), so it can end or take over what that one left.

Each partition has its own tracking record (`taskengine_core.partitions.tracking_name`): its
holder's position in the event log, which the next holder goes on from.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from taskengine_core.partitions import PARTITIONS, tracking_name

from taskengine_store.store import EventStore, Statement

_TRACK = (
    "INSERT INTO notification_tracking (application_name, notification_id)"
    " SELECT * FROM unnest(%b::text[], %b::bigint[])"
    " ON CONFLICT (application_name) DO UPDATE SET notification_id = excluded.notification_id"
    " WHERE notification_tracking.notification_id < excluded.notification_id"
)


@dataclass(frozen=True)
class Held:
    """The partitions an instance holds after a refresh, and those it took by this refresh
    with whom they were leased to before (None: nobody)."""

    partitions: frozenset[int]
    taken: dict[int, str | None] = field(default_factory=dict)


class PartitionLeases:
    """`instance`'s leases on `service`'s partitions. Blocking: call it from a thread."""

    def __init__(self, store: EventStore, service: str, instance: str, ttl: float):
        self.store, self.service, self.instance, self.ttl = store, service, instance, ttl

    def refresh(self, idle: Iterable[int] = ()) -> Held:
        """Says this instance is alive, renews its leases, gives back partitions beyond its
        fair share among `idle` ones (nothing in hand here), and takes free or expired ones
        up to its share: one transaction."""
        me, service, ttl = self.instance, self.service, self.ttl
        with self.store.datastore.transaction(commit=True) as curs:
            curs.execute(
                "INSERT INTO partition_leases (service, partition)"
                " SELECT %s, p FROM generate_series(0, %s) AS p ON CONFLICT DO NOTHING",
                (service, PARTITIONS - 1),
            )
            curs.execute(
                "INSERT INTO partition_members VALUES (%s, %s, now() + make_interval(secs => %s))"
                " ON CONFLICT (service, instance) DO UPDATE SET expires_at = excluded.expires_at",
                (service, me, ttl),
            )
            curs.execute(
                "DELETE FROM partition_members WHERE service = %s"
                " AND expires_at < now() - interval '1 hour'",
                (service,),
            )
            curs.execute(
                "SELECT count(*) AS n FROM partition_members"
                " WHERE service = %s AND expires_at > now()",
                (service,),
            )
            row = curs.fetchone()
            share = math.ceil(PARTITIONS / max(1, row["n"] if row else 1))
            curs.execute(
                "UPDATE partition_leases SET expires_at = now() + make_interval(secs => %s)"
                " WHERE service = %s AND holder = %s RETURNING partition",
                (ttl, service, me),
            )
            held = {row["partition"] for row in curs.fetchall()}
            extra = sorted(held & set(idle), reverse=True)[: max(0, len(held) - share)]
            if extra:
                curs.execute(
                    "UPDATE partition_leases SET holder = NULL, expires_at = '-infinity'"
                    " WHERE service = %s AND holder = %s AND partition = ANY(%s)",
                    (service, me, extra),
                )
                held -= set(extra)
            taken: dict[int, str | None] = {}
            if len(held) < share:
                curs.execute(
                    "UPDATE partition_leases AS l SET holder = %s,"
                    " expires_at = now() + make_interval(secs => %s)"
                    " FROM (SELECT partition, holder FROM partition_leases"
                    "  WHERE service = %s AND (holder IS NULL OR expires_at < now())"
                    "  ORDER BY partition LIMIT %s FOR UPDATE SKIP LOCKED) AS free"
                    " WHERE l.service = %s AND l.partition = free.partition"
                    " RETURNING l.partition, free.holder AS previous",
                    (me, ttl, service, share - len(held), service),
                )
                taken = {row["partition"]: row["previous"] for row in curs.fetchall()}
                held |= set(taken)
        return Held(frozenset(held), taken)

    def leave(self) -> None:
        """This instance stops: its leases expire now (whoever takes them learns it was this
        one's) and it is no longer counted live."""
        with self.store.datastore.transaction(commit=True) as curs:
            curs.execute(
                "UPDATE partition_leases SET expires_at = '-infinity'"
                " WHERE service = %s AND holder = %s",
                (self.service, self.instance),
            )
            curs.execute(
                "DELETE FROM partition_members WHERE service = %s AND instance = %s",
                (self.service, self.instance),
            )

    def tracked(self, partitions: Iterable[int]) -> dict[int, int]:
        """Each partition's tracked position; one never tracked goes on from the service's own
        tracking record (kept by an engine that had no partitions), else from the start."""
        wanted = {tracking_name(self.service, p): p for p in partitions}
        rows = self.store.query(
            "SELECT application_name, notification_id FROM notification_tracking"
            " WHERE application_name = ANY(%s)",
            ([*wanted, self.service],),
        )
        found = {row["application_name"]: row["notification_id"] for row in rows}
        legacy = found.get(self.service, 0)
        return {p: found.get(name, legacy) for name, p in wanted.items()}

    def track(self, positions: dict[int, int]) -> Statement:
        """A statement moving each partition's tracking record forward to its position."""
        names = [tracking_name(self.service, p) for p in positions]
        return _TRACK, (names, list(positions.values()))
