"""The `taskengine` command for people, run for real against the system as `make up` starts
it: `jobs submit | list | show | logs | watch | cancel` over the gateway, and `subscribe`
following lifecycle events from JetStream (durable: a restart continues, nothing repeated)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import nats
import pytest
from taskengine_contracts import subjects
from taskengine_contracts.events import topic_of

from tests.support.system import ADMIN, running_system
from tests.support.waiting import wait_until

TASKENGINE = Path(sys.executable).parent / "taskengine"


@pytest.fixture(scope="module")
def system(postgres_url):
    with running_system(postgres_url, "cli") as system:
        with system.client() as admin:
            for name, value in (("max_jobs", 10), ("retry_limit", 0)):
                admin.post("/settings", json={"name": name, "setting": value})
        yield system


def env_for(system, **extra: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """The environment a person would have: the gateway, a client and its key."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKENGINE_")}
    return {
        **env,
        "TASKENGINE_URL": system.url,
        "TASKENGINE_CLIENT": ADMIN[0],
        "TASKENGINE_KEY": ADMIN[1],
        "TASKENGINE_DATA_DIR": str(system.root / "nowhere"),
        **extra,
    }


def taskengine(system, *args: str, env=None, timeout: float = 120) -> subprocess.CompletedProcess:  # type: ignore[no-untyped-def]
    return subprocess.run(
        [str(TASKENGINE), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or env_for(system),
    )


def ok_json(system, *args: str):  # type: ignore[no-untyped-def]
    result = taskengine(system, *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def submit(system, workflow: str, *params: str) -> int:  # type: ignore[no-untyped-def]
    flags = [arg for param in params for arg in ("--param", param)]
    answer = ok_json(system, "jobs", "submit", workflow, *flags)
    assert answer["result"] == "accepted"
    return int(answer["id"])


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_submit_watch_show_logs_and_list(system):
    job_id = submit(system, "echo", "greeting=hello", "count=3")
    watched = taskengine(system, "jobs", "watch", str(job_id), "--json")
    assert watched.returncode == 0, watched.stderr
    changes = json_lines(watched.stdout)
    assert changes[-1]["state"] == "succeeded" and changes[-1]["id"] == job_id
    states = [change["state"] for change in changes]
    assert len(states) == len(set(states))  # a line per change of state, not per poll

    job = ok_json(system, "jobs", "show", str(job_id))
    assert job["id"] == job_id and job["queue_state"] == "completed" and job["failed"] is False
    assert job["parameters"] == {"greeting": "hello", "count": 3}
    logs = ok_json(system, "jobs", "logs", str(job_id))
    assert {row["progname"] for row in logs} >= {"api", "worker"}
    assert any("hello" in row["message"] for row in logs)
    listed = ok_json(system, "jobs", "list", "--limit", "50")
    assert job_id in [row["id"] for row in listed]
    completed = ok_json(system, "jobs", "list", "--state", "completed", "--limit", "50")
    assert job_id in [row["id"] for row in completed]
    assert all(row["queue_state"] == "completed" for row in completed)


def test_submit_with_watch_follows_a_failing_job_and_exits_non_zero(system):
    result = taskengine(system, "jobs", "submit", "fail", "--param", "exit_code=3", "--watch")
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert "failed" in lines[-2] and "taskengine jobs logs" in lines[-1]  # plain text, piped
    assert "Traceback" not in result.stderr


def test_cancel_stops_a_running_job_and_watch_says_so(system):
    job_id = submit(system, "sleep", "seconds=60")
    with httpx.Client(base_url=system.url, headers={"client": ADMIN[0], "api-key": ADMIN[1]}) as c:
        wait_until(lambda: c.get(f"/jobs/{job_id}").json()["queue_state"] == "started")
    answer = ok_json(system, "jobs", "cancel", str(job_id))
    assert answer == {"id": job_id, "result": "Performed updates: queue_state=broken"}
    watched = taskengine(system, "jobs", "watch", str(job_id), "--json")
    assert watched.returncode == 1
    assert json_lines(watched.stdout)[-1]["state"] == "broken"
    again = taskengine(system, "jobs", "cancel", str(job_id))
    assert again.returncode == 1 and again.stderr.startswith("taskengine: 400 ")


def test_a_bad_key_is_a_clear_message_and_a_non_zero_exit(system):
    wrong = "wrong-key-000000000000wxyz"
    result = taskengine(system, "jobs", "list", "--key", wrong)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith("taskengine: 401 "), result.stderr
    assert "TASKENGINE_KEY" in result.stderr and "****wxyz" in result.stderr
    assert wrong not in result.stderr and "Traceback" not in result.stderr
    unknown = taskengine(system, "jobs", "show", "999999")
    assert unknown.returncode == 1 and "not found" in unknown.stderr
    nowhere = taskengine(system, "jobs", "list", "--url", "http://127.0.0.1:9")
    assert nowhere.returncode == 1 and "cannot reach the gateway" in nowhere.stderr


def test_without_flags_or_environment_it_uses_what_taskengine_up_left(system):
    """The gateway's URL from <data dir>/run/endpoints.json, the key from <data dir>/<client>.key
    (the demo client's, in a plain `make up`)."""
    key_file = system.data_dir / f"{ADMIN[0]}.key"
    key_file.write_text(ADMIN[1] + "\n")
    try:
        env = env_for(system, TASKENGINE_DATA_DIR=str(system.data_dir))
        for name in ("TASKENGINE_URL", "TASKENGINE_KEY"):
            env.pop(name)
        job_id = submit(system, "noop")
        result = taskengine(system, "jobs", "list", "--limit", "50", env=env)
        assert result.returncode == 0, result.stderr
        rows = [line.split("\t") for line in result.stdout.splitlines()]
        assert [str(job_id), "noop"] in [row[:2] for row in rows]  # tab-separated when piped
        missing = taskengine(system, "jobs", "list", env={**env, "TASKENGINE_CLIENT": "nobody"})
        assert missing.returncode == 1 and "no key for client 'nobody'" in missing.stderr
    finally:
        key_file.unlink()


def job_positions(system, *job_ids: int) -> list[int]:  # type: ignore[no-untyped-def]
    """The store positions of jobs' lifecycle events (these jobs', else every job's), in order:
    what a subscriber to taskengine.job.> is to see."""
    positions, after = [], 0
    while batch := system.store.events_after(after, 5000):
        for item in batch:
            job_id = getattr(item.event, "job_id", None)
            if topic_of(item.event).startswith("job.") and (not job_ids or job_id in job_ids):
                positions.append(item.position)
        after = batch[-1].position
    return positions


def settled(nats_url: str, durable: str) -> bool:
    """Whether the consumer has every event it delivered acknowledged."""

    async def check() -> bool:
        nc = await nats.connect(nats_url)
        try:
            info = await nc.jetstream().consumer_info(subjects.STREAM, durable)
        finally:
            await nc.close()
        return info.num_ack_pending == 0 and info.ack_floor.stream_seq == info.delivered.stream_seq

    return asyncio.run(check())


class Subscriber:
    """`taskengine subscribe` as a process of its own, its output in a file."""

    def __init__(self, system, path: Path, *args: str):  # type: ignore[no-untyped-def]
        self.path = path
        env = {**os.environ, "TASKENGINE_NATS_URL": system.nats_url}
        with path.open("a") as out:
            self.process = subprocess.Popen(
                [str(TASKENGINE), "subscribe", "--json", *args],
                stdout=out,
                stderr=subprocess.PIPE,
                env=env,
            )

    def lines(self) -> list[dict]:
        return json_lines(self.path.read_text())

    def kill(self) -> str:
        """SIGKILL: no chance to clean up, as in a crash; returns what it said on stderr."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)
        assert self.process.stderr is not None
        return self.process.stderr.read().decode()


def succeeded(job_id: int):  # type: ignore[no-untyped-def]
    def check(lines: list[dict]) -> bool:
        return any(
            line["event"]["type"] == "job.succeeded" and line["event"]["job_id"] == job_id
            for line in lines
        )

    return check


def test_subscribe_durable_resumes_after_a_crash_without_repeating(system, tmp_path):
    output = tmp_path / "events.jsonl"
    first = submit(system, "echo", "n=1")
    subscriber = Subscriber(system, output, "--durable", "cli-audit", "--from", "0")
    try:
        wait_until(lambda: succeeded(first)(subscriber.lines()), timeout=60, what="job 1 seen")
        wait_until(lambda: settled(system.nats_url, "cli-audit"), what="every event acked")
    finally:
        subscriber.kill()  # the consumer stays, as after a crash
    second = submit(system, "echo", "n=2")  # while no subscriber runs
    with httpx.Client(base_url=system.url, headers={"client": ADMIN[0], "api-key": ADMIN[1]}) as c:
        wait_until(lambda: c.get(f"/jobs/{second}").json()["queue_state"] == "completed")
    again = Subscriber(system, output, "--durable", "cli-audit", "--from", "0")
    try:
        wait_until(lambda: succeeded(second)(again.lines()), timeout=60, what="job 2 seen")
    finally:
        said = again.kill()
    assert "resuming cli-audit: --from applies only when it is created" in said
    lines = again.lines()
    positions = [line["position"] for line in lines]
    assert len(positions) == len(set(positions)), "an acknowledged event came again"
    # None lost (in store order but for an event the killed process's last pull took: it comes
    # again after ack_wait, after later ones).
    assert sorted(positions) == job_positions(system)[: len(positions)]
    assert set(job_positions(system, first, second)) <= set(positions)
    assert all(line["subject"] == "taskengine." + line["event"]["type"] for line in lines)


def test_subscribe_from_a_position_starts_after_it(system, tmp_path):
    early = submit(system, "noop")
    with httpx.Client(base_url=system.url, headers={"client": ADMIN[0], "api-key": ADMIN[1]}) as c:
        wait_until(lambda: c.get(f"/jobs/{early}").json()["queue_state"] == "completed")
    start = job_positions(system, early)[-1]
    late = submit(system, "noop")
    subscriber = Subscriber(system, tmp_path / "from.jsonl", "--from", str(start))
    try:
        wait_until(lambda: succeeded(late)(subscriber.lines()), timeout=60, what="the late job")
    finally:
        subscriber.kill()
    lines = subscriber.lines()
    assert lines and all(line["position"] > start for line in lines)
    assert early not in {line["event"]["job_id"] for line in lines}


def on_a_terminal(
    system, *args: str, env=None, until=None, timeout: float = 120
) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    """Runs the command with a pseudo-terminal as its stdout (a person at a terminal); while it
    runs, `until()` may act on the system. Returns its exit status and what it drew."""
    import pty  # POSIX only, as the system is

    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [str(TASKENGINE), *args],
        stdout=follower,
        stderr=subprocess.STDOUT,
        env={**(env or env_for(system)), "COLUMNS": "120", "TERM": "xterm-256color"},
    )
    os.close(follower)
    drawn = bytearray()

    def read() -> bool:
        import select

        while select.select([leader], [], [], 0.05)[0]:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the command ended and closed its side
                return process.poll() is not None
            if not chunk:
                break
            drawn.extend(chunk)
        return process.poll() is not None

    try:
        if until:
            until()
        wait_until(read, timeout=120, every=0.05, what=f"taskengine {' '.join(args)}")
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        os.close(leader)
    return process.returncode, drawn.decode(errors="replace")


def test_on_a_terminal_jobs_are_a_coloured_table(system):
    job_id = submit(system, "noop")
    status, drawn = on_a_terminal(system, "jobs", "list", "--limit", "50")
    assert status == 0, drawn
    assert "\x1b[" in drawn  # colours
    text = re.sub(r"\x1b\[[0-9;]*m", "", drawn)
    assert "┃ id" in text and "┃ workflow" in text and f"│ {job_id} " in text  # a table


def test_on_a_terminal_replay_and_republish_show_progress(system):
    env = {**env_for(system), "TASKENGINE_DATABASE_URL": system.database_url}
    status, drawn = on_a_terminal(system, "replay", env=env)
    assert status == 0, drawn
    assert "replaying" in drawn and "events/s" in drawn and "ETA" in drawn
    assert "identical" in drawn

    def restart_the_relay() -> None:  # it publishes again from where republish put it
        wait_until(lambda: system.store.tracked("relay") == 0, what="the relay rewound")
        system.wait_restarted("relay", system.kill("relay"))

    status, drawn = on_a_terminal(
        system, "republish", "--after", "0", env=env, until=restart_the_relay
    )
    assert status == 0, drawn
    assert "republishing" in drawn and "events/s" in drawn
    done, total = re.findall(r"(\d+)/(\d+)", re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", drawn))[-1]
    assert done == total and int(total) > 0  # it followed the relay to the store's head
