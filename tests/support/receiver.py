"""A real HTTP callback receiver on loopback that records what it was sent.

It also plays a semaphore: a GET is answered with `gate` (e.g. 423 until the test opens it).
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook
from taskengine_core.outbound import webhook_secret

from tests.support.system import WEBHOOK_KEY


class CallbackReceiver:
    """Records every POST; answers `status` (settable, e.g. 503 to play a receiver that is down)."""

    def __init__(self) -> None:
        self.received: list[dict] = []
        self.headers: list[dict] = []
        self.raw: list[bytes] = []
        self.paths: list[str] = []
        """The path (and query) each recorded POST went to."""
        self.arrived: list[float] = []
        """When each recorded POST arrived (time.time()), to measure delivery latency."""
        self.status = 200
        self.delay = 0.0
        """Seconds each POST takes to answer (after it is recorded)."""
        self.gate = 200
        self.checks = 0
        self.recording = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                if receiver.status < 300:
                    with receiver.recording:  # the lists stay aligned with POSTs side by side
                        receiver.arrived.append(time.time())
                        receiver.received.append(json.loads(body))
                        receiver.headers.append(dict(self.headers))
                        receiver.raw.append(body)
                        receiver.paths.append(self.path)
                time.sleep(receiver.delay)
                self.send_response(receiver.status)
                self.end_headers()

            def do_GET(self) -> None:  # noqa: N802
                receiver.checks += 1
                self.send_response(receiver.gate)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/callback"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> CallbackReceiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def events_for(self, job_id: int) -> list[str]:
        return [r["event"] for r in self.received if r["job_id"] == job_id]

    def verify_signatures(self, client: str) -> int:
        """Checks every delivery's Standard Webhooks signature with `client`'s secret."""
        webhook = Webhook(webhook_secret(WEBHOOK_KEY, client))
        for body, headers in zip(self.raw, self.headers, strict=True):
            webhook.verify(body, {k.lower(): v for k, v in headers.items()})
        return len(self.raw)
