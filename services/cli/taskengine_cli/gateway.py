"""The gateway as the `taskengine jobs` commands reach it: where it is, who is asking, and its
Task Engine API routes (`client` + `api-key` headers) over httpx.

Credentials come from flags, else the environment (`TASKENGINE_URL`, `TASKENGINE_CLIENT`,
`TASKENGINE_KEY`), else what `taskengine up` left in the data dir: the gateway's URL in
`run/endpoints.json` and the demo client's key in `demo-client.key`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from taskengine_cli.clients import DEMO_CLIENT
from taskengine_cli.endpoints import endpoints_file

TIMEOUT = 30.0


def hint(key: str) -> str:
    """The most of a key ever shown: its last 4 characters (none of a short one)."""
    return f"****{key[-4:]}" if len(key) >= 12 else "****"


class ApiError(Exception):
    """The gateway refused a request, or could not be reached: the message says which."""


@dataclass(frozen=True)
class Credentials:
    url: str
    client: str
    key: str

    def __repr__(self) -> str:  # the key never shows beyond its last 4 characters
        return f"Credentials(url={self.url!r}, client={self.client!r}, key={hint(self.key)!r})"


def credentials(
    data_dir: Path,
    url: str | None = None,
    client: str | None = None,
    key: str | None = None,
    default_url: str = "http://127.0.0.1:8080",
) -> Credentials:
    """Flags first, then the environment, then the data dir of `taskengine up`."""
    url = url or os.environ.get("TASKENGINE_URL") or _gateway_url(data_dir) or default_url
    client = client or os.environ.get("TASKENGINE_CLIENT") or DEMO_CLIENT
    key = key or os.environ.get("TASKENGINE_KEY")
    if not key:
        key_file = data_dir / f"{client}.key"
        if not key_file.exists():
            raise ApiError(
                f"no key for client {client!r}: pass --key, set TASKENGINE_KEY, or start the"
                f" system with `taskengine up` (looked for {key_file})"
            )
        key = key_file.read_text().strip()
    return Credentials(url.rstrip("/"), client, key)


def _gateway_url(data_dir: Path) -> str | None:
    path = endpoints_file(data_dir)
    try:
        return str(json.loads(path.read_text())["gateway_url"])
    except (OSError, ValueError, KeyError):
        return None


class Gateway:
    """The Task Engine API's job routes; every refusal is an ApiError with the API's message."""

    def __init__(self, creds: Credentials, transport: httpx.BaseTransport | None = None):
        self.creds = creds
        self.http = httpx.Client(
            base_url=creds.url,
            headers={"client": creds.client, "api-key": creds.key},
            timeout=TIMEOUT,
            transport=transport,
        )

    def __enter__(self) -> Gateway:
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.close()

    def submit(
        self,
        workflow: str,
        parameters: dict[str, Any],
        priority: int | None = None,
        run_at: str | None = None,
    ) -> int:
        body: dict[str, Any] = {
            "client": self.creds.client,
            "job": {"workflow": workflow},
            "parameters": parameters,
        }
        if priority is not None:
            body["priority"] = priority
        if run_at is not None:
            body["run_at"] = run_at
        return int(self._call("POST", "/job", json=body)["id"])

    def jobs(self, **query: Any) -> list[dict[str, Any]]:
        params = {name: value for name, value in query.items() if value is not None}
        return list(self._call("GET", "/jobs", params=params))

    def job(self, job_id: int) -> dict[str, Any]:
        return dict(self._call("GET", f"/jobs/{job_id}"))

    def logs(self, job_id: int) -> list[dict[str, Any]]:
        return list(self._call("GET", f"/logs/{job_id}"))

    def cancel(self, job_id: int) -> dict[str, Any]:
        """The dialect's cancel: the job becomes `broken`; a running attempt is stopped."""
        return dict(self._call("PATCH", f"/jobs/{job_id}", json={"queue_state": "broken"}))

    def _call(self, method: str, path: str, **options: Any) -> Any:
        try:
            answer = self.http.request(method, path, **options)
        except httpx.HTTPError as error:
            raise ApiError(f"cannot reach the gateway at {self.creds.url}: {error}") from None
        if answer.is_success:
            try:
                return answer.json()
            except ValueError:
                raise ApiError(f"{method} {path}: the answer is not JSON") from None
        raise ApiError(f"{answer.status_code} {_message(answer, self.creds)}")


def _message(answer: httpx.Response, creds: Credentials) -> str:
    """The API's own words (`{"error": ...}`), with a hint for a refused key."""
    try:
        body = answer.json()
        text = body.get("error") or body.get("detail") or json.dumps(body)
    except (ValueError, AttributeError):
        text = answer.text[:500] or answer.reason_phrase
    if answer.status_code == 401:
        text += (
            f" (client {creds.client!r}, key {hint(creds.key)}: check --client/--key,"
            " TASKENGINE_CLIENT/TASKENGINE_KEY)"
        )
    return str(text).replace(creds.key, hint(creds.key))
