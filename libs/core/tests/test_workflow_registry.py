"""Operators' workflows: one YAML file each in a directory, loaded next to the built-ins."""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

import pytest
from taskengine_core.config import EngineSettings
from taskengine_core.errors import UnknownWorkflow
from taskengine_core.workflows import (
    BUILT_IN,
    Registry,
    Step,
    load_registry,
    registry,
    validate,
    workflow,
)

PIPE_456 = """\
name: pipe-456
image: ghcr.io/example/pipeline:1.2   # what a Kubernetes Job runs; default TASKENGINE_WORKER_IMAGE
steps:
  - name: extract
    run: ["python3", "-c", "print('extracting')"]
    timeout: 60          # seconds
    env: {MODE: fast}
"""

ONE_STEP = "name: {name}\nsteps:\n  - name: only\n    run: 'true'\n"


def write(directory: Path, filename: str, text: str) -> Path:
    path = directory / filename
    path.write_text(text)
    return path


def loaded(directory: Path) -> Registry:
    return Registry(directory).load()


@pytest.fixture
def process_registry():
    """The process-wide registry, emptied again afterwards."""
    yield
    load_registry(None)


def test_the_issue_example_loads_as_written(tmp_path):
    path = write(tmp_path, "pipe-456.yaml", PIPE_456)
    found = loaded(tmp_path)
    assert found.problems == []
    flow = found.workflows["pipe-456"]
    assert (flow.name, flow.image, flow.source) == (
        "pipe-456",
        "ghcr.io/example/pipeline:1.2",
        str(path),
    )
    assert flow.steps({}, attempt=1) == [
        Step("extract", ["python3", "-c", "print('extracting')"], 60.0, {"MODE": "fast"})
    ]


def test_the_issue_example_step_runs(tmp_path):
    write(tmp_path, "pipe-456.yaml", PIPE_456)
    (step,) = loaded(tmp_path).workflows["pipe-456"].steps({}, attempt=1)
    result = subprocess.run(
        step.argv, env={"PATH": os.environ["PATH"], **step.env}, capture_output=True, text=True
    )
    assert result.returncode == 0 and result.stdout == "extracting\n"


def test_a_command_line_runs_in_sh_and_the_image_defaults_to_the_worker_image(tmp_path):
    write(
        tmp_path, "a.yml", "name: a\ndescription: says hi\nsteps:\n  - {name: hi, run: echo hi}\n"
    )
    flow = loaded(tmp_path).workflows["a"]
    assert flow.image is None and flow.describe == "says hi"
    assert flow.steps({}, attempt=1) == [Step("hi", ["sh", "-c", "echo hi"])]


def test_the_workflow_timeout_and_env_are_defaults_for_its_steps(tmp_path):
    write(
        tmp_path,
        "t.yaml",
        """\
name: t
timeout: 30
env: {MODE: slow, REGION: eu}
steps:
  - {name: a, run: ["true"]}
  - {name: b, run: ["true"], timeout: 5, env: {MODE: fast}}
""",
    )
    assert loaded(tmp_path).workflows["t"].steps({}, attempt=1) == [
        Step("a", ["true"], 30.0, {"MODE": "slow", "REGION": "eu"}),
        Step("b", ["true"], 5.0, {"MODE": "fast", "REGION": "eu"}),
    ]


def test_parameters_do_not_change_a_file_workflows_steps(tmp_path):
    write(tmp_path, "pipe-456.yaml", PIPE_456)
    flow = loaded(tmp_path).workflows["pipe-456"]
    assert flow.steps({"steps": [], "x": 1}, attempt=3) == flow.steps({}, attempt=1)


def test_only_visible_yaml_files_are_read(tmp_path):
    write(tmp_path, "a.yaml", ONE_STEP.format(name="a"))
    write(tmp_path, "b.yml", ONE_STEP.format(name="b"))
    write(tmp_path, "c.json", ONE_STEP.format(name="c"))
    write(tmp_path, ".d.yaml", ONE_STEP.format(name="d"))
    write(tmp_path, "README", "not a workflow")
    found = loaded(tmp_path)
    assert sorted(found.workflows) == ["a", "b"] and found.problems == []


@pytest.mark.parametrize("directory", [None, Path("/nonexistent/taskengine/workflows")])
def test_a_missing_directory_holds_no_workflows(directory):
    found = Registry(directory).load()
    assert found.workflows == {} and found.problems == []


STEP = "steps:\n  - name: a\n    run: ['true']\n"

MALFORMED = [
    ("name: x\n  steps: []\n", 2, "mapping values are not allowed here"),
    ("name: x\nsteps: [a\n", 3, "while parsing a flow sequence at line 2"),
    ("name: x\n---\nname: y\n", 2, "but found another document"),
    ("", 1, "the file is empty"),
    ("- name: x\n", 1, "must be a mapping with name and steps"),
    ("# a comment\n" + STEP, 2, "name is required"),
    ("description: d\nname: 'no spaces'\n" + STEP, 2, "name must be 1 to 100 letters"),
    ("name: 456\n" + STEP, 1, "name must be"),
    ("name: x\ncommand: ls\n" + STEP, 2, "unknown fields: command"),
    ("name: x\nimage: two words\n" + STEP, 2, "image must be an image reference"),
    ("name: x\ndescription: [1]\n" + STEP, 2, "description must be a string"),
    ("name: x\ntimeout: -1\n" + STEP, 2, "timeout must be a positive number"),
    ("name: x\nenv: {PORT: 8080}\n" + STEP, 2, "env must map names to strings"),
    ("name: x\nimage: a/b\n", 1, "steps is required"),
    ("name: x\nsteps: []\n", 2, "steps must be a list of 1 to 50"),
    ("name: x\nsteps:\n" + "  - {name: a, run: ['true']}\n" * 51, 3, "1 to 50"),
    ("name: x\nsteps:\n  - echo hi\n", 3, "steps[0] must be an object"),
    ("name: x\nsteps:\n  - run: ['true']\n", 3, "steps[0].name must be"),
    ("name: x\nsteps:\n  - name: a\n\n    run: [1]\n", 5, "steps[0].run must be"),
    ("name: x\nsteps:\n  - name: a\n    run: ''\n", 4, "steps[0].run must be"),
    (STEP.replace("steps:", "name: x\nsteps:") + "    timeout: soon\n", 5, "steps[0].timeout"),
    (STEP.replace("steps:", "name: x\nsteps:") + "    timeout: 0\n", 5, "steps[0].timeout"),
    (STEP.replace("steps:", "name: x\nsteps:") + "    timeout: true\n", 5, "steps[0].timeout"),
    (STEP.replace("steps:", "name: x\nsteps:") + "    env: {A: 1}\n", 5, "steps[0].env must"),
    (STEP.replace("steps:", "name: x\nsteps:") + "    cwd: /\n", 5, "unknown fields: cwd"),
    ("name: !!python/object/apply:os.system ['true']\n" + STEP, 1, "could not determine"),
]


@pytest.mark.parametrize(("text", "line", "problem"), MALFORMED)
def test_a_malformed_file_is_reported_with_its_path_and_line(tmp_path, text, line, problem):
    path = write(tmp_path, "bad.yaml", text)
    found = loaded(tmp_path)
    assert found.workflows == {}
    (reported,) = found.problems
    assert (reported.path, reported.line) == (path, line), str(reported)
    assert problem in reported.problem
    assert str(reported).startswith(f"{path}:{line}: ")


def test_a_file_that_is_not_utf8_is_reported(tmp_path):
    path = tmp_path / "latin.yaml"
    path.write_bytes(b"name: caf\xe9\n" + STEP.encode())
    (reported,) = loaded(tmp_path).problems
    assert (reported.path, reported.line) == (path, 1) and "cannot be read" in reported.problem


def test_one_bad_file_does_not_stop_the_others(tmp_path):
    write(tmp_path, "a.yaml", ONE_STEP.format(name="a"))
    write(tmp_path, "b.yaml", "name: b\nsteps: [\n")
    write(tmp_path, "c.yaml", ONE_STEP.format(name="c"))
    found = loaded(tmp_path)
    assert sorted(found.workflows) == ["a", "c"]
    assert [p.path.name for p in found.problems] == ["b.yaml"]


def test_a_name_defined_twice_keeps_the_first_file_by_filename(tmp_path):
    first = write(tmp_path, "1-first.yaml", ONE_STEP.format(name="twice"))
    second = write(tmp_path, "2-second.yaml", "# again\n" + ONE_STEP.format(name="twice"))
    found = loaded(tmp_path)
    assert found.workflows["twice"].source == str(first)
    (reported,) = found.problems
    assert (reported.path, reported.line) == (second, 2)
    assert f"'twice' is already defined (in {first})" in reported.problem


@pytest.mark.parametrize("name", sorted(BUILT_IN))
def test_a_file_cannot_redefine_a_built_in(tmp_path, process_registry, name):
    path = write(tmp_path, "mine.yaml", ONE_STEP.format(name=name))
    found = load_registry(tmp_path)
    assert found.workflows == {}
    (reported,) = found.problems
    assert (reported.path, reported.line) == (path, 1) and "a built-in" in reported.problem
    assert workflow(name) is BUILT_IN[name]


def test_workflow_and_validate_find_what_the_process_loaded(tmp_path, process_registry):
    write(tmp_path, "pipe-456.yaml", PIPE_456)
    assert load_registry(tmp_path) is registry()
    assert workflow("pipe-456").image == "ghcr.io/example/pipeline:1.2"
    validate("pipe-456", {"anything": "goes"})
    assert workflow("echo") is BUILT_IN["echo"] and BUILT_IN["echo"].image is None
    with pytest.raises(UnknownWorkflow, match="known: echo, fail, flaky, inline, noop, pipe-456"):
        validate("pipe-457", {})


def test_malformed_files_are_logged_when_the_process_loads(tmp_path, process_registry, caplog):
    path = write(tmp_path, "bad.yaml", "name: x\nsteps: []\n")
    with caplog.at_level(logging.WARNING, logger="taskengine_core.workflows"):
        load_registry(tmp_path)
    assert f"workflow file skipped: {path}:2: steps must be" in caplog.text


def test_a_file_added_after_loading_is_found_on_a_miss(tmp_path, process_registry):
    load_registry(tmp_path)
    with pytest.raises(UnknownWorkflow):
        workflow("late")
    write(tmp_path, "late.yaml", ONE_STEP.format(name="late"))
    assert workflow("late").source == str(tmp_path / "late.yaml")


def test_a_file_fixed_after_loading_is_found_on_a_miss(tmp_path, process_registry):
    path = write(tmp_path, "fixed.yaml", "name: fixed\nsteps: [\n")
    assert load_registry(tmp_path).problems
    path.write_text(ONE_STEP.format(name="fixed"))
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert workflow("fixed").name == "fixed"
    assert registry().problems == []


def test_a_hit_or_an_unchanged_directory_reads_nothing_again(tmp_path, monkeypatch):
    write(tmp_path, "a.yaml", ONE_STEP.format(name="a"))
    found = loaded(tmp_path)
    loads = []
    monkeypatch.setattr(Registry, "load", lambda self: loads.append(1) or self)
    assert found.get("a") is not None and found.get("missing") is None
    assert loads == []


def test_the_directory_defaults_to_the_data_dirs_workflows(monkeypatch, tmp_path):
    monkeypatch.delenv("TASKENGINE_WORKFLOWS_DIR", raising=False)
    monkeypatch.delenv("TASKENGINE_WORKER_IMAGE", raising=False)
    settings = EngineSettings(data_dir=tmp_path)
    assert settings.workflows_dir == tmp_path / "workflows"
    assert settings.worker_image == "taskengine:latest"
    monkeypatch.setenv("TASKENGINE_WORKFLOWS_DIR", "/etc/taskengine/workflows")
    monkeypatch.setenv("TASKENGINE_WORKER_IMAGE", "registry.example/te:2")
    settings = EngineSettings(data_dir=tmp_path)
    assert settings.workflows_dir == Path("/etc/taskengine/workflows")
    assert settings.worker_image == "registry.example/te:2"
