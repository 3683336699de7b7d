"""Where a running system is: written by `taskengine up`, read by the other commands."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

from taskengine_core.config import EngineSettings


def endpoints_file(data_dir: Path) -> Path:
    return data_dir / "run" / "endpoints.json"


def write_endpoints(data_dir: Path, **urls: str | dict[str, str]) -> None:
    """`urls`: each server's URL by name; `metrics`, each service's metrics URL."""
    path = endpoints_file(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)  # the database URL may hold a password
    path.write_text(json.dumps(urls, indent=2))


def database_url(config: EngineSettings) -> str:
    """The environment's `TASKENGINE_DATABASE_URL`, else the one `taskengine up` is using."""
    if config.database_url:
        return config.database_url
    path = endpoints_file(config.data_dir)
    if path.exists():
        return json.loads(path.read_text())["database_url"]
    raise SystemExit(
        "no database: set TASKENGINE_DATABASE_URL or start the system with `make up`"
        f" (looked for {path})"
    )


def webhook_key(config: EngineSettings, create: bool = False) -> str | None:
    """`TASKENGINE_WEBHOOK_KEY`, else the key kept in the data dir (made there if `create`)."""
    if config.webhook_key:
        return config.webhook_key
    path = config.data_dir / "webhook.key"
    if not path.exists():
        if not create:
            return None
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(32) + "\n")
    return path.read_text().strip()
