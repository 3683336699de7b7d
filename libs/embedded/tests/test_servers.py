"""Real nats-server and PostgreSQL processes started from the wheels; no mocks."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import nats
import psycopg
import pytest
from nats.js import api
from taskengine_embedded import (
    EmbeddedNats,
    EmbeddedNatsCluster,
    EmbeddedPostgres,
    EmbeddedServerError,
    free_port,
)
from taskengine_embedded._nobody import as_nobody, must_drop_root
from taskengine_embedded._process import descendants, port_open

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def data_root() -> Iterator[Path]:
    # pytest's tmp_path lives under a root-only dir that uid 65534 (postgres as root) cannot enter
    root = Path(tempfile.mkdtemp(prefix="te-embedded-"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _wait_closed(port: int, timeout: float = 5) -> bool:
    deadline = time.monotonic() + timeout
    while port_open(port):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_free_port_avoids_busy_port() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        assert free_port(taken) != taken
    assert free_port(taken) == taken


async def test_nats_jetstream_roundtrip(data_root: Path) -> None:
    server = EmbeddedNats(data_root / "nats")
    url = server.start()
    assert server.port != 4222  # the machine's own nats-server keeps 4222
    assert server.pid is not None
    try:
        nc = await nats.connect(url)
        js = nc.jetstream()
        await js.add_stream(name="EMBEDDED", subjects=["embedded.>"])
        ack = await js.publish("embedded.hello", b"hi")
        assert ack.stream == "EMBEDDED" and ack.seq == 1
        msg = await js.get_msg("EMBEDDED", 1)
        assert msg.data == b"hi"
        await nc.close()
    finally:
        server.stop()
    assert server.pid is None
    assert _wait_closed(server.port)
    assert (data_root / "nats" / "jetstream").is_dir()


@pytest.mark.parametrize("given", [None, "2"])
def test_nats_runs_go_on_one_thread_unless_told_otherwise(
    data_root: Path, monkeypatch: pytest.MonkeyPatch, given: str | None
) -> None:
    if given is None:
        monkeypatch.delenv("GOMAXPROCS", raising=False)
    else:
        monkeypatch.setenv("GOMAXPROCS", given)
    server = EmbeddedNats(data_root / "nats")
    server.start()
    try:
        assert server.pid is not None
        environ = Path(f"/proc/{server.pid}/environ").read_bytes().split(b"\0")
        assert f"GOMAXPROCS={given or 1}".encode() in environ
    finally:
        server.stop()


async def test_a_nats_cluster_keeps_a_replicated_stream_when_its_leader_is_killed(
    data_root: Path,
) -> None:
    cluster = EmbeddedNatsCluster(data_root / "cluster", size=3)
    url = cluster.start()
    try:
        assert url == ",".join(f"nats://127.0.0.1:{node.port}" for node in cluster.nodes)
        assert len({node.port for node in cluster.nodes}) == 3
        nc = await nats.connect(url.split(","), reconnect_time_wait=0.1)
        js = nc.jetstream()
        config = api.StreamConfig(name="R3", subjects=["r3.>"], num_replicas=3)
        await js.add_stream(config)

        async def publish(subject: str, n: int) -> None:
            # No leader yet (a new stream's first election; the survivors' after a kill): the
            # publish finds no responder until one is elected.
            deadline = time.monotonic() + 30
            while True:
                try:
                    once = {"Nats-Msg-Id": f"{subject}-{n}"}  # a retry after a lost ack
                    await js.publish(subject, str(n).encode(), timeout=1, headers=once)
                    return
                except (nats.errors.Error, TimeoutError):
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.2)

        for n in range(5):
            await publish("r3.before", n)
        info = await js.stream_info("R3")
        assert info.cluster is not None and info.cluster.leader is not None
        assert len(info.cluster.replicas or []) == 2  # the leader and two followers
        leader = cluster.node(info.cluster.leader)
        os.kill(leader.pid or 0, signal.SIGKILL)
        for n in range(5):
            await publish("r3.after", n)
        info = await js.stream_info("R3")
        assert info.state.messages == 10
        assert info.cluster is not None and info.cluster.leader != leader.server_name
        await nc.close()

        assert leader.died() == -signal.SIGKILL
        leader.start()  # the same name, ports and store: it rejoins
        cluster.wait_healthy()
    finally:
        cluster.stop()
    assert all(node.pid is None for node in cluster.nodes)


def test_nats_fixed_port_in_use_is_reported(data_root: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        server = EmbeddedNats(data_root / "nats", port=busy.getsockname()[1])
        with pytest.raises(EmbeddedServerError, match="already in use"):
            server.start()


def test_postgres_data_survives_restart(data_root: Path) -> None:
    pg = EmbeddedPostgres(data_root / "pg")
    with pg:
        assert pg.port != 5432  # the machine's own PostgreSQL keeps 5432
        assert pg.url.endswith("/taskengine")
        with psycopg.connect(pg.url, autocommit=True) as conn:
            conn.execute("CREATE TABLE t (v text)")
            conn.execute("INSERT INTO t VALUES ('kept')")
    assert pg.pid is None
    assert _wait_closed(pg.port)

    with EmbeddedPostgres(data_root / "pg") as again:
        with psycopg.connect(again.url) as conn:
            assert conn.execute("SELECT v FROM t").fetchall() == [("kept",)]


def test_postgres_restarts_after_kill_with_recycled_pid(data_root: Path) -> None:
    pg = EmbeddedPostgres(data_root / "pg", database="other")
    pg.start()
    with psycopg.connect(pg.url, autocommit=True) as conn:
        conn.execute("CREATE TABLE t AS SELECT 1 AS v")
    pid = pg.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)  # a crash: postmaster.pid stays behind
    pg.stop()
    pid_file = data_root / "pg" / "postmaster.pid"
    assert pid_file.exists()
    # simulate pid reuse: the stale file now names a live process that is not postgres,
    # owned by the server's uid (postgres itself treats a pid it may not signal as stale)
    sleeper = ["sleep", "60"]
    squatter = subprocess.Popen(as_nobody(sleeper) if must_drop_root() else sleeper)
    try:
        lines = pid_file.read_text().splitlines()
        pid_file.write_text("\n".join([str(squatter.pid), *lines[1:]]) + "\n")
        with pg, psycopg.connect(pg.url) as conn:
            assert conn.execute("SELECT v FROM t").fetchone() == (1,)
    finally:
        squatter.kill()
        squatter.wait()


def _dead(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")  # killed; only waiting for its new parent to reap it


def test_postgres_stop_timeout_kills_children_too(data_root: Path) -> None:
    pg = EmbeddedPostgres(data_root / "pg")
    pg.start()
    with psycopg.connect(pg.url, autocommit=True) as conn:
        conn.execute("SELECT 1")
        assert pg.pid is not None
        children = descendants(pg.pid)
        assert children  # checkpointer, walwriter, this connection's backend...
        pg.stop(timeout=0)  # no time for a fast shutdown: straight to SIGKILL
    assert all(_dead(pid) for pid in children)
    with pg:  # and the killed cluster starts again
        assert pg.pid is not None


def test_postgres_start_failure_shows_log_tail(data_root: Path) -> None:
    pg = EmbeddedPostgres(data_root / "pg")
    pg.start()
    pg.stop()
    with open(data_root / "pg" / "postgresql.conf", "a") as conf:
        conf.write("\nno_such_setting_here = 1\n")
    with pytest.raises(RuntimeError, match="no_such_setting_here") as excinfo:
        pg.start()
    assert "exited with code" in str(excinfo.value)
    assert pg.pid is None


@pytest.mark.skipif(os.geteuid() != 0, reason="uid 65534 is only used when running as root")
def test_postgres_untraversable_parent_is_named(data_root: Path) -> None:
    locked = data_root / "locked"
    locked.mkdir(mode=0o700)
    with pytest.raises(EmbeddedServerError, match=re.escape(str(locked))):
        EmbeddedPostgres(locked / "pg").start()


def test_postgres_demands_the_generated_password_kept_private(data_root: Path) -> None:
    with EmbeddedPostgres(data_root / "pg") as pg:
        password_file = pg.password_file
        assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
        assert password_file.stat().st_uid == os.geteuid()
        password = password_file.read_text().strip()
        assert len(password) >= 24 and f":{password}@" in pg.url
        hba = (data_root / "pg" / "pg_hba.conf").read_text()
        rules = [line.split() for line in hba.splitlines() if line.strip()[:1] not in ("", "#")]
        assert rules and all(rule[-1] == "scram-sha-256" for rule in rules), hba
        with psycopg.connect(pg.url) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        without = pg.url.replace(f":{password}@", "@")
        for refused in (without, pg.url.replace(password, password[::-1])):
            with pytest.raises(psycopg.OperationalError, match="password"):
                psycopg.connect(refused, connect_timeout=5)
        if must_drop_root():  # the uid PostgreSQL runs as cannot read it either
            peek = subprocess.run(as_nobody(["cat", str(password_file)]), capture_output=True)
            assert peek.returncode != 0 and password.encode() not in peek.stdout


def test_postgres_made_with_trust_gets_a_password_on_next_start(data_root: Path) -> None:
    pg = EmbeddedPostgres(data_root / "pg")
    with pg, psycopg.connect(pg.url, autocommit=True) as conn:
        conn.execute("CREATE TABLE t AS SELECT 'kept' AS v")
    # what earlier versions left: initdb --auth=trust's rules, no password file, no password
    hba = data_root / "pg" / "pg_hba.conf"
    hba.write_text("local all all trust\nhost all all 127.0.0.1/32 trust\n")
    pg.password_file.unlink()
    with pg, psycopg.connect(pg.url) as conn:
        assert conn.execute("SELECT v FROM t").fetchone() == ("kept",)
        assert "trust" not in hba.read_text()
        assert stat.S_IMODE(pg.password_file.stat().st_mode) == 0o600
        with pytest.raises(psycopg.OperationalError, match="password"):
            psycopg.connect(f"postgresql://taskengine@127.0.0.1:{pg.port}/taskengine")


def test_a_killed_server_is_started_again_on_its_port_with_its_data(data_root: Path) -> None:
    server = EmbeddedNats(data_root / "nats")
    url = server.start()
    try:
        assert server.died() is None
        os.kill(server.pid or 0, signal.SIGKILL)

        def died() -> int | None:
            return server.died()

        deadline = time.monotonic() + 10
        while (code := died()) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert code == -signal.SIGKILL and server.pid is None
        assert server.start() == url  # the same port: clients hold this URL
    finally:
        server.stop()
