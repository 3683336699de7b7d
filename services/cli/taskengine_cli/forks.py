"""Service processes as forks of the supervisor, which imports the services' code once.

A new interpreter spends 1.1–1.8 s of CPU importing one service: seven of them at once when
the stack starts, one more after each crash. The supervisor instead imports every service
once (`preload`), and each service process is a fork of it (`Forked.start`): it starts at once
and shares the imported pages with its siblings until it writes to them.

A fork copies the whole process, so the supervisor forks only while it runs a single thread
and no event loop; the child leaves behind what was the supervisor's (signal handlers, open
files, exit handlers, cached settings) before it runs the service's `__main__`.
"""

from __future__ import annotations

import gc
import importlib
import logging
import os
import random
import runpy
import signal
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from setproctitle import setproctitle
from taskengine_core.config import engine_settings


def preload(services: tuple[str, ...]) -> None:
    """Imports each service's code into this process."""
    for name in services:
        importlib.import_module(f"taskengine_{name}.__main__")
    gc.freeze()  # collections leave the imported objects alone: forks keep sharing their pages


@dataclass
class Forked:
    """A service process forked from this one: what `subprocess.Popen` is to a spawned one."""

    pid: int
    returncode: int | None = None

    @classmethod
    def start(cls, service: str, title: str, env: dict[str, str], log_path: Path) -> Forked:
        """Runs `taskengine_<service>` in a child process with environment `env`, its output
        appended to `log_path`, in a session of its own, named `title` in `ps`."""
        if threading.active_count() > 1:
            raise RuntimeError(f"not forking {service}: this process runs other threads")
        sys.stdout.flush()
        sys.stderr.flush()
        log = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        pid = os.fork()
        if pid == 0:
            _become(service, title, env, log)
        os.close(log)
        return cls(pid)

    def poll(self) -> int | None:
        """The exit code once it has exited (minus the signal that killed it), else None."""
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout or 0.0)
            time.sleep(0.02)
        return code


def _become(service: str, title: str, env: dict[str, str], log: int) -> NoReturn:
    """The child's side of `Forked.start`: never returns."""
    code = 1
    try:
        os.setsid()
        os.dup2(log, 1)
        os.dup2(log, 2)
        stdin = os.open(os.devnull, os.O_RDONLY)
        os.dup2(stdin, 0)
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))  # the supervisor's lock, logs and servers
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_DFL)
        setproctitle(title)  # first: it moves the environment out of the way of the title
        os.environ.clear()
        os.environ.update(env)
        engine_settings.cache_clear()  # the supervisor's, read from its environment
        random.seed()  # not the supervisor's sequence, shared by every sibling
        module = f"taskengine_{service}"
        sys.modules.pop(f"{module}.__main__", None)  # preloaded, it is run afresh as __main__
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as leaving:
        if isinstance(leaving.code, int):
            code = leaving.code
        elif leaving.code is None:
            code = 0
        else:
            print(leaving.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
    finally:
        # The supervisor's exit handlers (which stop the servers) are not the child's to run.
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: S110  (a closed log is no reason not to exit)
                pass
        os._exit(code)
