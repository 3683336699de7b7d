"""nats-py without aiohttp. nats-py imports aiohttp when it is installed (kubernetes-asyncio
installs it), only for `ws://` servers; the engine speaks `nats://` and `tls://`. aiohttp and
what it pulls in cost every service process 0.4 s of CPU and 9 MB at start (relay: 0.96 s and
61 MB before, 0.49 s and 52 MB after). So nats is imported first here with aiohttp hidden, then
aiohttp is visible again to whatever needs it (the outbound client of the notifier, the scheduler
and the gateway; the dispatcher's Kubernetes executor)."""

import sys

if "nats" not in sys.modules and "aiohttp" not in sys.modules:
    sys.modules["aiohttp"] = None  # type: ignore[assignment]  # `import aiohttp` fails: nats does without
    try:
        import nats.aio.transport  # noqa: F401
    finally:
        del sys.modules["aiohttp"]
