"""Where a run's time went, for `make bench`'s modes: CPU by component, the gaps between a
job's lifecycle events, and each consumer's hops (with hop tracing on)."""

from __future__ import annotations

import csv
import json
from datetime import datetime
from pathlib import Path

from tests.bench.embedded import p50_p99, percentiles

CHAIN = ("job.submitted", "job.admitted", "job.started", "job.succeeded")


def cpu(before: dict[str, float], after: dict[str, float], elapsed: float, jobs: int) -> None:
    """Each component's CPU per job over a run of `jobs`, and the jobs/s one instance of it could
    carry with a core of its own at that cost (the scaling model's figure: which component
    caps the system first, docs/architecture.md)."""
    used = {name: after[name] - before.get(name, 0.0) for name in after}
    print(f"  per component, CPU over {elapsed:.1f} s, 2 cores:")
    for name, seconds in sorted(used.items(), key=lambda kv: -kv[1]):
        if seconds < 0.05:
            continue
        per_job = seconds / jobs * 1000
        share = seconds / elapsed * 100
        print(
            f"    {name.removeprefix('taskengine_'):<12} {per_job:6.3f} ms/job"
            f"   {share:5.0f}% of a core   one core: {1000 / per_job:8.0f} jobs/s"
        )
    total = sum(used.values()) / jobs * 1000
    print(f"    {'all':<12} {total:6.3f} ms/job   2 cores: {2000 / total:8.0f} jobs/s at most")


def chain(db, jobs: set[int]) -> None:  # type: ignore[no-untyped-def]
    """Each step of a job's life, from the `at` of its lifecycle events: the writer's instant
    of one to the writer's instant of the next (a commit, a relay hop, a consumer's turn)."""
    instants: dict[int, dict[str, float]] = {}
    rows = db.execute(
        "SELECT topic, state FROM stored_events WHERE topic = ANY(%s)", (list(CHAIN),)
    ).fetchall()
    for topic, state in rows:
        event = json.loads(bytes(state))
        if event["job_id"] in jobs:
            at = datetime.fromisoformat(event["at"].replace("Z", "+00:00")).timestamp()
            instants.setdefault(event["job_id"], {})[topic] = at
    print("  per job, between its lifecycle events (writer's instants):")
    for earlier, later in zip(CHAIN, CHAIN[1:], strict=False):
        gaps = [t[later] - t[earlier] for t in instants.values() if earlier in t and later in t]
        if gaps:
            print(f"    {earlier[4:]:>9} -> {later[4:]:<9} {percentiles(gaps)}")


def hops(run: Path, since: float) -> None:
    """Per consumer and topic, from the hop traces of the events written since `since`:
    written -> published (the writer's commit and the relay), published -> received (the
    bus and the consumer's fetch), received -> handled (the consumer's work and commit)."""
    hops: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    for path in sorted(run.glob("hops-*.csv")):
        with path.open() as file:
            for row in csv.DictReader(file):
                if not row["published"] or float(row["written"]) < since:
                    continue
                written, published = float(row["written"]), float(row["published"])
                received, handled = float(row["received"]), float(row["handled"])
                hops.setdefault((row["consumer"], row["topic"]), []).append(
                    (published - written, received - published, handled - received)
                )
    print("  per hop, p50 / p99 ms (written -> published -> received -> handled):")
    for (consumer, topic), values in sorted(hops.items(), key=lambda kv: -len(kv[1])):
        if len(values) < 100:
            continue
        columns = ["   ".join(p50_p99([v[n] for v in values])) for n in range(3)]
        print(f"    {consumer:<10} {topic:<15} {len(values):>6}   " + "  |  ".join(columns))
