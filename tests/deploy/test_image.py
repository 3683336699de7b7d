"""The Dockerfile, read statically (no container engine here): what it copies and runs."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import tomllib
from pathlib import Path

from tests.deploy.files import ROOT, check_command

SECRET_NAMES = re.compile(r"KEY|PASSWORD|SECRET|TOKEN|DATABASE_URL|BOOTSTRAP_CLIENT", re.I)


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        lines.append(pending + line)
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def arg_defaults() -> dict[str, str]:
    return dict(arg.split("=", 1) for op, arg in instructions() if op == "ARG" and "=" in arg)


def exec_form(arguments: str) -> list[str]:
    return json.loads(arguments) if arguments.startswith("[") else shlex.split(arguments)


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore keeps `path` (or a folder holding it) out of the build context."""
    parts = Path(path).parts
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.removeprefix("!").strip("/")
        variants = {pattern, pattern.removeprefix("**/")}
        for prefix in prefixes:
            if any(
                fnmatch.fnmatch(prefix, p)
                or (p != pattern and fnmatch.fnmatch(Path(prefix).name, p))
                for p in variants
            ):
                excluded = not negate
    return excluded


def dockerignore() -> list[str]:
    text = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in text if line.strip() and not line.startswith("#")]


def test_it_is_a_multi_stage_build_on_python_slim():
    args = arg_defaults()
    bases = [
        re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], arguments.split()[0])
        for op, arguments in instructions()
        if op == "FROM"
    ]
    assert len(bases) >= 2, "a build stage and a runtime stage"
    assert set(bases) == {"python:3.11-slim"}


def test_dependencies_come_from_the_lockfile_without_dev_tools():
    runs = [arguments for op, arguments in instructions() if op == "RUN"]
    syncs = [run for run in runs if "uv sync" in run]
    assert syncs, "the build installs with `uv sync`"
    for flag in ("--all-packages", "--frozen", "--no-dev"):
        assert all(flag in run.split() for run in syncs), flag


def test_every_copied_source_exists_and_is_in_the_build_context():
    patterns = dockerignore()
    copied = []
    for op, arguments in instructions():
        if op not in ("COPY", "ADD"):
            continue
        words = [w for w in exec_form(arguments) if not w.startswith("--")]
        if "--from=" in arguments:  # from another stage, not from the context
            continue
        for source in words[:-1]:
            assert (ROOT / source).exists(), f"COPY {source}: no such file"
            assert not ignored(source, patterns), f"COPY {source}: excluded by .dockerignore"
            copied.append(source)
    assert {"pyproject.toml", "uv.lock"} <= set(copied)
    # Every workspace member must be in the context, or `uv sync --frozen` fails.
    workspace = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["uv"]["workspace"]
    members = [m.relative_to(ROOT) for g in workspace["members"] for m in ROOT.glob(g)]
    assert members
    for member in members:
        assert any(str(member).startswith(source) for source in copied), member


def test_it_runs_as_an_unprivileged_user():
    users = [arguments.split(":")[0] for op, arguments in instructions() if op == "USER"]
    assert users, "no USER: the image would run as root"
    assert users[-1] not in ("root", "0")


def test_no_secret_is_built_in():
    for op, arguments in instructions():
        if op in ("ENV", "ARG"):
            names = re.findall(r"(\w+)=", arguments) or [arguments.split()[0]]
            assert not [n for n in names if SECRET_NAMES.search(n)], f"{op} {arguments}"
    patterns = dockerignore()
    for local_state in (".env", ".git", ".venv", ".taskengine", "webhook.key", "demo-client.key"):
        assert ignored(local_state, patterns), f"{local_state} would enter the build context"


def test_its_default_command_exists():
    commands = [exec_form(arguments) for op, arguments in instructions() if op == "CMD"]
    assert commands
    check_command(commands[-1])
