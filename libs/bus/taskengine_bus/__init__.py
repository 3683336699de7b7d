from taskengine_bus.bus import BatchConsumer, Delivered, connect, ensure_stream
from taskengine_bus.runtime import Runtime, run_service

__all__ = ["BatchConsumer", "Delivered", "Runtime", "connect", "ensure_stream", "run_service"]
