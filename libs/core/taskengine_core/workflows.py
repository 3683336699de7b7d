"""Workflows: ordered steps the dispatcher runs. The built-ins make the engine do real work."""

from __future__ import annotations

import json
import math
import shlex

import msgspec

from taskengine_core.errors import UnknownWorkflow


class Step(msgspec.Struct, frozen=True):
    name: str
    argv: list[str]
    timeout: float | None = None


class Workflow(msgspec.Struct, frozen=True):
    """A named, ordered list of steps. `describe` is what users read in `workflows list`."""

    name: str
    describe: str

    def steps(self, parameters: dict[str, object], attempt: int) -> list[Step]:
        return _BUILT_IN_STEPS[self.name](parameters, attempt)


def _noop(parameters: dict[str, object], attempt: int) -> list[Step]:
    return []


def _echo(parameters: dict[str, object], attempt: int) -> list[Step]:
    return [Step("echo", ["echo", json.dumps(parameters, sort_keys=True)])]


def _sleep(parameters: dict[str, object], attempt: int) -> list[Step]:
    return [Step("sleep", ["sleep", f"{_number(parameters.get('seconds', 1), 'seconds'):g}"])]


def _fail(parameters: dict[str, object], attempt: int) -> list[Step]:
    code = int(_number(parameters.get("exit_code", 1), "exit_code"))
    if not 1 <= code <= 255:  # the shell reports `exit 256` as success
        raise ValueError("parameters.exit_code must be from 1 to 255")
    message = shlex.quote(str(parameters.get("message", "failing on purpose")))
    return [Step("fail", ["sh", "-c", f"echo {message} >&2; exit {code}"])]


def _flaky(parameters: dict[str, object], attempt: int) -> list[Step]:
    failures = int(_number(parameters.get("failures", 1), "failures"))
    if attempt <= failures:
        script = f"echo 'attempt {attempt} fails ({failures} planned)' >&2; exit 1"
    else:
        script = f"echo 'attempt {attempt} succeeds'"
    return [Step("flaky", ["sh", "-c", script])]


def _number(value: object, name: str) -> float:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"parameters.{name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"parameters.{name} must be a finite number, got {value!r}")
    if number < 0:
        raise ValueError(f"parameters.{name} must not be negative")
    return number


_BUILT_IN_STEPS = {
    "noop": _noop,
    "echo": _echo,
    "sleep": _sleep,
    "fail": _fail,
    "flaky": _flaky,
}

BUILT_IN = {
    "noop": Workflow("noop", "does nothing: no steps (engine overhead only)"),
    "echo": Workflow("echo", "prints its parameters as JSON"),
    "sleep": Workflow("sleep", "sleeps parameters.seconds (default 1)"),
    "fail": Workflow("fail", "exits with parameters.exit_code (default 1)"),
    "flaky": Workflow("flaky", "fails the first parameters.failures attempts (default 1)"),
}


def workflow(name: str) -> Workflow:
    try:
        return BUILT_IN[name]
    except KeyError:
        raise UnknownWorkflow(
            f"unknown workflow {name!r}; known: {', '.join(sorted(BUILT_IN))}"
        ) from None


def validate(name: str, parameters: dict[str, object]) -> None:
    """Refuse at submit what could never run: an unknown workflow or unusable parameters."""
    workflow(name).steps(parameters, attempt=1)
