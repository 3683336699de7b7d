"""The one settings object, read from `TASKENGINE_*` environment variables."""

from __future__ import annotations

import posixpath
import ssl
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

LOCAL, PROCESS, KUBERNETES = "local", "process", "kubernetes"
EXECUTORS = (LOCAL, PROCESS, KUBERNETES)
"""How the dispatcher runs attempts (TASKENGINE_EXECUTOR)."""


class EngineSettings(BaseSettings):
    """Process configuration. Runtime knobs (max_jobs, retry_limit, ...) are `Settings` events."""

    model_config = SettingsConfigDict(env_prefix="TASKENGINE_", extra="ignore")

    database_url: str = ""
    nats_url: str = ""
    nats_user: str = Field(
        default="", description="the NATS user the services connect as (default none: no auth)"
    )
    nats_password: str = Field(default="", description="that user's password (keep it secret)")
    nats_tls_ca: str = Field(
        default="",
        description="a CA certificate file (PEM) the NATS servers' certificates are checked"
        " against; set, the connection is TLS (as it is for tls:// URLs, with the system's CAs)",
    )
    nats_replicas: int = Field(
        default=1,
        ge=1,
        le=5,
        description="replicas of the TASKENGINE stream (3 or 5 on a NATS cluster): it is"
        " created with them, and a stream with fewer is raised to them (never lowered)",
    )
    data_dir: Path = Path(".taskengine")
    host: str = "127.0.0.1"
    port: int = 8080
    keep_alive: int = Field(
        default=65,
        ge=1,
        le=3600,
        description="seconds the gateway keeps an idle keep-alive connection open: longer than"
        " its clients' and load balancers' own idle timeouts (httpx 5 s, AWS ALB 60 s), so a"
        " client never sends a request on a connection the gateway is closing",
    )
    reuse_port: bool = Field(
        default=False,
        description="the gateway binds its port with SO_REUSEPORT, so several gateways on one"
        " host share it (`taskengine up` sets it when it runs more than one)",
    )
    replicas: str = Field(
        default="",
        description="`taskengine up`: processes per service, e.g. `gateway=2,admission=2`"
        " (gateways share the port; admission and scheduler replicas stand by)",
    )
    bootstrap_client: str = ""
    callback_allowlist: str = ""
    outbound_deadline: float = Field(
        default=10.0,
        gt=0,
        description="seconds a callback or semaphore check may take in all (connect, headers"
        " and body); a call still going then is a failed attempt",
    )
    outbound_max_response_bytes: int = Field(
        default=65_536,
        ge=0,
        description="the most of a callback's or semaphore's response body read; the rest is"
        " dropped unread and the answer counts by its status",
    )
    outbound_per_host: int = Field(
        default=32,
        ge=1,
        le=1024,
        description="calls in flight at once to one receiver (scheme, host and port), so a slow"
        " receiver cannot take the notifier's or scheduler's whole concurrency"
        " (outbound_concurrency): at most a quarter of it",
    )
    outbound_concurrency: int = Field(
        default=256,
        ge=4,
        le=4096,
        description="calls in flight at once from the notifier, and from the scheduler, over all"
        " receivers (each call an open connection)",
    )
    outbound_breaker_failures: int = Field(
        default=5,
        ge=1,
        description="failed calls in a row (errors, timeouts, 5xx) after which a receiver is"
        " held back: its calls wait, others flow",
    )
    outbound_breaker_cooldown: float = Field(
        default=5.0,
        gt=0,
        description="seconds a receiver is held back before one call probes it; doubled after"
        " each failed probe up to outbound_breaker_max_cooldown",
    )
    outbound_breaker_max_cooldown: float = Field(
        default=300.0, gt=0, description="the longest a receiver is held back between probes"
    )
    webhook_key: str = Field(
        default="",
        description="signs callbacks; each client's secret is derived from it (keep it secret)",
    )
    instance: str = Field(default="", description="stable name of this process instance")
    auth_failure_burst: int = Field(
        default=20,
        ge=1,
        description="failed key checks an address (or a client name) may make at once before"
        " the gateway answers 429; refilled at auth_failures_per_minute",
    )
    auth_failures_per_minute: float = Field(
        default=30,
        gt=0,
        description="failed key checks per minute an address (or a client name) regains",
    )
    trusted_proxies: str = Field(
        default="",
        description="proxies whose X-Forwarded-For names the caller's address, as IPs or CIDRs,"
        " comma-separated (default none: the peer's address is the caller's)",
    )
    create_tables: bool = False
    log_level: str = "INFO"
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="how services log: text (human-readable lines) or json (one JSON object"
        " per line: time, level, service, instance, logger, message and, where known, job_id,"
        " client and position)",
    )
    metrics_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="where a service serves its Prometheus metrics (/metrics); 0: nowhere"
        " (`taskengine up` gives each service a port of its own and prints them)",
    )
    metrics_host: str = Field(
        default="127.0.0.1",
        description="the address the metrics server listens on (0.0.0.0 in a container, for"
        " Prometheus to reach it)",
    )
    max_body_bytes: int = 524_288  # an event must fit NATS's default 1 MB max payload
    pool_size: int = 4
    poison_attempts: int = Field(
        default=5,
        ge=1,
        description="same-way failures of one message before a consumer sets it aside",
    )
    read_wait: float = Field(
        default=2.0,
        ge=0,
        description="seconds a list, search or count may wait for the read models to hold every"
        " write acknowledged before it; answered stale (X-Taskengine-Stale) after that; 0: no wait",
    )
    follow_interval: float = Field(
        default=0.2,
        ge=0,
        le=1,
        description="seconds between two batches of the projector (off a job's way to its"
        " start): under load it takes what came meanwhile as one batch, not many small ones;"
        " a list, search or count waiting for the read models cuts the pause short; 0: each"
        " batch at once",
    )
    reaction_interval: float = Field(
        default=0.05,
        ge=0,
        le=1,
        description="seconds between two batches of the scheduler and the notifier (off a"
        " job's way to its start, and no read waits for them): under load each takes what"
        " came meanwhile as one batch, and the timers and callbacks they make lag by at most"
        " this; 0: each batch at once",
    )
    hop_trace: bool = Field(
        default=False,
        description="debug: the relay stamps each message's publish instant and each consumer"
        " appends every event's written, published, received and handled instants to"
        " <data dir>/run/hops-<consumer>.csv (what `make bench` breaks its latency down by)",
    )
    partition_ttl: float = Field(
        default=15.0,
        ge=1,
        le=600,
        description="seconds a dispatcher's or notifier's lease on a partition of the work lasts"
        " unrenewed (renewed every fifth of it): how soon the others take over a dead instance's"
        " attempts and callbacks. A callback is sent only within the lease it was started in:"
        " keep it above TASKENGINE_OUTBOUND_DEADLINE",
    )
    attempt_timeout: float = Field(
        default=3600.0,
        gt=0,
        le=7 * 24 * 3600,
        description="seconds one attempt may run when its job names no deadline of its own (the"
        " Task Engine API's timeout, a work task's task_spec.timeout, a Drove task's"
        " opSpec.timeout); past it the attempt is timed out",
    )
    min_fire_interval: int = Field(
        default=1,
        ge=1,
        description="the shortest interval, in seconds, allowed between two fires of a scheduled"
        " task's cron or rrule: a schedule that fires closer is refused (422), and the scheduler"
        " never fires one task closer than this",
    )
    executor: str = Field(
        default="local",
        description="how the dispatcher runs attempts: local (in-process steps), process (a"
        " `taskengine worker` subprocess reporting over HTTP) or kubernetes (a Job per attempt)",
    )
    gateway_url: str = Field(
        default="",
        description="where remote workers report (default http://<host>:<port>)",
    )
    inline_steps: bool = Field(
        default=False,
        description="accept the `inline` workflow, whose steps (commands) the client gives:"
        " only where every client may run commands on the executors",
    )
    step_user: str = Field(
        default="65534:65534",
        description="uid:gid the `inline` workflow's steps run as (not root; the dispatcher or"
        " worker needs root, or CAP_SETUID and CAP_SETGID, to switch to it)",
    )
    step_same_user: bool = Field(
        default=False,
        description="where the runner cannot switch users, run `inline` steps as its own user"
        " instead of refusing them: only where that user can reach no secret (e.g. a container"
        " of its own per attempt)",
    )
    max_memory: str = Field(
        default="16Gi",
        description="the most memory one task may request, and the highest limit an OOM retry"
        " raises a task to",
    )
    worker_auth_token: str = Field(
        default="",
        validation_alias="WORKER_AUTH_TOKEN",
        description="a token every worker may report with (the seed's WORKER_AUTH_TOKEN)",
    )
    workflows_dir: Path | None = Field(
        default=None,
        description="operators' workflows, one per *.yaml file (default <data_dir>/workflows)",
    )
    worker_image: str = Field(
        default="taskengine:latest",
        description="what a Kubernetes Job runs for a workflow that names no image",
    )
    kubeconfig: str = Field(
        default="",
        validation_alias="KUBECONFIG",
        description="the kubeconfig file(s) of the Kubernetes executor (default ~/.kube/config;"
        " none there: the cluster the dispatcher runs in)",
    )
    kube_contexts: str = Field(
        default="",
        description="the clusters the Kubernetes executor runs Jobs on: kubeconfig contexts,"
        " comma-separated (default the current context)",
    )
    kube_namespace: str = Field(default="default", description="where the Jobs are created")
    kube_job_ttl: int = Field(
        default=3600,
        ge=0,
        description="seconds a finished Job (and its pod's logs) is kept: ttlSecondsAfterFinished",
    )
    kube_secret_keys: str = Field(
        default="AWS_ACCESS_KEY_ID,AWS_SECRET_ACCESS_KEY,AWS_SESSION_TOKEN,AWS_REGION,"
        "AWS_ENDPOINT_URL",
        description="the keys of a work task's storage_credentials Secret its worker gets, each"
        " as the environment variable of that name (secretKeyRef; a key the Secret lacks is"
        " left unset)",
    )
    kube_host_paths: str = Field(
        default="",
        description="the host directories a DOCKER task's volumes may mount (hostPath), as"
        " absolute path prefixes, comma-separated (default none: volumes are refused)",
    )

    # --- quotas per client (README "Quotas") ---
    max_sockets_per_client: int = Field(
        default=10,
        ge=1,
        description="open WebSockets (/ws/tasks, /ui/ws) one client may hold on one gateway;"
        " one more is closed with code 4429",
    )
    max_bytes_per_second_per_client: int = Field(
        default=2 * 2**20,
        ge=1024,
        description="request bytes one client may send one gateway per second, on average"
        " (a burst up to max_body_bytes or this, whichever is more); a request beyond waits"
        " its turn for up to a second, or is refused with 429 and Retry-After",
    )
    max_active_tasks_per_client: int = Field(
        default=1000,
        ge=0,
        description="scheduled tasks (/tasks) one client may have active or paused (not"
        " canceled); one more is refused with 403",
    )
    max_task_cpu: float = Field(
        default=64, gt=0, description="the most CPU cores one task may request"
    )
    max_task_gpu: int = Field(default=8, ge=0, description="the most GPUs one task may request")
    top_priority: int = Field(
        default=3,
        ge=1,
        le=10,
        description="the most urgent priority a client that is not an admin may use, on the"
        " engine's scale (1 most urgent .. 10): 1 lets every client use every priority",
    )
    ws_replay_page: int = Field(
        default=500,
        ge=1,
        le=10_000,
        description="events read per page when a WebSocket replays from ?after=",
    )

    @field_validator("nats_url")
    @classmethod
    def _nats_schemes(cls, value: str) -> str:
        for server in (s.strip() for s in value.split(",") if s.strip()):
            scheme = server.partition("://")[0] if "://" in server else "nats"
            if scheme not in ("nats", "tls"):
                raise ValueError(
                    f"{server!r}: a NATS server is nats://host:port or tls://host:port"
                )
        return value

    @field_validator("kube_host_paths")
    @classmethod
    def _absolute_prefixes(cls, value: str) -> str:
        for prefix in (p.strip() for p in value.split(",") if p.strip()):
            clean = prefix.rstrip("/") or "/"
            if not prefix.startswith("/") or posixpath.normpath(prefix) != clean:
                raise ValueError(f"{prefix!r} is not a normalized absolute path")
        return value

    @field_validator("step_user")
    @classmethod
    def _uid_and_gid(cls, value: str) -> str:
        uid, _, gid = value.partition(":")
        if not (uid.isdigit() and gid.isdigit()) or int(uid) == 0 or int(gid) == 0:
            raise ValueError(
                f"{value!r} is not uid:gid of a user other than root (e.g. 65534:65534)"
            )
        return value

    @property
    def step_ids(self) -> tuple[int, int]:
        """`step_user` as (uid, gid)."""
        uid, _, gid = self.step_user.partition(":")
        return int(uid), int(gid)

    @property
    def host_path_prefixes(self) -> tuple[str, ...]:
        """`kube_host_paths` as a tuple of normalized absolute paths."""
        given = (p.strip() for p in self.kube_host_paths.split(","))
        return tuple(posixpath.normpath(p) for p in given if p)

    def nats_options(self) -> dict[str, Any]:
        """How a process authenticates to NATS: nats.connect's user, password and TLS options
        (none set: an unauthenticated plain connection, as to the embedded server)."""
        options: dict[str, Any] = {}
        if self.nats_user:
            options.update(user=self.nats_user, password=self.nats_password)
        if self.nats_tls_ca:
            options["tls"] = ssl.create_default_context(cafile=self.nats_tls_ca)
        return options

    @model_validator(mode="after")
    def _lanes_within_the_concurrency(self) -> EngineSettings:
        if self.outbound_per_host * 4 > self.outbound_concurrency:
            raise ValueError(
                "outbound_per_host may be at most a quarter of outbound_concurrency: a few slow"
                " receivers must not take every call in flight"
            )
        return self

    @model_validator(mode="after")
    def _workflows_in_data_dir(self) -> EngineSettings:
        if self.workflows_dir is None:
            self.workflows_dir = self.data_dir / "workflows"
        return self


@lru_cache(maxsize=1)
def engine_settings() -> EngineSettings:
    return EngineSettings()
