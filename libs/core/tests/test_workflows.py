"""Built-in workflows: the steps they produce, and what those steps do when run."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
from taskengine_core.errors import UnknownWorkflow
from taskengine_core.workflows import BUILT_IN, Step, allow_inline, validate, workflow


def run(step: Step) -> subprocess.CompletedProcess[str]:
    return subprocess.run(step.argv, capture_output=True, text=True, timeout=10, check=False)


def only_step(name: str, parameters: dict[str, object], attempt: int = 1) -> Step:
    steps = workflow(name).steps(parameters, attempt)
    assert len(steps) == 1
    return steps[0]


def test_every_built_in_workflow_is_named_by_its_key_and_described():
    assert set(BUILT_IN) == {"noop", "echo", "sleep", "fail", "flaky", "inline"}
    for name, flow in BUILT_IN.items():
        assert flow.name == name
        assert flow.describe


def test_noop_has_no_steps():
    assert workflow("noop").steps({"anything": 1}, attempt=1) == []


def test_echo_prints_its_parameters_as_sorted_json():
    parameters = {"b": [1, 2], "a": "x y", "c": {"d": None}}
    step = only_step("echo", parameters)
    assert step.name == "echo"
    assert step.argv == ["echo", json.dumps(parameters, sort_keys=True)]
    result = run(step)
    assert result.returncode == 0
    assert json.loads(result.stdout) == parameters


def test_sleep_uses_parameters_seconds():
    assert only_step("sleep", {"seconds": 2.5}).argv == ["sleep", "2.5"]
    assert only_step("sleep", {"seconds": "3"}).argv == ["sleep", "3"]


def test_sleep_defaults_to_one_second():
    assert only_step("sleep", {}).argv == ["sleep", "1"]


def test_sleep_of_zero_seconds_runs_and_succeeds():
    assert run(only_step("sleep", {"seconds": 0})).returncode == 0


@pytest.mark.parametrize("seconds", [-1, -0.5, "-2"])
def test_sleep_rejects_negative_seconds(seconds):
    with pytest.raises(ValueError, match="parameters.seconds must not be negative"):
        workflow("sleep").steps({"seconds": seconds}, attempt=1)


@pytest.mark.parametrize("seconds", ["soon", None, [1], {"s": 1}])
def test_sleep_rejects_non_numeric_seconds(seconds):
    with pytest.raises(ValueError, match="parameters.seconds must be a number"):
        workflow("sleep").steps({"seconds": seconds}, attempt=1)


@pytest.mark.parametrize(("exit_code", "expected"), [(7, 7), (3.9, 3), ("42", 42), (1, 1)])
def test_fail_exits_with_parameters_exit_code(exit_code, expected):
    result = run(only_step("fail", {"exit_code": exit_code}))
    assert result.returncode == expected


def test_fail_defaults_to_exit_code_1_and_prints_its_message_to_stderr():
    result = run(only_step("fail", {}))
    assert result.returncode == 1
    assert result.stderr.strip() == "failing on purpose"


@pytest.mark.parametrize("code", [0, 256, 512])
def test_fail_refuses_exit_codes_the_shell_would_report_as_success(code):
    with pytest.raises(ValueError, match="exit_code must be from 1 to 255"):
        validate("fail", {"exit_code": code})


def test_fail_message_is_shell_quoted():
    message = "it's $HOME; `false` && exit 0"
    result = run(only_step("fail", {"message": message, "exit_code": 4}))
    assert result.returncode == 4
    assert result.stderr.strip() == message


def test_fail_with_exit_code_255_fails_with_it():
    assert run(only_step("fail", {"exit_code": 255})).returncode == 255


def test_fail_rejects_negative_exit_code():
    with pytest.raises(ValueError, match="parameters.exit_code must not be negative"):
        validate("fail", {"exit_code": -1})


@pytest.mark.parametrize(("failures", "attempts_failing"), [(0, []), (1, [1]), (2, [1, 2])])
def test_flaky_fails_attempts_up_to_failures_then_succeeds(failures, attempts_failing):
    for attempt in range(1, 5):
        result = run(only_step("flaky", {"failures": failures}, attempt=attempt))
        if attempt in attempts_failing:
            assert result.returncode == 1, attempt
            assert f"attempt {attempt} fails" in result.stderr
        else:
            assert result.returncode == 0, attempt
            assert result.stdout.strip() == f"attempt {attempt} succeeds"


def test_flaky_defaults_to_one_failure():
    assert run(only_step("flaky", {}, attempt=1)).returncode == 1
    assert run(only_step("flaky", {}, attempt=2)).returncode == 0


def test_unknown_workflow_is_refused_listing_the_known_ones():
    with pytest.raises(UnknownWorkflow) as raised:
        workflow("nope")
    message = str(raised.value)
    assert "'nope'" in message
    assert "known: echo, fail, flaky, inline, noop, sleep" in message


def test_validate_accepts_usable_parameters():
    validate("sleep", {"seconds": 1})
    validate("echo", {"anything": {"nested": True}})
    validate("noop", {})


def test_validate_refuses_an_unknown_workflow():
    with pytest.raises(UnknownWorkflow):
        validate("rm -rf", {})


@pytest.mark.parametrize(
    ("name", "parameters"),
    [
        ("sleep", {"seconds": -1}),
        ("sleep", {"seconds": "x"}),
        ("fail", {"exit_code": "x"}),
        ("flaky", {"failures": -3}),
        ("flaky", {"failures": "many"}),
    ],
)
def test_validate_refuses_unusable_parameters(name, parameters):
    with pytest.raises(ValueError, match=r"parameters\.\w+ must"):
        validate(name, parameters)


@pytest.mark.parametrize(
    ("name", "parameters"), [("fail", {"exit_code": "inf"}), ("flaky", {"failures": "inf"})]
)
def test_validate_refuses_infinite_counts_with_value_error(name, parameters):
    with pytest.raises(ValueError):
        validate(name, parameters)


def test_validate_refuses_nan_seconds():
    with pytest.raises(ValueError):
        validate("sleep", {"seconds": "nan"})


@pytest.fixture
def inline_allowed():
    allow_inline(True)
    yield
    allow_inline(False)


def test_inline_steps_are_refused_unless_the_operator_allows_them():
    with pytest.raises(ValueError, match="TASKENGINE_INLINE_STEPS=true"):
        validate("inline", {"steps": [{"name": "a", "run": ["id"]}]})


def test_inline_steps_run_as_given(inline_allowed):
    steps = workflow("inline").steps(
        {
            "steps": [
                {"name": "a", "run": ["echo", "hi"], "timeout": 5, "env": {"MODE": "fast"}},
                {"name": "b", "run": "echo $MODE | tr a-z A-Z"},
            ]
        },
        attempt=1,
    )
    assert steps == [
        Step("a", ["echo", "hi"], 5.0, {"MODE": "fast"}, client_given=True),
        Step("b", ["sh", "-c", "echo $MODE | tr a-z A-Z"], client_given=True),
    ]


@pytest.mark.parametrize(
    ("steps", "problem"),
    [
        (None, "parameters.steps must be a list"),
        ([], "parameters.steps must be a list"),
        (["echo"], "parameters.steps[0] must be an object"),
        ([{"run": ["x"]}], "parameters.steps[0].name"),
        ([{"name": "a", "run": []}], "parameters.steps[0].run"),
        ([{"name": "a", "run": [1]}], "parameters.steps[0].run"),
        ([{"name": "a", "run": ["x"], "timeout": 0}], "timeout must be a positive"),
        ([{"name": "a", "run": ["x"], "env": {"A": 1}}], "parameters.steps[0].env"),
        ([{"name": "a", "run": ["x"], "cwd": "/"}], "unknown fields: cwd"),
    ],
)
def test_inline_steps_that_could_not_run_are_refused(inline_allowed, steps, problem):
    with pytest.raises(ValueError, match=re.escape(problem)):
        validate("inline", {"steps": steps})
