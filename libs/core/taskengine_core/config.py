"""The one settings object, read from `TASKENGINE_*` environment variables."""

from __future__ import annotations

import posixpath
from functools import lru_cache
from pathlib import Path

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
    data_dir: Path = Path(".taskengine")
    host: str = "127.0.0.1"
    port: int = 8080
    bootstrap_client: str = ""
    callback_allowlist: str = ""
    webhook_key: str = Field(
        default="",
        description="signs callbacks; each client's secret is derived from it (keep it secret)",
    )
    instance: str = Field(default="", description="stable name of this process instance")
    create_tables: bool = False
    log_level: str = "INFO"
    max_body_bytes: int = 524_288  # an event must fit NATS's default 1 MB max payload
    pool_size: int = 4
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
        default="16Gi", description="the highest memory limit an OOM retry raises a task to"
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

    @model_validator(mode="after")
    def _workflows_in_data_dir(self) -> EngineSettings:
        if self.workflows_dir is None:
            self.workflows_dir = self.data_dir / "workflows"
        return self


@lru_cache(maxsize=1)
def engine_settings() -> EngineSettings:
    return EngineSettings()
