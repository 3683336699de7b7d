"""What the gateway's handlers are given: the runtime, the submitter, the authenticator, the
read models' reads."""

from __future__ import annotations

from dataclasses import dataclass, field

from taskengine_core.outbound import OutboundGuard
from taskengine_runtime import Runtime

from taskengine_gateway.auth import Authenticator
from taskengine_gateway.health import Heartbeats
from taskengine_gateway.limits import ByteBudget
from taskengine_gateway.quotas import SocketQuota, TaskQuota
from taskengine_gateway.reading import Reads
from taskengine_gateway.submitter import Submitter


@dataclass
class GatewayState:
    runtime: Runtime
    submitter: Submitter
    authenticator: Authenticator
    heartbeats: Heartbeats
    guard: OutboundGuard
    reads: Reads
    ingest: ByteBudget
    """Request bytes per client."""
    sockets: SocketQuota = field(default_factory=SocketQuota)
    tasks: TaskQuota = field(default_factory=TaskQuota)
