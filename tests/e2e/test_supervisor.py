"""`taskengine up` as a user runs it: embedded servers, demo client, restart, clean stop."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from contextlib import suppress
from pathlib import Path

import httpx
from taskengine_cli.supervisor import SERVICES
from taskengine_embedded import free_port

from tests.support.servers import scratch_dir
from tests.support.system import BIN
from tests.support.waiting import wait_until


def processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line mentions `text` (e.g. the data dir)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (proc / "stat").read_text().split(") ")[1][0]
        except (OSError, IndexError):
            continue
        if text in cmdline and state != "Z":
            found.append(int(proc.name))
    return found


def start(env: dict[str, str], log: Path) -> subprocess.Popen:
    process = subprocess.Popen(
        [str(BIN / "taskengine"), "up"],
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{env['TASKENGINE_PORT']}/"

    def alive() -> bool:
        assert process.poll() is None, log.read_text()
        try:
            return httpx.get(url, timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(alive, timeout=90, what="taskengine up")
    return process


def assert_services_are_named_forks(data_dir: Path) -> None:
    """Each service runs under its own name in `ps`, holding none of the supervisor's files."""
    lock = str(data_dir / "run" / "supervisor.lock")
    for service in SERVICES:
        pid = int((data_dir / "run" / f"{service}.pid").read_text())
        title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        assert title.startswith(f"taskengine_{service} ({service})"), title
        opened = {}
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            # A running service opens and closes sockets: one listed may be gone when read
            # (the files looked for stay open for the process's life).
            with suppress(FileNotFoundError):
                opened[int(fd.name)] = os.readlink(fd)
        assert opened[1] == opened[2] == str(data_dir / "logs" / f"{service}.log")
        beyond = [name for fd, name in opened.items() if fd > 2]
        assert lock not in beyond and not any(n.endswith(".log") for n in beyond), opened


def test_embedded_default_keeps_data_across_restarts_and_leaves_no_orphans():
    root = scratch_dir("te-up-")
    data_dir = root / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKENGINE_")}
    env |= {"TASKENGINE_DATA_DIR": str(data_dir), "TASKENGINE_PORT": str(free_port())}
    url = f"http://127.0.0.1:{env['TASKENGINE_PORT']}"
    try:
        first = start(env, root / "up.log")

        def banner() -> str:
            text = (root / "up.log").read_text()
            return text if "Ctrl-C stops everything" in text else ""

        printed = wait_until(banner, what="the banner")
        key = (data_dir / "demo-client.key").read_text().strip()
        assert f"client demo-client: key {key}" in printed and url in printed
        assert oct((data_dir / "demo-client.key").stat().st_mode)[-3:] == "600"
        headers = {"client": "demo-client", "api-key": key}
        job = httpx.post(url + "/job", json={"job": {"workflow": "echo"}}, headers=headers).json()

        def completed(job_id: int) -> bool:
            response = httpx.get(f"{url}/jobs/{job_id}", headers=headers)
            return response.json()["queue_state"] == "completed"

        wait_until(lambda: completed(job["id"]), what="the job to complete")
        assert_services_are_named_forks(data_dir)
        # A second `up` on the same data dir, or on a busy port, refuses clearly.
        twin = subprocess.run(
            [str(BIN / "taskengine"), "up"], env=env, capture_output=True, text=True, timeout=30
        )
        assert twin.returncode == 1 and "already running" in twin.stderr
        other = {**env, "TASKENGINE_DATA_DIR": str(root / "other")}
        busy = subprocess.run(
            [str(BIN / "taskengine"), "up"], env=other, capture_output=True, text=True, timeout=30
        )
        assert busy.returncode == 1 and "is in use" in busy.stderr

        started_processes = processes_mentioning(str(data_dir))
        assert len(started_processes) >= 2  # at least the embedded PostgreSQL and NATS

        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=60) == 0
        wait_until(
            lambda: not processes_mentioning(str(data_dir)),
            timeout=60,
            what="every child to be gone",
        )
        leftover = [
            p
            for p in started_processes
            if Path(f"/proc/{p}").exists()
            and (Path(f"/proc/{p}/stat").read_text().split(") ")[1][0] != "Z")
        ]
        assert leftover == []

        second = start(env, root / "up.log")
        try:
            assert (data_dir / "demo-client.key").read_text().strip() == key
            assert completed(job["id"])  # the first run's job survived the restart
            again = httpx.post(url + "/job", json={"job": {"workflow": "noop"}}, headers=headers)
            assert again.json()["id"] > job["id"]  # numbers never reused (a block may be skipped)
            wait_until(lambda: completed(again.json()["id"]), what="a job after restart")
            events = subprocess.run(
                [str(BIN / "taskengine"), "events", "--job", str(job["id"])],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            types = [json.loads(line)["event"]["type"] for line in events.stdout.splitlines()]
            assert types[0] == "job.submitted" and "job.succeeded" in types, events.stderr
        finally:
            second.send_signal(signal.SIGTERM)
            second.wait(timeout=60)
    finally:
        shutil.rmtree(root, ignore_errors=True)
