"""`make bench`, idle: what the quiet embedded system costs. Every process `taskengine up`
started (services, NATS, PostgreSQL and their children): proportional set size (PSS: shared
pages split between the processes sharing them), RSS summed, and CPU over `WINDOW` seconds.
Target: at most 400 MB PSS and 5% of one core."""

from __future__ import annotations

import time

import psutil

from tests.bench.embedded import Embedded

SETTLE = 15.0
"""Seconds after start before measuring: imports, connections and first polls are over."""
WINDOW = 10.0


def processes(supervisor: int) -> list[psutil.Process]:
    root = psutil.Process(supervisor)
    return [root, *root.children(recursive=True)]


def report(system: Embedded) -> None:
    time.sleep(SETTLE)
    before = {}
    for process in processes(system.supervisor):
        try:
            before[process.pid] = (process, sum(process.cpu_times()[:2]))
        except psutil.NoSuchProcess:
            continue
    time.sleep(WINDOW)
    cpu = pss = rss = 0.0
    counted = 0
    by_name: dict[str, float] = {}
    for process, cpu_before in before.values():
        try:
            memory = process.memory_full_info()
            used = sum(process.cpu_times()[:2]) - cpu_before
            name = _name(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        counted += 1
        cpu += used
        pss += memory.pss
        rss += memory.rss
        by_name[name] = by_name.get(name, 0.0) + memory.pss
    print(f"idle: {counted} processes, {WINDOW:.0f} s after {SETTLE:.0f} s settling")
    print(f"  PSS {pss / 2**20:8.0f} MB   RSS summed {rss / 2**20:8.0f} MB")
    print(f"  CPU {cpu / WINDOW * 100:8.1f} % of one core")
    largest = sorted(by_name.items(), key=lambda kv: -kv[1])[:8]
    print("  PSS by process: " + ", ".join(f"{n} {v / 2**20:.0f} MB" for n, v in largest))


def cpu_by_name(supervisor: int) -> dict[str, float]:
    """CPU seconds (user + system) used so far by each kind of process, summed over its
    processes and their children: `taskengine_gateway`, `postgres`, `nats-server`, ..."""
    used: dict[str, float] = {}
    for process in processes(supervisor):
        try:
            times = process.cpu_times()
            name = _name(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        used[name] = used.get(name, 0.0) + times.user + times.system
    return used


def _name(process: psutil.Process) -> str:
    """`taskengine_gateway`, `nats-server`, `postgres`, ...: what a reader would call it."""
    name = process.name()
    if name.startswith("taskengine_"):  # a service forked by `taskengine up`, by its title
        return name.split()[0]
    command = process.cmdline()
    if name.startswith("python") and "-m" in command:  # (nats-server's -m is its monitor port)
        return command[command.index("-m") + 1]
    return name
