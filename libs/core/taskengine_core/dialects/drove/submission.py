"""A Drove task operation checked: CREATE into the job it submits, KILL into the task it names.

`create_operation` checks a CREATE whole (its `spec` and `opSpec`) and names the first field
that does not validate; `Submission.submitted` makes its job through the one factory
(`job_submitted`): a WORKFLOW runs a registered workflow with the task's env, a DOCKER one its
image as a container; never retried, never started past its `opSpec.timeout`, and timed out
once an attempt ran for that long.
`check_host_paths` and `check_resources` hold a CREATE to what the operator allows.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import uuid4

from taskengine_contracts.durations import duration_seconds
from taskengine_contracts.events import (
    JobSubmitted,
    Limit,
    Resources,
    RetryPolicy,
    RunSpec,
    Volume,
)

from taskengine_core import workflows
from taskengine_core.dialects.drove import DIALECT
from taskengine_core.errors import DomainError
from taskengine_core.quotas import ResourceLimits
from taskengine_core.startable import check_volumes
from taskengine_core.submission import job_submitted

DOCKER = "docker"
"""The workflow name of a DOCKER executable: the hook the Kubernetes executor runs."""
REFUSED_WORKFLOWS = frozenset({"inline"})
"""Workflows whose steps the client gives: never runnable through this dialect."""
PRIORITY = 5
NAME = re.compile(r"[A-Za-z0-9_-]{1,100}")
ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]*")
ENV_RESERVED = frozenset(
    {"PATH", "HOME", "SHELL", "USER", "IFS", "ENV", "BASH_ENV", "SHELLOPTS", "BASHOPTS", "PS4"}
    | {"PROMPT_COMMAND", "TMPDIR", "GCONV_PATH", "NODE_OPTIONS", "PERL5OPT", "PERL5LIB"}
    | {"RUBYOPT", "RUBYLIB"}
)
ENV_RESERVED_PREFIXES = ("TASKENGINE_", "LD_", "PYTHON", "BASH_FUNC_", "GIT_")
"""A task's env must not steer the engine or how the host finds and loads programs."""
MAX_ENV = 200
SPEC_FIELDS = tuple(
    "sourceAppName taskId executable resources volumes configs placementPolicy env args tags"
    " logging".split()
)
CONFIG_TYPES = ("INLINE", "EXECUTOR_LOCAL_FILE", "CONTROLLER_HTTP_FETCH", "EXECUTOR_HTTP_FETCH")
VOLUME_MODES = ("READ_ONLY", "READ_WRITE")
FAILURE_STRATEGIES = ("STOP", "CONTINUE")
DEFAULT_OP_SPEC = {"timeout": "300 seconds", "parallelism": 1, "failureStrategy": "STOP"}
MAX_CORES, MAX_MEMORY_MB = 1024, 16 * 1024 * 1024
MAX_OP_TIMEOUT = 7 * 24 * 3600.0
CONFIGS_UNSUPPORTED = (
    "spec.configs (files put in the container) are not supported by the Kubernetes"
    " executor: bake them into the image or pass them in env"
)
"""Why a DOCKER task with configs never starts: it ends PROVISIONING_FAILED saying so."""


class InvalidTask(DomainError):
    """A task operation that does not validate; the message names the field."""


# --- durations ----------------------------------------------------------------------------


def parse_duration(value: object, field: str) -> float:
    """Seconds in a Drove (Dropwizard) duration: `5m`, `30s`, `100 seconds`, `2 minutes`, `1h`."""
    seconds = duration_seconds(value)
    if seconds is None:
        raise InvalidTask(
            f'{field} must be a duration like "5m", "30s" or "100 seconds", got {value!r}'
        )
    return seconds


# --- operations -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Submission:
    """A validated CREATE: what its job is submitted with."""

    source_app: str
    task_id: str
    workflow: str
    parameters: dict[str, Any]
    attributes: dict[str, Any]

    def submitted(self, job_id: int, client: str, at: datetime) -> JobSubmitted:
        return job_submitted(
            job_id,
            client,
            at,
            workflow=self.workflow,
            parameters=self.parameters,
            run=self.run,
            dialect=DIALECT,
            priority=PRIORITY,
            attributes={**self.attributes, "instanceId": f"TI-{uuid4()}"},
        )

    @property
    def run(self) -> RunSpec:
        """A WORKFLOW runs its steps with the task's env; a DOCKER one its image as a
        container with its args, env, resources and host paths, its image pulled within its
        dockerPullTimeout; configs it cannot have. Never restarted; not started past its
        opSpec.timeout, and timed out when it runs longer than that (the attempt's deadline)."""
        attributes = self.attributes
        once = RetryPolicy(max_retries=0)
        given = attributes["opSpec"]["timeout"]
        start = Limit(
            seconds=parse_duration(given, "opSpec.timeout"), name="opSpec.timeout", given=given
        )
        if self.workflow != DOCKER:
            return RunSpec(
                env=attributes["env"], retry=once, start_timeout=start, timeout=start.seconds
            )
        amounts = {item["type"]: item for item in attributes["resources"]}
        pull = attributes["executable"].get("dockerPullTimeout")
        return RunSpec(
            kind="container",
            image=self.parameters["image"],
            args=attributes["args"],
            env=attributes["env"],
            resources=Resources(
                cpu=str(amounts["CPU"]["count"]), memory=f"{amounts['MEMORY']['sizeInMB']}Mi"
            ),
            volumes=[
                Volume(
                    host_path=volume["pathOnHost"],
                    container_path=volume["pathInContainer"],
                    read_only=volume["mode"] == "READ_ONLY",
                )
                for volume in attributes["volumes"]
            ],
            retry=once,
            start_timeout=start,
            timeout=start.seconds,
            pull_timeout=None
            if pull is None
            else Limit(
                seconds=parse_duration(pull, "dockerPullTimeout"),
                name="dockerPullTimeout",
                given=pull,
            ),
            unstartable=CONFIGS_UNSUPPORTED if attributes["configs"] else None,
        )


def operation_type(data: dict[str, Any]) -> str:
    kind: object = data.get("type")
    if kind not in ("CREATE", "KILL"):
        raise InvalidTask(f"type must be CREATE or KILL, got {kind!r}")
    return kind


def create_operation(data: dict[str, Any]) -> Submission:
    """`{"type": "CREATE", "spec": {...}, "opSpec": {...}}` checked whole."""
    _known(data, ("type", "spec", "opSpec"), "")
    spec = data.get("spec")
    if not isinstance(spec, dict):
        raise InvalidTask("spec is required: the task specification object")
    _known(spec, SPEC_FIELDS, "spec.")
    source_app, task_id = task_key(spec, "spec.")
    executable = _object(spec, "executable", "spec.", required=True)
    kind = executable.get("type")
    env = check_env(spec.get("env"))
    args = _strings(spec.get("args") or [], "spec.args")
    volumes = [_volume(v, f"spec.volumes[{n}]") for n, v in enumerate(_list(spec, "volumes"))]
    configs = [_config(c, f"spec.configs[{n}]") for n, c in enumerate(_list(spec, "configs"))]
    if kind == "WORKFLOW":
        workflow, parameters = _workflow(executable)
        for field, given in (("volumes", volumes), ("configs", configs), ("args", args)):
            if given:
                raise InvalidTask(
                    f"spec.{field} apply to DOCKER executables only: a WORKFLOW runs the steps"
                    " of a registered workflow on the local executor, with its parameters"
                )
    elif kind == "DOCKER":
        _known(executable, ("type", "url", "dockerPullTimeout"), "spec.executable.")
        url = executable.get("url")
        if not isinstance(url, str) or not 0 < len(url) <= 500 or url.split() != [url]:
            raise InvalidTask("spec.executable.url must be an image like ghcr.io/org/image:tag")
        if "dockerPullTimeout" in executable:
            parse_duration(executable["dockerPullTimeout"], "spec.executable.dockerPullTimeout")
        workflow, parameters = DOCKER, {"image": url, "args": args, "env": env}
    else:
        raise InvalidTask(f"spec.executable.type must be DOCKER or WORKFLOW, got {kind!r}")
    tags = spec.get("tags") or {}
    if not isinstance(tags, dict) or not all(isinstance(v, str) for v in tags.values()):
        raise InvalidTask("spec.tags must map names to strings")
    attributes = {
        "sourceAppName": source_app,
        "taskId": task_id,
        "executable": executable,
        "resources": _resources(spec.get("resources")),
        "volumes": volumes,
        "configs": configs,
        "placementPolicy": _object(spec, "placementPolicy", "spec.") or {"type": "ANY"},
        "env": env,
        "args": args,
        "tags": tags,
        "logging": _object(spec, "logging", "spec.") or {"type": "LOCAL"},
        "opSpec": op_spec(data.get("opSpec")),
    }
    return Submission(source_app, task_id, workflow, parameters, attributes)


def rerun_attributes(attributes: dict[str, Any]) -> dict[str, Any]:
    """A rerun's attributes: the same task, as a new instance of it (its own instanceId)."""
    return {**attributes, "instanceId": f"TI-{uuid4()}"}


def kill_operation(data: dict[str, Any]) -> tuple[str, str]:
    """`{"type": "KILL", "sourceAppName", "taskId", "opSpec"}` -> (sourceAppName, taskId)."""
    _known(data, ("type", "sourceAppName", "taskId", "opSpec"), "")
    op_spec(data.get("opSpec"))
    return task_key(data, "")


def task_key(data: dict[str, Any], where: str) -> tuple[str, str]:
    for field in ("sourceAppName", "taskId"):
        value = data.get(field)
        if not isinstance(value, str) or not NAME.fullmatch(value):
            raise InvalidTask(
                f"{where}{field} is required: 1 to 100 letters, digits, '-' or '_'"
                + ("" if value is None else f", got {str(value)[:100]!r}")
            )
    return data["sourceAppName"], data["taskId"]


def op_spec(value: object) -> dict[str, Any]:
    """The operation's spec, defaults filled: `timeout` (a duration), `parallelism` (1-32),
    `failureStrategy` (STOP or CONTINUE)."""
    if value is None:
        return dict(DEFAULT_OP_SPEC)
    if not isinstance(value, dict):
        raise InvalidTask("opSpec must be an object with timeout, parallelism, failureStrategy")
    _known(value, tuple(DEFAULT_OP_SPEC), "opSpec.")
    spec = {**DEFAULT_OP_SPEC, **value}
    if not 0 < parse_duration(spec["timeout"], "opSpec.timeout") <= MAX_OP_TIMEOUT:
        raise InvalidTask("opSpec.timeout must be more than 0 and at most 7 days")
    parallelism = spec["parallelism"]
    if (
        isinstance(parallelism, bool)
        or not isinstance(parallelism, int)
        or not 1 <= parallelism <= 32
    ):
        raise InvalidTask(
            f"opSpec.parallelism must be an integer from 1 to 32, got {parallelism!r}"
        )
    if spec["failureStrategy"] not in FAILURE_STRATEGIES:
        raise InvalidTask(
            f"opSpec.failureStrategy must be STOP or CONTINUE, got {spec['failureStrategy']!r}"
        )
    return spec


def check_env(value: object) -> dict[str, str]:
    """A task's env: names like `ITERATIONS` (not the engine's own nor the host's essentials),
    string values."""
    env = {} if value is None else value
    if not isinstance(env, dict):
        raise InvalidTask("spec.env must map names to strings")
    if len(env) > MAX_ENV:
        raise InvalidTask(f"spec.env: at most {MAX_ENV} variables")
    for name, text in env.items():
        if not ENV_NAME.fullmatch(name) or len(name) > 200:
            raise InvalidTask(
                f"spec.env: {name[:100]!r} is not a name like ITERATIONS ([A-Z_][A-Z0-9_]*)"
            )
        if env_reserved(name):
            raise InvalidTask(f"spec.env: {name} is reserved (the engine's or the host's own)")
        if not isinstance(text, str):
            raise InvalidTask(f"spec.env.{name} must be a string (quote numbers)")
    return env


def env_reserved(name: str) -> bool:
    return name in ENV_RESERVED or name.startswith(ENV_RESERVED_PREFIXES)


def check_host_paths(volumes: list[dict[str, Any]], allowed: tuple[str, ...], client: str) -> None:
    """Refuses a volume that is not READ_ONLY, or whose `pathOnHost` is not within the client's
    own subdirectory of one of the operator's `allowed` prefixes (`startable.check_volumes`)."""
    given = [
        Volume(
            host_path=volume["pathOnHost"],
            container_path=volume["pathInContainer"],
            read_only=volume["mode"] == "READ_ONLY",
        )
        for volume in volumes
    ]
    check_volumes(given, allowed, client, InvalidTask)


def check_resources(resources: list[dict[str, Any]], limits: ResourceLimits) -> None:
    """Refuses `spec.resources` (as `create_operation` checked them) above the limits."""
    amounts = {item["type"]: item for item in resources}
    problem = limits.problem(
        cpu=amounts["CPU"]["count"], memory_bytes=amounts["MEMORY"]["sizeInMB"] * 2**20
    )
    if problem:
        raise InvalidTask(f"spec.resources: {problem}")


def _workflow(executable: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    _known(executable, ("type", "name", "parameters", "url"), "spec.executable.")
    name, parameters = executable.get("name"), executable.get("parameters", {})
    if not isinstance(name, str) or not name:
        raise InvalidTask("spec.executable.name must name a registered workflow")
    if name in REFUSED_WORKFLOWS:
        raise InvalidTask(
            f"spec.executable.name: workflow {name!r} runs client-given commands: not allowed here"
        )
    if not isinstance(parameters, dict):
        raise InvalidTask("spec.executable.parameters must be an object")
    if executable.get("url", f"workflow://{name}") != f"workflow://{name}":
        raise InvalidTask(f"spec.executable.url of a WORKFLOW is workflow://{name} or absent")
    try:
        workflows.validate(name, parameters)
    except (DomainError, ValueError) as error:
        raise InvalidTask(f"spec.executable: {error}") from None
    return name, parameters


def _resources(value: object) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise InvalidTask('spec.resources is required: [{"type": "CPU", "count": 1}, ...]')
    found: dict[str, dict[str, Any]] = {}
    for n, item in enumerate(value):
        where = f"spec.resources[{n}]"
        kind: object = item.get("type") if isinstance(item, dict) else None
        if kind not in ("CPU", "MEMORY"):
            raise InvalidTask(f"{where}.type must be CPU or MEMORY")
        field, highest = ("count", MAX_CORES) if kind == "CPU" else ("sizeInMB", MAX_MEMORY_MB)
        if kind in found:
            raise InvalidTask(f"{where}: {kind} is given twice")
        amount = item.get(field)
        if isinstance(amount, bool) or not isinstance(amount, int) or not 1 <= amount <= highest:
            raise InvalidTask(f"{where}.{field} must be an integer from 1 to {highest}")
        _known(item, ("type", field), f"{where}.")
        found[kind] = {"type": kind, field: amount}
    if set(found) != {"CPU", "MEMORY"}:
        raise InvalidTask("spec.resources must give CPU (count) and MEMORY (sizeInMB)")
    return [found["CPU"], found["MEMORY"]]


def _volume(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidTask(f"{where} must be an object with pathInContainer, pathOnHost, mode")
    _known(value, ("pathInContainer", "pathOnHost", "mode"), f"{where}.")
    for field in ("pathInContainer", "pathOnHost"):
        path = value.get(field)
        if not isinstance(path, str) or not path.startswith("/") or len(path) > 1000:
            raise InvalidTask(f"{where}.{field} must be an absolute path")
    if value.get("mode") not in VOLUME_MODES:
        raise InvalidTask(f"{where}.mode must be READ_ONLY or READ_WRITE")
    return value


def _config(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict) or value.get("type") not in CONFIG_TYPES:
        raise InvalidTask(f"{where}.type must be one of {', '.join(CONFIG_TYPES)}")
    path = value.get("localFilename")
    if not isinstance(path, str) or not path.startswith("/"):
        raise InvalidTask(f"{where}.localFilename must be an absolute path")
    return value


def _known(data: dict[str, Any], fields: tuple[str, ...], where: str) -> None:
    unknown = sorted(set(map(str, data)) - set(fields))
    if unknown:
        raise InvalidTask(f"unknown field {where}{unknown[0]} (known: {', '.join(fields)})")


def _object(data: dict[str, Any], field: str, where: str, required: bool = False) -> dict[str, Any]:
    value = data.get(field)
    if value is None and not required:
        return {}
    if not isinstance(value, dict):
        raise InvalidTask(f"{where}{field} must be an object")
    return value


def _list(data: dict[str, Any], field: str) -> list[Any]:
    value = data.get(field) or []
    if not isinstance(value, list):
        raise InvalidTask(f"spec.{field} must be a list")
    return value


def _strings(value: object, field: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise InvalidTask(f"{field} must be a list of strings")
    return value
