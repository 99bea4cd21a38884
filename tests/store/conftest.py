"""Store fixtures: a fresh job store per test, on SQLite (a file under tmp_path) and on PostgreSQL (a database
of its own on the server at 127.0.0.1:5432, dropped after)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest

from store.db import get_engine

POSTGRES_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def _postgres(statement: str) -> None:
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as connection:
        connection.execute(statement)


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:
    """The URL of an empty store, its tables and indexes created."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.db'}"
        get_engine(url)
        yield url
        get_engine(url).dispose()
        return
    name = f"coscope_test_{uuid.uuid4().hex[:10]}"
    _postgres(f"CREATE DATABASE {name}")
    url = f"postgresql://postgres@127.0.0.1:5432/{name}"
    try:
        get_engine(url)
        yield url
    finally:
        get_engine(url).dispose()
        _postgres(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
