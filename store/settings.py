"""Settings of the API and the worker, read once per process from ``COSCOPE_*`` environment variables.

Embedded default (no servers): SQLite job store and kombu's SQLAlchemy transport over SQLite, both under
``COSCOPE_HOME`` (default ``~/.coscope``). Distributed mode: ``COSCOPE_DATABASE_URL=postgresql://...`` and
``COSCOPE_BROKER_URL=redis://...``.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PLACEHOLDER_SECRETS = {"", "changethis", "change-me", "secret"}
log = logging.getLogger("coscope.store")


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
    requeue_queued_after_seconds: float = Field(600.0, gt=0)  # then re-sent if its queue lost messages
    max_attempts: int = Field(3, ge=1, le=100)  # our own redelivery cap (brokers do not count)
    heartbeat_seconds: float | None = None  # default: lease / 3
    # Redis only: an unacked message comes back to the queue this long after its delivery, even while its
    # job still runs (the redelivery then meets the live lease: a ``duplicate`` no-op). The worker refuses
    # to start unless it exceeds the hard per-job time limit (worker.celery_app).
    visibility_timeout_seconds: float = Field(48 * 3600.0, gt=0)
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)  # 0: a free port the kernel picks (uvicorn logs which)
    # Limits per team, enforced by the API. The budget is in image-passes (core/cost.py): one forward+backward
    # pass of one image through a width-64 PreActResNet18; the paper's 30-epoch FGSM run on 50k images costs
    # about 9e6.
    team_budget: float = Field(1e9, gt=0)  # the most one job may cost
    team_max_active_jobs: int = Field(20, ge=1, le=100_000)  # queued + running jobs per team
    team_submits_per_minute: int = Field(120, ge=1, le=100_000)  # POST /v1/jobs per team (per API process)
    # Sweeps (store/sweeps.py): children per sweep, their total cost, children waiting inside a team's sweeps,
    # and the release policy (a held child is queued while the team is under its active-job quota and holds
    # fewer than sweep_max_waiting queued jobs in that queue: fair share on first-in first-out queues).
    sweep_max_children: int = Field(200, ge=1, le=10_000)
    team_sweep_budget: float = Field(2e10, gt=0)  # the most one sweep may cost, all children together
    team_max_held_jobs: int = Field(1000, ge=1, le=1_000_000)
    sweep_max_waiting: int = Field(2, ge=1, le=1000)
    sweep_release_seconds: float = Field(2.0, gt=0)  # period of the API's sweep keeper
    max_body_bytes: int = Field(1 << 20, ge=1024, le=1 << 30)  # larger request bodies get 413
    docs: bool = False  # serve /docs, /redoc and /openapi.json in production too (always on in development)
    # /metrics (job counts of every team): public in development, an admin key in production, unless this says
    metrics_public: bool | None = None
    key_file: Path | None = None  # where `coscope serve` writes the first admin key; default HOME/api-key.
    # Compose puts it on a volume of the API alone: HOME is the artifacts volume every worker mounts
    # MLflow tracking (workers only; worker/mlflow_run.py): when set, each job becomes a run on this server.
    # The worker gives up on a server that stays unreachable this long and records a ``tracking`` job event.
    mlflow_tracking_uri: str | None = None
    mlflow_give_up_seconds: float = Field(120.0, gt=0, le=3600)
    mlflow_log_checkpoints: bool = False  # also upload checkpoint.pt and best.pt (large) as run artifacts
    # Retention (store/retention.py): checkpoint.pt and best.pt of jobs finished more than this many days
    # ago are deleted (reports, metrics and every row stay). Unset: kept forever, as before, so an upgrade
    # deletes nothing an operator did not ask for. Per team, a JSON object: {"vision": 7, "audit": null}
    # (null: forever; teams not named follow checkpoint_retention_days).
    checkpoint_retention_days: float | None = Field(None, ge=0, le=36_500)
    team_checkpoint_retention_days: dict[str, Annotated[float, Field(ge=0, le=36_500)] | None] = {}
    retention_seconds: float = Field(3600.0, gt=0)  # period of the API's retention keeper

    @model_validator(mode="after")
    def _refuse_placeholder_secrets(self) -> Settings:
        if self.webhook_secret in PLACEHOLDER_SECRETS:
            if self.env != "development":
                raise ValueError("COSCOPE_WEBHOOK_SECRET is a placeholder; "
                                 "set a real secret outside development")
            _warn_once("COSCOPE_WEBHOOK_SECRET is a placeholder (allowed in development only)")
        return self

    @property
    def docs_enabled(self) -> bool:
        return self.env == "development" or self.docs

    @property
    def metrics_open(self) -> bool:
        return self.env == "development" if self.metrics_public is None else self.metrics_public

    @property
    def first_key_file(self) -> Path:
        return self.key_file or self.home / "api-key"

    @property
    def database(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'coscope.db'}"

    @property
    def broker(self) -> str:
        return self.broker_url or f"sqla+sqlite:///{self.home / 'broker.db'}"

    @property
    def broker_is_redis(self) -> bool:
        """Redis has a visibility timeout (and takes kombu's Redis options); the embedded SQLite broker not."""
        return self.broker.startswith(("redis", "rediss"))

    @property
    def artifacts(self) -> Path:
        return self.home / "artifacts"

    def attempt_folder(self, job_id: str, attempt: int) -> Path:
        """Where attempt ``attempt`` of a job writes its run folder. Files are fenced like rows: an attempt that
        lost its lease (paused, partitioned) writes only its own folder, and the API serves the folder of the
        attempt the job row names, so a zombie never overwrites what clients read or what a resume loads."""
        return self.artifacts / job_id / f"attempt-{attempt}"

    @property
    def datasets(self) -> Path:
        return self.data_root or self.home / "data"

    @property
    def heartbeat(self) -> float:
        return self.heartbeat_seconds or self.lease_seconds / 3


@lru_cache
def _warn_once(message: str) -> None:
    log.warning(message)


@lru_cache
def get_settings() -> Settings:
    return Settings()
