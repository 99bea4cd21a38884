"""Request and response shapes, split by direction: clients never set ids, owners, status or attempts."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from core.spec import JobSpec


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    spec: JobSpec
    name: str | None = Field(None, min_length=1, max_length=200)
    tags: list[str] = Field(default_factory=list, max_length=20)
    priority: int = Field(0, ge=0, le=9)
    queue: Literal["cpu", "gpu"] | None = None  # None: gpu when the spec is paper-sized, else cpu


class JobError(BaseModel):
    code: str
    message: str | None


class JobPublic(BaseModel):
    id: str
    name: str | None
    tags: list[str]
    priority: int
    queue: str
    status: str
    attempt: int
    progress: dict[str, Any]
    co: dict[str, Any] | None
    error: JobError | None
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    spec: dict[str, Any]


class JobsPublic(BaseModel):
    data: list[JobPublic]
    count: int


class Artifact(BaseModel):
    name: str
    size: int


class ArtifactsPublic(BaseModel):
    data: list[Artifact]


class MetricsPublic(BaseModel):
    data: list[dict[str, Any]]
