"""Store fixtures: a fresh job store per test, on SQLite (a file under tmp_path) and on PostgreSQL (a database
of its own on the server at 127.0.0.1:5432, dropped after)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from coscope.harness import create_database, drop_database, postgres_url
from store.db import get_engine


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:
    """The URL of an empty store, its tables and indexes created."""
    name = None if request.param == "sqlite" else create_database()
    url = f"sqlite:///{tmp_path / 'store.db'}" if name is None else postgres_url(name)
    try:
        get_engine(url)
        yield url
    finally:
        get_engine(url).dispose()
        if name is not None:
            drop_database(name)
