"""API fixtures: a fresh store and broker per test, no reconciler, no real DNS. ``settings`` is the embedded
default (SQLite store, SQLite broker); ``store_backend`` is for tests that must hold on the production pair too
(PostgreSQL, a database of its own per test, and Redis, the API tests' DB number flushed before and after)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from coscope.harness import create_database, drop_database, flush_redis, postgres_url, redis_db, redis_url
from store import webhooks
from store.db import get_engine
from store.settings import Settings
from tests.api.utils import fake_resolve

STORE_BACKENDS = ("sqlite", "postgresql+redis")


@pytest.fixture(autouse=True)
def no_real_dns(monkeypatch):
    monkeypatch.setattr(webhooks, "resolve", fake_resolve)


@pytest.fixture(params=STORE_BACKENDS)
def store_backend(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    """``Settings`` fields of the store and broker: none (the embedded default) or PostgreSQL + Redis."""
    if request.param == "sqlite":
        yield {}
        return
    name, db = create_database(), redis_db(__name__)
    flush_redis(db)
    try:
        yield {"database_url": postgres_url(name), "broker_url": redis_url(__name__)}
    finally:
        get_engine(postgres_url(name)).dispose()
        drop_database(name)
        flush_redis(db)


@pytest.fixture
def settings(tmp_path):
    return Settings(home=tmp_path)


@pytest.fixture
def client(settings):
    with TestClient(create_app(settings, reconcile=False)) as test_client:
        yield test_client


@pytest.fixture
def roomy(tmp_path):
    """An app whose sweeps release every child at once (no waiting bound to speak of), so that each can be
    claimed and finished; (test client, its settings)."""
    settings = Settings(home=tmp_path / "roomy", sweep_max_waiting=100)
    with TestClient(create_app(settings, reconcile=False)) as client:
        yield client, settings
