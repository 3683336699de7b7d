"""`taskengine replay`'s folding processes end with the command, however it ends: forked, a
worker holds the pool's pipes itself and would otherwise wait on them forever."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

# A command that starts the replay's folding processes as `replay` does, prints their pids
# and waits to be killed.
COMMAND = """
import multiprocessing, os, time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from taskengine_cli import ops

forking = multiprocessing.get_context("fork")
with ProcessPoolExecutor(
    2, forking, initializer=ops._start_folding,
    initargs=(os.getpid(), "postgresql://127.0.0.1:1/none", "stored_events"),
) as pool:
    pool.submit(os.getpid).result()
    me = str(os.getpid())
    children = [
        p.name for p in Path("/proc").iterdir()
        if p.name.isdigit() and (p / "stat").read_text().rsplit(")", 1)[1].split()[1] == me
    ]
    print(" ".join(children), flush=True)
    time.sleep(600)
"""


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_folding_processes_end_when_the_command_is_killed_with_9():
    command = subprocess.Popen([sys.executable, "-c", COMMAND], stdout=subprocess.PIPE, text=True)
    try:
        assert command.stdout is not None
        workers = [int(pid) for pid in command.stdout.readline().split()]
        assert len(workers) == 2 and all(alive(pid) for pid in workers)
    finally:
        command.send_signal(signal.SIGKILL)
        command.wait()
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = [pid for pid in workers if alive(pid)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert left == []
