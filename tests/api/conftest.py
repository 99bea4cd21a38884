"""API fixtures: a fresh SQLite store and embedded broker per test, no reconciler, no real DNS."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from store import webhooks
from store.settings import Settings
from tests.api.utils import fake_resolve


@pytest.fixture(autouse=True)
def no_real_dns(monkeypatch):
    monkeypatch.setattr(webhooks, "resolve", fake_resolve)


@pytest.fixture
def settings(tmp_path):
    return Settings(home=tmp_path)


@pytest.fixture
def client(settings):
    with TestClient(create_app(settings, reconcile=False)) as test_client:
        yield test_client
