"""The one settings object, read from `TASKENGINE_*` environment variables."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


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


@lru_cache(maxsize=1)
def engine_settings() -> EngineSettings:
    return EngineSettings()
