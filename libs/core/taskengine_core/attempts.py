"""Attempts run by a remote worker: how one that vanished is named, the failures that are not
its workflow's fault, and the token its worker reports with."""

from __future__ import annotations

import base64
import hashlib
import hmac

LOST = "lost"
"""An attempt whose worker vanished without a final report: retried like a transient one."""
TRANSIENT = ("OOMKilled", "Evicted", "DeadlineExceeded")
"""Failures of the place an attempt ran, not of its workflow (retried even by a job that
retries transient failures only)."""
TOKEN_PREFIX = "wt_"


def worker_token(key: str, job_id: int, attempt: int) -> str:
    """The token the worker of one attempt reports with: derived from the engine's signing key
    (TASKENGINE_WEBHOOK_KEY), so the gateway checks it without storing it; it is refused once
    its attempt is over."""
    digest = hmac.new(key.encode(), f"worker:{job_id}:{attempt}".encode(), hashlib.sha256)
    return TOKEN_PREFIX + base64.urlsafe_b64encode(digest.digest()).decode().rstrip("=")


def token_fits(token: str, key: str, job_id: int, attempt: int) -> bool:
    return bool(key) and hmac.compare_digest(token, worker_token(key, job_id, attempt))
