from taskengine_runtime import _lean  # noqa: F401, I001  (first: nats without aiohttp)
from taskengine_runtime.bus import BatchConsumer, Delivered, connect, ensure_stream
from taskengine_runtime.runtime import Runtime, run_service

__all__ = ["BatchConsumer", "Delivered", "Runtime", "connect", "ensure_stream", "run_service"]
