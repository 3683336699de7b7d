"""Keeping client-given steps away from the secrets of the process that runs them.

A step of the `inline` workflow is a command a client chose. It runs as another user (by
default 65534, nobody) with a scratch directory of its own as its home and working directory,
and an environment holding only PATH, LANG, TZ, `LC_*` and what the step is meant to see. So
it can read neither the runner's environment (`/proc/<pid>/environ`: the database URL, the
webhook key, other attempts' tokens) nor its files. Runners also make themselves not dumpable,
so even a process of their own user cannot read their environment.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pwd
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from taskengine_core.config import EngineSettings

_PR_SET_DUMPABLE = 4
_CAP_SETGID, _CAP_SETUID = 6, 7
KEPT = ("PATH", "LANG", "TZ")
"""What a confined step keeps of its runner's environment (and `LC_*`)."""


def not_dumpable() -> None:
    """Makes this process's `/proc/<pid>/environ` (and memory) unreadable to other processes
    of its own user: only root may read them then."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)


def can_switch_user() -> bool:
    """Whether this process may run a child as another user (CAP_SETUID and CAP_SETGID)."""
    try:
        with open("/proc/self/status") as status:
            line = next(x for x in status if x.startswith("CapEff:"))
        caps = int(line.split()[1], 16)
    except (OSError, StopIteration, ValueError, IndexError):
        return os.geteuid() == 0
    return bool(caps >> _CAP_SETUID & 1 and caps >> _CAP_SETGID & 1)


@dataclass(frozen=True)
class Confinement:
    """How this runner runs client-given steps: as `uid`:`gid` (None: as its own user, which
    the operator allowed), or not at all (`refused` says why)."""

    uid: int | None
    gid: int | None
    refused: str = ""

    @classmethod
    def of(cls, config: EngineSettings) -> Confinement:
        uid, gid = config.step_ids
        if can_switch_user():
            return cls(uid, gid)
        if config.step_same_user:
            return cls(None, None)
        return cls(
            uid,
            gid,
            f"inline steps are refused: this runner (uid {os.geteuid()}) cannot run them as"
            f" uid {uid} (it needs root or CAP_SETUID and CAP_SETGID), and running them as"
            " its own user would let them read its secrets (TASKENGINE_STEP_SAME_USER=true"
            " allows that where the runner holds nothing secret)",
        )

    def scratch(self) -> str:
        """A fresh directory the steps own: their home and working directory."""
        path = tempfile.mkdtemp(prefix="taskengine-step-")
        if self.uid is not None and self.gid is not None:
            os.chown(path, self.uid, self.gid)
        return path

    @staticmethod
    def remove(path: str) -> None:
        shutil.rmtree(path, ignore_errors=True)

    def process_options(
        self, scratch: str, env: dict[str, str], then: Callable[[], None]
    ) -> dict[str, Any]:
        """What `create_subprocess_exec` needs to run a step confined: its directory, its
        environment (`env`: the attempt's and the step's own variables) and, in the child
        before it runs the command, the switch of user and then `then`."""
        kept = {
            name: value
            for name, value in os.environ.items()
            if name in KEPT or name.startswith("LC_")
        }
        base = {**kept, "HOME": scratch, "TMPDIR": scratch}
        if self.uid is not None:
            with contextlib.suppress(KeyError):
                base["USER"] = base["LOGNAME"] = pwd.getpwuid(self.uid).pw_name
        uid, gid = self.uid, self.gid

        def become() -> None:
            # Here, not `user=`/`group=`: uvloop's subprocesses take no such arguments.
            if uid is not None and gid is not None:
                os.setgroups([])
                os.setgid(gid)
                os.setuid(uid)
            then()  # after the switch, which would clear a parent-death signal set before

        return {"cwd": scratch, "env": {**base, **env}, "preexec_fn": become}
