"""`taskengine jobs submit | list | show | logs | watch | cancel`: a person's view of their jobs
through the gateway's Task Engine API.

Output is a coloured table on a terminal, tab-separated lines when piped, and the API's own JSON
with `--json`. A refusal prints the API's message and exits 1; the key never shows beyond its
last 4 characters.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.table import Table
from taskengine_core.config import engine_settings

from taskengine_cli.gateway import ApiError, Gateway, credentials

QUEUE_STATES = ("queued", "started", "completed", "pending", "broken", "scheduled", "paused")
"""The dialect's queue states, by their number (`GET /jobs?state=N`)."""
FINAL = ("completed", "broken")
COLOURS = {
    "queued": "cyan",
    "started": "blue",
    "pending": "yellow",
    "scheduled": "magenta",
    "paused": "yellow",
    "succeeded": "green",
    "failed": "bold red",
    "broken": "red",
}
WATCH_INTERVAL = 0.5


def state(job: dict[str, Any]) -> str:
    """The queue state, with a completed job's outcome: `succeeded` or `failed`."""
    if job["queue_state"] == "completed":
        return "failed" if job["failed"] else "succeeded"
    return str(job["queue_state"])


class Output:
    """Where results go: JSON (`--json`), a rich table on a terminal, else plain lines."""

    def __init__(self, as_json: bool, console: Console | None = None):
        self.as_json = as_json
        self.console = console or Console(highlight=False)
        self.rich = not as_json and self.console.is_terminal

    def data(self, value: Any) -> None:
        print(json.dumps(value), flush=True)

    def table(self, columns: list[str], rows: list[list[str]], styles: list[str] | None = None):
        if not self.rich:
            for row in rows:
                print("\t".join(row), flush=True)
            return
        table = Table(*columns, header_style="bold")
        for index, row in enumerate(rows):
            table.add_row(*row, style=styles[index] if styles else None)
        self.console.print(table)

    def line(self, text: str, style: str | None = None) -> None:
        if self.rich:
            self.console.print(text, style=style, markup=False)
        else:
            print(text, flush=True)


def parameters_of(args: argparse.Namespace) -> dict[str, Any]:
    """`--parameters JSON`, then each `--param NAME=VALUE` (a JSON value, else a string)."""
    parameters: dict[str, Any] = {}
    if args.parameters:
        loaded = json.loads(args.parameters)
        if not isinstance(loaded, dict):
            raise ApiError("--parameters must be a JSON object")
        parameters.update(loaded)
    for item in args.param or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ApiError(f"--param {item!r}: write NAME=VALUE")
        try:
            parameters[name] = json.loads(value)
        except ValueError:
            parameters[name] = value
    return parameters


def cmd_submit(gateway: Gateway, out: Output, args: argparse.Namespace) -> int:
    try:
        parameters = parameters_of(args)
    except ValueError as error:
        raise ApiError(f"--parameters is not JSON: {error}") from None
    job_id = gateway.submit(args.workflow, parameters, args.priority, args.run_at)
    if args.watch:
        return watch(gateway, out, job_id)
    if out.as_json:
        out.data({"id": job_id, "result": "accepted"})
    else:
        out.line(f"job {job_id} accepted", style="green")
    return 0


def cmd_list(gateway: Gateway, out: Output, args: argparse.Namespace) -> int:
    number = None
    if args.state is not None:
        number = QUEUE_STATES.index(args.state) if args.state in QUEUE_STATES else args.state
    failed = None if args.failed is None else int(args.failed)
    jobs = gateway.jobs(state=number, failed=failed, limit=args.limit, search=args.search)
    if out.as_json:
        out.data(jobs)
        return 0
    rows = [
        [str(j["id"]), j["workflow"], state(j), str(j["priority"]), str(j["position"] or ""),
         j["created_at"], j["updated_at"]]
        for j in jobs
    ]  # fmt: skip
    columns = ["id", "workflow", "state", "priority", "position", "created", "updated"]
    out.table(columns, rows, [COLOURS.get(state(j), "") for j in jobs])
    return 0


def cmd_show(gateway: Gateway, out: Output, args: argparse.Namespace) -> int:
    job = gateway.job(args.job_id)
    if out.as_json:
        out.data(job)
        return 0
    fields = {**job, "state": state(job), "parameters": json.dumps(job["parameters"])}
    rows = [[name, "" if value is None else str(value)] for name, value in fields.items()]
    out.table(["field", "value"], rows)
    return 0


def cmd_logs(gateway: Gateway, out: Output, args: argparse.Namespace) -> int:
    rows = gateway.logs(args.job_id)
    if out.as_json:
        out.data(rows)
        return 0
    styles = {"WARN": "yellow", "ERROR": "red", "DEBUG": "dim"}
    out.table(
        ["at", "from", "severity", "message"],
        [[r["created_at"], r["progname"], r["severity_description"], r["message"]] for r in rows],
        [styles.get(r["severity_description"], "") for r in rows],
    )
    return 0


def cmd_watch(gateway: Gateway, out: Output, args: argparse.Namespace) -> int:
    return watch(gateway, out, args.job_id, args.interval)


def watch(
    gateway: Gateway,
    out: Output,
    job_id: int,
    interval: float = WATCH_INTERVAL,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Follows the job until it is final, a line (a JSON object with `--json`) per change of
    state; 0 if it succeeded, 1 if it failed or was cancelled."""
    last = None
    while True:
        job = gateway.job(job_id)
        now = state(job)
        if now != last:
            if out.as_json:
                out.data({**job, "state": now})
            else:
                out.line(f"{job['updated_at']}  job {job_id}  {now}", style=COLOURS.get(now))
            last = now
        if job["queue_state"] in FINAL:
            if now != "succeeded" and not out.as_json:
                out.line(f"see `taskengine jobs logs {job_id}` for why", style="dim")
            return 0 if now == "succeeded" else 1
        sleep(interval)


def cmd_cancel(gateway: Gateway, out: Output, args: argparse.Namespace) -> int:
    answer = gateway.cancel(args.job_id)
    if out.as_json:
        out.data(answer)
    else:
        out.line(f"job {args.job_id} cancelled (broken)", style="red")
    return 0


def run(args: argparse.Namespace) -> int:
    """Runs one `jobs` verb; a refusal is its message on stderr and exit 1, never a traceback."""
    out = Output(args.json)
    try:
        config = engine_settings()
        creds = credentials(config.data_dir, args.url, args.client, args.key)
        with Gateway(creds) as gateway:
            return int(args.verb(gateway, out, args))
    except ApiError as error:
        print(f"taskengine: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def register(commands: argparse._SubParsersAction) -> None:
    """Adds `jobs` to the `taskengine` command."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help="the gateway (default: TASKENGINE_URL, else `make up`'s)")
    common.add_argument("--client", help="default: TASKENGINE_CLIENT, else demo-client")
    common.add_argument(
        "--key", help="the client's key (default: TASKENGINE_KEY, else <data dir>/<client>.key)"
    )
    common.add_argument("--json", action="store_true", help="print the API's JSON")

    jobs = commands.add_parser("jobs", help="submit and follow jobs through the gateway")
    verbs = jobs.add_subparsers(dest="jobs_verb", required=True)

    submit = verbs.add_parser("submit", parents=[common], help="submit a job; prints its id")
    submit.add_argument("workflow")
    submit.add_argument(
        "--param", "-p", action="append", metavar="NAME=VALUE", help="a parameter (repeatable)"
    )
    submit.add_argument("--parameters", metavar="JSON", help="all parameters as a JSON object")
    submit.add_argument("--priority", type=int, help="1 (most urgent) to 10; default 5")
    submit.add_argument("--run-at", help="UTC yyyy-MM-ddTHH:mm:ss.fff: wait until then")
    submit.add_argument("--watch", action="store_true", help="then follow it until it is final")
    submit.set_defaults(verb=cmd_submit)

    listing = verbs.add_parser("list", parents=[common], help="your jobs, newest first")
    listing.add_argument("--state", help=f"one of {', '.join(QUEUE_STATES)} (or its number)")
    listing.add_argument("--failed", type=int, choices=(0, 1), help="1: failed jobs only")
    listing.add_argument("--limit", type=int, default=10)
    listing.add_argument("--search", help="text inside the parameters")
    listing.set_defaults(verb=cmd_list)

    for name, verb, text in (
        ("show", cmd_show, "one job"),
        ("logs", cmd_logs, "a job's log"),
        ("cancel", cmd_cancel, "cancel a job (stops it if running)"),
    ):
        parser = verbs.add_parser(name, parents=[common], help=text)
        parser.add_argument("job_id", type=int)
        parser.set_defaults(verb=verb)

    follow = verbs.add_parser(
        "watch",
        parents=[common],
        help="follow a job until it is final; exit 0 if it succeeded, 1 if not",
    )
    follow.add_argument("job_id", type=int)
    follow.add_argument("--interval", type=float, default=WATCH_INTERVAL, help="seconds")
    follow.set_defaults(verb=cmd_watch)
    jobs.set_defaults(func=run)
