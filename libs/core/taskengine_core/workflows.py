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
    env: dict[str, str] = {}


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


MAX_INLINE_STEPS = 50


def _inline(parameters: dict[str, object], attempt: int) -> list[Step]:
    """Steps given with the job: `parameters.steps`, each `{"name", "run": [argv...],
    "timeout": seconds, "env": {NAME: value}}` (`run` may be one shell command string)."""
    steps = parameters.get("steps")
    if not isinstance(steps, list) or not 1 <= len(steps) <= MAX_INLINE_STEPS:
        raise ValueError(f"parameters.steps must be a list of 1 to {MAX_INLINE_STEPS} steps")
    return [_inline_step(step, f"parameters.steps[{n}]") for n, step in enumerate(steps)]


def _inline_step(step: object, where: str) -> Step:
    if not isinstance(step, dict):
        raise ValueError(f"{where} must be an object with name and run")
    unknown = set(step) - {"name", "run", "timeout", "env"}
    if unknown:
        raise ValueError(f"{where} has unknown fields: {', '.join(sorted(unknown))}")
    name, run, env = step.get("name"), step.get("run"), step.get("env") or {}
    if not isinstance(name, str) or not 0 < len(name) <= 100:
        raise ValueError(f"{where}.name must be a string of 1 to 100 characters")
    if isinstance(run, str) and run.strip():
        run = ["sh", "-c", run]
    if not isinstance(run, list) or not run or not all(isinstance(a, str) for a in run):
        raise ValueError(f"{where}.run must be a non-empty list of strings (or a command line)")
    if not isinstance(env, dict) or not all(
        isinstance(k, str) and k and isinstance(v, str) for k, v in env.items()
    ):
        raise ValueError(f"{where}.env must map names to strings")
    timeout = step.get("timeout")
    if timeout is not None and (_number(timeout, f"{where[11:]}.timeout") <= 0):
        raise ValueError(f"{where}.timeout must be a positive number of seconds")
    return Step(name, run, None if timeout is None else float(timeout), env)


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
    "inline": _inline,
}

BUILT_IN = {
    "noop": Workflow("noop", "does nothing: no steps (engine overhead only)"),
    "echo": Workflow("echo", "prints its parameters as JSON"),
    "sleep": Workflow("sleep", "sleeps parameters.seconds (default 1)"),
    "fail": Workflow("fail", "exits with parameters.exit_code (default 1)"),
    "flaky": Workflow("flaky", "fails the first parameters.failures attempts (default 1)"),
    "inline": Workflow("inline", "runs the steps given in parameters.steps"),
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
