"""Client-given steps run confined: another user, a scratch home, a bare environment; and a
runner's environment is unreadable even to processes of its own user. Real processes."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from pydantic import ValidationError
from taskengine_core import confinement
from taskengine_core.config import EngineSettings
from taskengine_core.confinement import Confinement, can_switch_user
from taskengine_core.steps import Outcome, run_steps
from taskengine_core.workflows import Step

switching = pytest.mark.skipif(not can_switch_user(), reason="needs root to switch users")
NOBODY = 65534
SECRET = "postgresql://taskengine:confinement-test-secret@db/taskengine"


def test_the_step_user_is_a_uid_and_gid_other_than_root():
    assert EngineSettings(step_user="1234:5678").step_ids == (1234, 5678)
    assert EngineSettings().step_ids == (NOBODY, NOBODY)
    for wrong in ("0:0", "1000:0", "nobody", "1000", "-1:5"):
        with pytest.raises(ValidationError, match="not uid:gid"):
            EngineSettings(step_user=wrong)


def test_a_runner_that_cannot_switch_users_refuses_client_steps_unless_allowed(monkeypatch):
    monkeypatch.setattr(confinement, "can_switch_user", lambda: False)
    refusing = Confinement.of(EngineSettings())
    assert "refused" in refusing.refused and "TASKENGINE_STEP_SAME_USER" in refusing.refused
    assert Confinement.of(EngineSettings(step_same_user=True)) == Confinement(None, None)
    monkeypatch.setattr(confinement, "can_switch_user", lambda: True)
    assert Confinement.of(EngineSettings(step_user="4000:4001")) == Confinement(4000, 4001)


async def run(step: Step, confined: Confinement) -> tuple[Outcome, list[str]]:
    lines = []
    outcome = await run_steps(
        [step], {"TASKENGINE_JOB_ID": "7"}, 30.0, lines.append, confinement=confined
    )
    return outcome, [line.text for line in lines]


PROBE = (
    "id -u; id -G; pwd; echo home: $HOME; env | sort;"
    f" if cat /proc/{os.getpid()}/environ >/dev/null 2>&1; then echo READ; else echo REFUSED; fi"
)


@switching
async def test_a_client_step_runs_as_the_step_user_in_its_own_scratch_home(monkeypatch):
    monkeypatch.setenv("TASKENGINE_DATABASE_URL", SECRET)
    outcome, lines = await run(
        Step("probe", ["sh", "-c", PROBE], client_given=True), Confinement(NOBODY, NOBODY)
    )
    assert outcome.status == "succeeded", lines
    output = lines[1:-1]  # between "started" and "completed"
    assert output[:2] == [str(NOBODY), str(NOBODY)]  # its uid; its gid alone, no root groups
    scratch = output[2]
    assert output[3] == f"home: {scratch}" and "taskengine-step-" in scratch
    assert not os.path.exists(scratch)  # noqa: ASYNC240  (removed once the attempt is over)
    env = {line.split("=", 1)[0] for line in output if "=" in line}
    assert env <= {
        "PATH",
        "LANG",
        "TZ",
        "HOME",
        "TMPDIR",
        "USER",
        "LOGNAME",
        "TASKENGINE_JOB_ID",
        "PWD",
        "SHLVL",
        "_",
    } | {n for n in env if n.startswith("LC_")}, env
    assert "TASKENGINE_JOB_ID" in env
    assert not any(SECRET in line for line in lines)
    assert output[-1] == "REFUSED"  # the runner's /proc/<pid>/environ belongs to root

    # The same probe as a step of the engine's own (not client-given) reads it: as root.
    _, own = await run(Step("probe", ["sh", "-c", PROBE]), Confinement(NOBODY, NOBODY))
    assert own[1] == "0" and own[-2] == "READ"


async def test_client_steps_are_refused_where_they_cannot_be_confined():
    refusing = Confinement(None, None, "inline steps are refused: no other user")
    outcome, lines = await run(Step("x", ["true"], client_given=True), refusing)
    assert (outcome.status, outcome.exit_code) == ("failed", 126)
    assert "no other user" in outcome.reason and any("no other user" in line for line in lines)
    outcome, _ = await run(Step("x", ["true"]), refusing)  # the engine's own steps still run
    assert outcome.status == "succeeded"


async def test_allowed_to_stay_the_same_user_a_client_step_still_gets_a_bare_environment(
    monkeypatch,
):
    monkeypatch.setenv("TASKENGINE_DATABASE_URL", SECRET)
    outcome, lines = await run(
        Step("env", ["sh", "-c", "env; pwd"], client_given=True, env={"MINE": "1"}),
        Confinement(None, None),
    )
    assert outcome.status == "succeeded"
    assert "MINE=1" in lines and "TASKENGINE_JOB_ID=7" in lines
    assert not any(SECRET in line or "TASKENGINE_DATABASE_URL" in line for line in lines)
    assert "taskengine-step-" in lines[-2]  # its working directory


@switching
@pytest.mark.parametrize("hidden", [True, False])
def test_a_runner_not_dumpable_hides_its_environment_from_its_own_user(hidden):
    """Two processes of one unprivileged user: the runner's environ is readable to the other
    only while the runner is dumpable."""
    # Started as root (the step user cannot reach this interpreter), it switches itself, then
    # is made dumpable again: as a process started as that user would be.
    runner_code = (
        "import ctypes, os, sys, time\n"
        "from taskengine_core.confinement import not_dumpable\n"
        f"os.setgroups([]); os.setgid({NOBODY}); os.setuid({NOBODY})\n"
        "ctypes.CDLL('libc.so.6').prctl(4, 1, 0, 0, 0)\n"
        "if sys.argv[1] == 'hide': not_dumpable()\n"
        "print('ready', flush=True); time.sleep(60)\n"
    )
    runner = subprocess.Popen(
        [sys.executable, "-c", runner_code, "hide" if hidden else "show"],
        env={"PATH": os.environ["PATH"], "SECRET_URL": SECRET, "PYTHONPATH": ":".join(sys.path)},
        stdout=subprocess.PIPE,
        cwd="/",
    )
    try:
        assert runner.stdout is not None and runner.stdout.readline() == b"ready\n"
        reader = subprocess.run(
            ["cat", f"/proc/{runner.pid}/environ"],
            capture_output=True,
            user=NOBODY,
            group=NOBODY,
            extra_groups=[],
            cwd="/",
            timeout=30,
        )
        assert (SECRET.encode() in reader.stdout) is not hidden, reader
        assert (b"Permission denied" in reader.stderr) is hidden
    finally:
        runner.kill()
        runner.wait()
