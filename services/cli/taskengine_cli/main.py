"""The `taskengine` command."""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING

from taskengine_core.clients import key_secret, new_key
from taskengine_core.config import engine_settings
from taskengine_core.workflows import BUILT_IN, Registry

from taskengine_cli import jobs, probe, subscribe, worker
from taskengine_cli.clients import ClientError, register, revoke
from taskengine_cli.endpoints import database_url, webhook_key
from taskengine_cli.progress import events_bar, follow_relay, on_terminal

if TYPE_CHECKING:  # the store, nats and the outbound client load only for the commands using them
    from taskengine_store.store import EventStore


def _store() -> EventStore:
    from taskengine_store.store import EventStore  # here: a command that needs no store is quick

    return EventStore(database_url(engine_settings()), pool_size=1)


def cmd_up(args: argparse.Namespace) -> int:
    from taskengine_cli.supervisor import Supervisor

    return Supervisor(engine_settings()).run()


def cmd_migrate(args: argparse.Namespace) -> int:
    _store().create_tables()
    print("tables ready")
    return 0


def cmd_clients_add(args: argparse.Namespace) -> int:
    key = args.key or new_key()
    master = webhook_key(engine_settings())
    register(_store(), args.name, key, args.admin, secret=key_secret(master) if master else None)
    print(f"client {args.name}{' (admin)' if args.admin else ''}: key {key}")
    print_webhook_secret(args.name)
    return 0


def print_webhook_secret(name: str) -> None:
    from taskengine_core.outbound import webhook_secret

    master = webhook_key(engine_settings())
    if master is None:
        print("webhook secret: unknown here (set TASKENGINE_WEBHOOK_KEY as the notifier has it)")
        return
    print(f"webhook secret {webhook_secret(master, name)} (verifies this client's callbacks)")


def cmd_clients_secret(args: argparse.Namespace) -> int:
    print_webhook_secret(args.name)
    return 0


def cmd_clients_revoke(args: argparse.Namespace) -> int:
    try:
        revoke(_store(), args.name, by="cli")
    except ClientError as error:
        print(f"taskengine: {error}", file=sys.stderr)
        return 1
    print(f"client {args.name} revoked: the gateway refuses its key within 5 s")
    return 0


def cmd_clients_list(args: argparse.Namespace) -> int:
    rows = _store().query(
        "SELECT name, key_hint, admin, registered_at, revoked_at FROM rm_clients ORDER BY name"
    )
    for row in rows:
        if row["revoked_at"]:
            print(f"{row['name']}\trevoked\t{row['revoked_at']:%Y-%m-%d}")
            continue
        admin = " admin" if row["admin"] else ""
        print(f"{row['name']}\tkey ****{row['key_hint']}\t{row['registered_at']:%Y-%m-%d}{admin}")
    return 0


def cmd_events(args: argparse.Namespace) -> int:
    from taskengine_cli import ops

    if args.rejected:
        ops.print_rejected(_store(), limit=args.limit)
        return 0
    try:
        ops.print_events(_store(), after=args.after, follow=args.follow, job=args.job)
    except KeyboardInterrupt:
        pass
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from taskengine_cli import ops

    store = _store()
    if args.reset:
        ops.reset_read_models(store)
        print("read models emptied; the projector is rebuilding them from position 0")
        return 0
    started = time.monotonic()
    try:
        if on_terminal():
            with events_bar("replaying") as advance:
                done = ops.replay(store, progress=advance)
        else:
            done = ops.replay(store)
    except KeyboardInterrupt:
        print("replay interrupted: nothing was changed", file=sys.stderr)
        return 130
    seconds = time.monotonic() - started
    position = done.position
    print(f"position   {position}")
    print(f"rebuilt    {done.rebuilt:.2f} s ({position / max(done.rebuilt, 1e-9):.0f} events/s)")
    print(f"took       {seconds:.2f} s, both hashes included")
    print(f"replayed   {done.replayed}")
    print(f"live       {done.live}")
    print("identical" if done.replayed == done.live else "DIFFERENT")
    return 0 if done.replayed == done.live else 1


def cmd_republish(args: argparse.Namespace) -> int:
    from taskengine_cli import ops

    store = _store()
    ops.rewind_relay(store, args.after)
    print(
        f"the relay will publish every event after position {args.after} again when it"
        " restarts (stop its process; `taskengine up` restarts it). JetStream drops what"
        " is still within its duplicate window; consumers skip what they already handled.",
        flush=True,
    )
    if on_terminal():  # follow the relay to the head; Ctrl-C stops watching, not the relay
        try:
            with events_bar("republishing") as advance:
                follow_relay(store, args.after, advance)
        except KeyboardInterrupt:
            pass
    return 0


def cmd_workflows(args: argparse.Namespace) -> int:
    config = engine_settings()
    registry = Registry(config.workflows_dir).load()
    for name, flow in sorted({**BUILT_IN, **registry.workflows}.items()):
        image = flow.image or f"{config.worker_image} (default)"
        steps = "-" if flow.defined_steps is None else str(len(flow.defined_steps))
        print(f"{name}\t{flow.source}\t{image}\t{steps}\t{flow.describe}")
    for problem in registry.problems:
        print(f"taskengine: {problem}", file=sys.stderr)
    return 1 if registry.problems else 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="taskengine", description="Taskengine operations")
    sub = root.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="start the embedded system (servers and services)").set_defaults(
        func=cmd_up
    )
    sub.add_parser("migrate", help="create the tables").set_defaults(func=cmd_migrate)

    clients = sub.add_parser("clients", help="manage API clients").add_subparsers(required=True)
    add = clients.add_parser(
        "add", help="create a client (or give it a new key, also after a revoke); prints the key"
    )
    add.add_argument("name")
    add.add_argument("--admin", action="store_true")
    add.add_argument("--key", help="use this key instead of a random one")
    add.set_defaults(func=cmd_clients_add)
    clients.add_parser("list").set_defaults(func=cmd_clients_list)
    secret = clients.add_parser(
        "webhook-secret", help="print the secret that signs this client's callbacks"
    )
    secret.add_argument("name")
    secret.set_defaults(func=cmd_clients_secret)
    revocation = clients.add_parser("revoke", help="refuse the client's key from now on")
    revocation.add_argument("name")
    revocation.set_defaults(func=cmd_clients_revoke)

    events = sub.add_parser("events", help="print or follow the event log")
    events.add_argument("--after", type=int, default=0, help="start after this position")
    events.add_argument("--follow", "-f", action="store_true")
    events.add_argument("--job", type=int, help="only this job's events")
    events.add_argument(
        "--rejected",
        action="store_true",
        help="list the messages consumers set aside (stream sequence, subject, error)",
    )
    events.add_argument(
        "--limit", type=int, default=1000, help="with --rejected: at most this many, the latest"
    )
    events.set_defaults(func=cmd_events)

    replay = sub.add_parser("replay", help="rebuild read models from position 0, compare hashes")
    replay.add_argument(
        "--reset",
        action="store_true",
        help="instead, empty the live read models so the projector rebuilds them",
    )
    replay.set_defaults(func=cmd_replay)

    republish = sub.add_parser("republish", help="re-publish the event log (e.g. a lost stream)")
    republish.add_argument("--after", type=int, default=0, help="from after this position")
    republish.set_defaults(func=cmd_republish)

    workflows = sub.add_parser("workflows", help="list workflows").add_subparsers(required=True)
    listing = (
        "built-ins and those in TASKENGINE_WORKFLOWS_DIR: name, source, image, steps,"
        " description; malformed files go to stderr as path:line: problem, and exit 1"
    )
    workflows.add_parser("list", help=listing, description=listing).set_defaults(func=cmd_workflows)
    jobs.register(sub)
    subscribe.register(sub)
    probe.register(sub)
    worker.register(sub)
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
