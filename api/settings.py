"""Service settings, read once per process from ``COSCOPE_*`` environment variables.

Embedded default (no servers): SQLite job store and kombu's SQLAlchemy transport over SQLite, both under
``COSCOPE_HOME`` (default ``~/.coscope``). Distributed mode: ``COSCOPE_DATABASE_URL=postgresql://...`` and
``COSCOPE_BROKER_URL=redis://...``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PLACEHOLDER_SECRETS = {"", "changethis", "change-me", "secret"}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="COSCOPE_", extra="ignore")

    home: Path = Field(default_factory=lambda: Path.home() / ".coscope")
    database_url: str | None = None  # default: sqlite:///HOME/coscope.db
    broker_url: str | None = None  # default: sqla+sqlite:///HOME/broker.db (kombu SQLAlchemy transport)
    data_root: Path | None = None  # datasets for jobs; default HOME/data
    env: Literal["development", "production"] = "development"
    webhook_secret: str = "changethis"  # HMAC key for webhooks; must be set outside development
    lease_seconds: float = Field(60.0, gt=0)  # a running job's lease, renewed by the worker's heartbeat
    reconcile_seconds: float = Field(30.0, gt=0)  # period of the reconciler that requeues stuck jobs
    requeue_queued_after_seconds: float = Field(600.0, gt=0)  # re-send a queued job's message after this
    max_attempts: int = Field(3, ge=1, le=100)  # our own redelivery cap (brokers do not count)
    heartbeat_seconds: float | None = None  # default: lease / 3
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)

    @model_validator(mode="after")
    def _refuse_placeholder_secrets(self) -> Settings:
        if self.env != "development" and self.webhook_secret in PLACEHOLDER_SECRETS:
            raise ValueError("COSCOPE_WEBHOOK_SECRET is a placeholder; set a real secret outside development")
        return self

    @property
    def database(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'coscope.db'}"

    @property
    def broker(self) -> str:
        return self.broker_url or f"sqla+sqlite:///{self.home / 'broker.db'}"

    @property
    def artifacts(self) -> Path:
        return self.home / "artifacts"

    @property
    def datasets(self) -> Path:
        return self.data_root or self.home / "data"

    @property
    def heartbeat(self) -> float:
        return self.heartbeat_seconds or self.lease_seconds / 3


@lru_cache
def get_settings() -> Settings:
    return Settings()
