"""`taskengine jobs` without a system: where credentials come from, how refusals read, what
`watch` prints and returns, and the output forms. (tests/e2e/test_cli.py runs the commands
against a running system.)"""

from __future__ import annotations

import io
import json

import httpx
import pytest
from rich.console import Console
from taskengine_cli.gateway import ApiError, Credentials, Gateway, credentials
from taskengine_cli.jobs import Output, watch
from taskengine_cli.progress import follow_relay

KEY = "k-0123456789abcdefWXYZ"


@pytest.fixture
def clean_env(monkeypatch):
    for name in ("TASKENGINE_URL", "TASKENGINE_CLIENT", "TASKENGINE_KEY"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_flags_win_over_the_environment_which_wins_over_the_data_dir(tmp_path, clean_env):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "endpoints.json").write_text(json.dumps({"gateway_url": "http://dd:1"}))
    (tmp_path / "demo-client.key").write_text("demo-key-from-the-data-dir\n")
    assert credentials(tmp_path) == Credentials(
        "http://dd:1", "demo-client", "demo-key-from-the-data-dir"
    )
    clean_env.setenv("TASKENGINE_URL", "http://env:2/")
    clean_env.setenv("TASKENGINE_CLIENT", "alice")
    clean_env.setenv("TASKENGINE_KEY", "alice-key-from-env")
    assert credentials(tmp_path) == Credentials("http://env:2", "alice", "alice-key-from-env")
    assert credentials(tmp_path, "http://flag:3", "bob", "bob-key") == Credentials(
        "http://flag:3", "bob", "bob-key"
    )


def test_no_key_anywhere_says_where_it_looked(tmp_path, clean_env):
    missing = r"no key for client 'demo-client': pass --key.*demo-client\.key"
    with pytest.raises(ApiError, match=missing):
        credentials(tmp_path)


def test_the_key_never_shows_beyond_its_last_4_characters():
    creds = Credentials("http://x", "alice", KEY)
    assert KEY not in repr(creds) and "****WXYZ" in repr(creds)

    def refuse(request: httpx.Request) -> httpx.Response:
        assert request.headers["api-key"] == KEY and request.headers["client"] == "alice"
        return httpx.Response(401, json={"error": f"invalid client or api-key {KEY}"})

    with Gateway(creds, transport=httpx.MockTransport(refuse)) as gateway:
        with pytest.raises(ApiError) as refused:
            gateway.jobs()
    text = str(refused.value)
    assert text.startswith("401 invalid client or api-key") and "TASKENGINE_KEY" in text
    assert KEY not in text and "****WXYZ" in text


def test_an_unreachable_gateway_is_a_message():
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    creds = Credentials("http://127.0.0.1:9", "alice", KEY)
    with Gateway(creds, transport=httpx.MockTransport(down)) as gateway:
        with pytest.raises(ApiError, match="cannot reach the gateway at http://127.0.0.1:9"):
            gateway.job(1)


def scripted(states: list[tuple[str, bool]]) -> Gateway:
    """A gateway whose job 5 goes through `states` (queue_state, failed), one per GET."""
    answers = iter(states)

    def handle(request: httpx.Request) -> httpx.Response:
        queue_state, failed = next(answers)
        body = {"id": 5, "queue_state": queue_state, "failed": failed, "updated_at": "t"}
        return httpx.Response(200, json=body)

    return Gateway(Credentials("http://x", "a", KEY), transport=httpx.MockTransport(handle))


def test_watch_prints_each_change_once_and_exits_by_the_outcome(capsys):
    states = [("queued", False), ("queued", False), ("started", False), ("completed", False)]
    assert watch(scripted(states), Output(True), 5, sleep=lambda _: None) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["state"] for line in lines] == ["queued", "started", "succeeded"]

    failed = [("started", False), ("completed", True)]
    assert watch(scripted(failed), Output(True), 5, sleep=lambda _: None) == 1
    cancelled = [("queued", False), ("broken", False)]
    assert watch(scripted(cancelled), Output(False), 5, sleep=lambda _: None) == 1
    plain = capsys.readouterr().out.splitlines()
    assert plain[-2].endswith("job 5  broken") and "taskengine jobs logs 5" in plain[-1]


def test_a_terminal_gets_a_coloured_table_and_a_pipe_plain_lines(capsys):
    screen = io.StringIO()
    terminal = Output(False, Console(file=screen, force_terminal=True, width=80))
    assert terminal.rich
    terminal.table(["id", "state"], [["5", "failed"]], ["bold red"])
    drawn = screen.getvalue()
    assert "\x1b[" in drawn and "failed" in drawn and "┃" in drawn

    piped = Output(False, Console(file=io.StringIO(), force_terminal=False))
    assert not piped.rich
    piped.table(["id", "state"], [["5", "failed"]])
    assert capsys.readouterr().out == "5\tfailed\n"


def test_republish_follows_the_relay_to_the_head():
    class Store:
        reads = iter([(100, 40), (100, 70), (104, 104)])

        def head_and_tracked(self, name: str) -> tuple[int, int]:
            assert name == "relay"
            return next(self.reads)

    seen: list[tuple[int, int]] = []
    follow_relay(Store(), 40, lambda done, total: seen.append((done, total)), sleep=lambda _: None)  # type: ignore[arg-type]
    assert seen == [(0, 60), (30, 60), (64, 64)]
