"""Real nats-server and PostgreSQL started from wheels, for the embedded default and tests."""

from .servers import (
    EmbeddedNats,
    EmbeddedNatsCluster,
    EmbeddedPostgres,
    EmbeddedServerError,
    free_port,
)

__all__ = [
    "EmbeddedNats",
    "EmbeddedNatsCluster",
    "EmbeddedPostgres",
    "EmbeddedServerError",
    "free_port",
]
