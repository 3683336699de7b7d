"""Workflows: ordered steps the dispatcher runs. The built-ins make the engine do real work;
operators add their own as YAML files in a directory (`Registry`), one workflow per file."""

from __future__ import annotations

import json
import logging
import math
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import msgspec
import yaml

from taskengine_core.errors import UnknownWorkflow

log = logging.getLogger(__name__)


class Step(msgspec.Struct, frozen=True):
    name: str
    argv: list[str]
    timeout: float | None = None
    env: dict[str, str] = {}
    client_given: bool = False
    """A command a client chose (`inline`): run confined (`taskengine_core.confinement`)."""


class Workflow(msgspec.Struct, frozen=True):
    """A named, ordered list of steps. `describe` is what users read in `workflows list`.

    A built-in computes its steps from the job's parameters; a workflow from a file (`source`)
    has fixed `defined_steps`. `image` is what a Kubernetes Job runs (None: the worker image).
    """

    name: str
    describe: str
    image: str | None = None
    source: str = "built-in"
    defined_steps: tuple[Step, ...] | None = None

    def steps(self, parameters: dict[str, object], attempt: int) -> list[Step]:
        if self.defined_steps is not None:  # parameters reach them as TASKENGINE_PARAMETERS
            return list(self.defined_steps)
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


_inline_allowed = False


def allow_inline(allowed: bool) -> None:
    """Whether this process runs (and accepts) `inline` steps: commands a client chose, run on
    the executor's host. Off unless the operator sets TASKENGINE_INLINE_STEPS=true."""
    global _inline_allowed
    _inline_allowed = allowed


def _inline(parameters: dict[str, object], attempt: int) -> list[Step]:
    """Steps given with the job: `parameters.steps`, each `{"name", "run": [argv...],
    "timeout": seconds, "env": {NAME: value}}` (`run` may be one shell command string)."""
    if not _inline_allowed:
        raise ValueError(
            "inline steps are switched off: they run commands of the client's choosing on the"
            " executor's host (an operator may allow them with TASKENGINE_INLINE_STEPS=true);"
            " name a registered workflow instead"
        )
    steps = parameters.get("steps")
    if not isinstance(steps, list) or not 1 <= len(steps) <= MAX_INLINE_STEPS:
        raise ValueError(f"parameters.steps must be a list of 1 to {MAX_INLINE_STEPS} steps")
    return [
        msgspec.structs.replace(_inline_step(step, f"parameters.steps[{n}]"), client_given=True)
        for n, step in enumerate(steps)
    ]


class InvalidField(ValueError):
    """A value that does not validate; `at` is where it is in the object checked (keys and
    indexes; empty: the object itself), so a file's reader can say on which line."""

    def __init__(self, problem: str, *at: str | int):
        super().__init__(problem)
        self.at = at


def _inline_step(step: object, where: str) -> Step:
    if not isinstance(step, dict):
        raise InvalidField(f"{where} must be an object with name and run")
    unknown = sorted(set(map(str, step)) - {"name", "run", "timeout", "env"})
    if unknown:
        raise InvalidField(f"{where} has unknown fields: {', '.join(unknown)}", unknown[0])
    name, run = step.get("name"), step.get("run")
    if not isinstance(name, str) or not 0 < len(name) <= 100:
        raise InvalidField(f"{where}.name must be a string of 1 to 100 characters", "name")
    if isinstance(run, str) and run.strip():
        run = ["sh", "-c", run]
    if not isinstance(run, list) or not run or not all(isinstance(a, str) for a in run):
        raise InvalidField(
            f"{where}.run must be a non-empty list of strings (or a command line)", "run"
        )
    timeout, env = _seconds(step.get("timeout"), f"{where}.timeout"), step.get("env")
    return Step(name, run, timeout, _env(env, f"{where}.env"))


def _seconds(value: object, field: str) -> float | None:
    if value is None:
        return None
    try:
        seconds = math.nan if isinstance(value, bool) else float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise InvalidField(f"{field} must be a positive number of seconds", "timeout")
    return seconds


def _env(value: object, field: str) -> dict[str, str]:
    env = value or {}
    if not isinstance(env, dict) or not all(
        isinstance(k, str) and k and isinstance(v, str) for k, v in env.items()
    ):
        raise InvalidField(f"{field} must map names to strings (quote numbers)", "env")
    return env


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


NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
FILE_FIELDS = ("name", "image", "description", "steps", "timeout", "env")


@dataclass(frozen=True)
class WorkflowProblem:
    """Why a workflow file was not loaded, and where: `path:line: problem` (line 0: the
    directory itself could not be listed)."""

    path: Path
    line: int
    problem: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.problem}"


class _Malformed(Exception):
    def __init__(self, line: int, problem: str):
        super().__init__(problem)
        self.line, self.problem = line, problem


def read_workflow(path: Path) -> tuple[Workflow, int]:
    """The workflow a YAML file defines, and the line of its name; `_Malformed` says where
    a file that defines none goes wrong."""
    try:
        root = yaml.compose(path.read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
        if root is None:
            raise _Malformed(1, "the file is empty: a workflow needs name and steps")
        data = yaml.constructor.SafeConstructor().construct_document(root)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        problem = error.problem or error.context or "not valid YAML"
        if error.context and error.problem and error.context_mark:
            problem += f" ({error.context} at line {error.context_mark.line + 1})"
        raise _Malformed(mark.line + 1 if mark else 1, problem) from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise _Malformed(1, f"cannot be read: {error}") from None
    try:
        return _file_workflow(data, str(path)), _line(root, ("name",))
    except InvalidField as error:
        raise _Malformed(_line(root, error.at), str(error)) from None


def _file_workflow(data: object, source: str) -> Workflow:
    if not isinstance(data, dict):
        raise InvalidField("a workflow file must be a mapping with name and steps")
    unknown = sorted(set(map(str, data)) - set(FILE_FIELDS))
    if unknown:
        known = ", ".join(FILE_FIELDS)
        raise InvalidField(f"unknown fields: {', '.join(unknown)} (known: {known})", unknown[0])
    name, image, description = data.get("name"), data.get("image"), data.get("description", "")
    if name is None:
        raise InvalidField("name is required")
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise InvalidField(
            "name must be 1 to 100 letters, digits, '.', '_' or '-', starting with a letter"
            " or digit",
            "name",
        )
    if image is not None and (
        not isinstance(image, str) or not image or len(image) > 500 or image.split() != [image]
    ):
        raise InvalidField("image must be an image reference like registry/name:tag", "image")
    if not isinstance(description, str):
        raise InvalidField("description must be a string", "description")
    timeout, env = _seconds(data.get("timeout"), "timeout"), _env(data.get("env"), "env")
    steps = data.get("steps")
    if steps is None:
        raise InvalidField("steps is required")
    if not isinstance(steps, list) or not 1 <= len(steps) <= MAX_INLINE_STEPS:
        raise InvalidField(f"steps must be a list of 1 to {MAX_INLINE_STEPS} steps", "steps")
    defined = []
    for n, item in enumerate(steps):
        try:
            step = _inline_step(item, f"steps[{n}]")
        except InvalidField as error:
            raise InvalidField(str(error), "steps", n, *error.at) from None
        defined.append(Step(step.name, step.argv, step.timeout or timeout, {**env, **step.env}))
    return Workflow(name, description, image, source, tuple(defined))


def _line(root: yaml.Node, at: tuple[str | int, ...]) -> int:
    """The line of the value at `at` (keys and indexes), or of the deepest one that exists."""
    node = root
    for key in at:
        if isinstance(node, yaml.MappingNode):
            values = [v for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == key]
            if not values:
                break
            node = values[0]
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
        else:
            break
    return node.start_mark.line + 1


class Registry:
    """The operators' workflows: each `*.yaml` / `*.yml` file in `directory` defines one.

    A malformed file is skipped and reported in `problems` (the others load). Files are read
    in filename order: a name defined twice keeps the first file; a built-in's name is taken.
    """

    def __init__(self, directory: Path | None = None):
        self.directory = directory
        self.workflows: dict[str, Workflow] = {}
        self.problems: list[WorkflowProblem] = []
        self._read: object = None  # the files as last read: (name, mtime, size) of each

    def load(self) -> Registry:
        """(Re-)reads the directory; a missing one holds no workflows."""
        self._read = self._signature()
        workflows: dict[str, Workflow] = {}
        problems: list[WorkflowProblem] = []
        try:
            files = self._files()
        except OSError as error:
            files, problems = [], [WorkflowProblem(Path(str(self.directory)), 0, str(error))]
        for path in files:
            try:
                flow, line = read_workflow(path)
            except _Malformed as error:
                problems.append(WorkflowProblem(path, error.line, error.problem))
                continue
            taken = BUILT_IN.get(flow.name) or workflows.get(flow.name)
            if taken:
                first = "a built-in" if taken.source == "built-in" else f"in {taken.source}"
                problem = f"workflow {flow.name!r} is already defined ({first}); file ignored"
                problems.append(WorkflowProblem(path, line, problem))
                continue
            workflows[flow.name] = flow
        self.workflows, self.problems = workflows, problems
        return self

    def report(self) -> Registry:
        """Logs what was loaded, and each skipped file as a warning."""
        for problem in self.problems:
            log.warning("workflow file skipped: %s", problem)
        if self.directory is not None:
            log.info("%d workflows loaded from %s", len(self.workflows), self.directory)
        return self

    def get(self, name: str) -> Workflow | None:
        """The workflow called `name`; on a miss, re-reads the directory if its files changed
        (so a file added while running is found without a restart)."""
        found = self.workflows.get(name)
        if found is None and self._signature() != self._read:
            found = self.load().report().workflows.get(name)
        return found

    def _files(self) -> list[Path]:
        if self.directory is None or not self.directory.is_dir():
            return []
        return sorted(
            path
            for path in self.directory.iterdir()
            if path.suffix in (".yaml", ".yml") and not path.name.startswith(".")
        )

    def _signature(self) -> object:
        try:
            return [(p.name, (s := p.stat()).st_mtime_ns, s.st_size) for p in self._files()]
        except OSError as error:  # unreadable, or a file went away while looking
            return str(error)


_registry = Registry()


def load_registry(directory: Path | None) -> Registry:
    """Reads the operators' workflows for this process: every service does it once at start.
    `workflow()` finds them after the built-ins. Returns the registry, problems included."""
    global _registry
    _registry = Registry(directory).load().report()
    return _registry


def registry() -> Registry:
    """The workflows this process loaded (see `load_registry`)."""
    return _registry


def workflow(name: str) -> Workflow:
    found = BUILT_IN.get(name) or _registry.get(name)
    if found is None:
        known = sorted({*BUILT_IN, *_registry.workflows})
        shown = ", ".join(known[:30]) + (f" and {len(known) - 30} more" if len(known) > 30 else "")
        raise UnknownWorkflow(f"unknown workflow {name!r}; known: {shown}")
    return found


def validate(name: str, parameters: dict[str, object]) -> None:
    """Refuse at submit what could never run: an unknown workflow or unusable parameters."""
    workflow(name).steps(parameters, attempt=1)
