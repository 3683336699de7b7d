"""Process plumbing shared by the embedded servers: ports, spawning, readiness, shutdown."""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

LOCALHOST = "127.0.0.1"
_POLL_INTERVAL = 0.05
_LOG_TAIL_LINES = 40
_START_ATTEMPTS = 3
_TRANSIENT_RETRY_DELAY = 0.2
_KILL_GRACE = 5.0


class EmbeddedServerError(RuntimeError):
    """An embedded server could not be started; the message carries the tail of its log."""

    def __init__(self, message: str, log_tail: str = "") -> None:
        super().__init__(f"{message}\n--- log tail ---\n{log_tail}" if log_tail else message)
        self.log_tail = log_tail

    @property
    def address_in_use(self) -> bool:
        return "address already in use" in self.log_tail.lower()


def port_open(port: int, host: str = LOCALHOST, timeout: float = 0.5) -> bool:
    """True if something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _port_bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR like the servers themselves, so TIME_WAIT leftovers do not count as busy
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOCALHOST, port))
        except OSError:
            return False
    return True


def free_port(preferred: int | None = None) -> int:
    """`preferred` if nothing listens on 127.0.0.1:preferred, else a port chosen by the OS."""
    if preferred is not None and not port_open(preferred) and _port_bindable(preferred):
        return preferred
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOCALHOST, 0))
        port: int = sock.getsockname()[1]
        return port


def child_env() -> dict[str, str]:
    """The caller's environment minus PG* variables, which would silently retarget libpq tools."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"  # messages the log-tail checks look for stay in English
    return env


def descendants(pid: int) -> list[int]:
    """Pids of all descendants of `pid`, read from /proc (empty where /proc is unavailable)."""
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            # comm may contain spaces and parentheses; ppid is the second field after the last ')'
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # the process exited while we looked
        children.setdefault(ppid, []).append(int(entry))
    found: list[int] = []
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state in ("Z", "X")  # dead, only waiting to be reaped by its new parent


def _wait_gone(pids: Sequence[int], timeout: float) -> None:
    # SIGKILL lands only once a process leaves an uninterruptible syscall such as fsync
    deadline = time.monotonic() + timeout
    while not all(_gone(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(_POLL_INTERVAL)


class ServerProcess:
    """One long-running child process whose stdout/stderr are appended to a log file."""

    name = "server"
    stop_signal = signal.SIGTERM
    defaults: Mapping[str, str] = {}
    """Environment variables the server starts with unless the caller's environment sets them."""

    def __init__(self, log_path: Path, port: int | None, default_port: int | None) -> None:
        self.log_path = log_path
        self._port_fixed = port is not None
        # never collide with a server already on the well-known port: fall back to a free one
        self.port = port if port is not None else free_port(default_port)
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    @property
    def pid(self) -> int | None:
        """Pid of the running server, None when not running."""
        return self._proc.pid if self.running and self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """Last lines this run wrote to the log file."""
        try:
            with open(self.log_path, "rb") as log:
                log.seek(self._log_offset)
                text = log.read().decode("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _spawn(self, argv: Sequence[str], cwd: Path, env: Mapping[str, str]) -> None:
        with open(self.log_path, "ab") as log:
            # remember where this run starts so error messages show only its own output
            self._log_offset = log.tell()
            self._proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=dict(env),
                close_fds=True,
                # own session: a terminal's Ctrl-C reaches the owner, which stops us last
                start_new_session=True,
            )
        # a normal interpreter exit must not leave the server behind
        atexit.register(self.stop)

    def _launch(
        self,
        argv: Callable[[], Sequence[str]],
        cwd: Path,
        deadline: float,
        transient: Callable[[EmbeddedServerError], bool] = lambda err: False,
    ) -> None:
        """Spawn `argv()` until `_ready()` holds, re-picking an auto port if it got taken."""
        port_retries = _START_ATTEMPTS - 1
        while True:
            if self._port_fixed and port_open(self.port):
                raise EmbeddedServerError(f"port {self.port} on {LOCALHOST} is already in use")
            self._spawn(argv(), cwd=cwd, env={**self.defaults, **child_env()})
            try:
                self._wait_until(self._ready, deadline)
                # clients were handed this port: a restart must come back on it
                self._port_fixed = True
                return
            except EmbeddedServerError as err:
                if err.address_in_use and port_retries > 0:
                    # another process bound the port between free_port() and the server's bind
                    port_retries -= 1
                    self.port = self.port if self._port_fixed else free_port()
                elif transient(err) and time.monotonic() < deadline:
                    time.sleep(_TRANSIENT_RETRY_DELAY)
                else:
                    raise

    def died(self) -> int | None:
        """The exit code if the server exited on its own (it is then forgotten, so `start()`
        runs it again, on the same port); None while it runs or was never started."""
        if self._proc is None or self._proc.poll() is None:
            return None
        code = self._proc.returncode
        self._reap()
        return code

    def _ready(self) -> bool:
        raise NotImplementedError

    def _wait_until(self, ready: Callable[[], bool], deadline: float) -> None:
        """Poll `ready` until true; raise with the log tail if the process dies or time is up."""
        assert self._proc is not None
        while True:
            code = self._proc.poll()
            if code is not None:
                self._reap()
                raise EmbeddedServerError(
                    f"{self.name} exited with code {code} while starting (log: {self.log_path})",
                    self.log_tail(),
                )
            if ready():
                return
            if time.monotonic() > deadline:
                tail = self.log_tail()
                self.stop()
                raise EmbeddedServerError(
                    f"{self.name} did not become ready in time (log: {self.log_path})", tail
                )
            time.sleep(_POLL_INTERVAL)

    def _terminate(self, sig: signal.Signals, timeout: float) -> None:
        """Send `sig`, wait up to `timeout`, then SIGKILL the server and any children it left."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                # collect children first: once the parent dies they are reparented and untraceable
                stragglers = descendants(proc.pid)
                proc.kill()
                for pid in stragglers:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except OSError:
                        pass
                proc.wait()
                _wait_gone(stragglers, _KILL_GRACE)
        self._reap()

    def _reap(self) -> None:
        atexit.unregister(self.stop)
        self._proc = None

    def start(self, timeout: float = 20) -> str:
        raise NotImplementedError

    def stop(self, timeout: float = 10) -> None:
        """Send `stop_signal`, wait up to `timeout`, then SIGKILL."""
        self._terminate(self.stop_signal, timeout)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
