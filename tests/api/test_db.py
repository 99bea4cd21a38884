"""The store's startup: a database created before a nullable column existed gains it."""

from __future__ import annotations

from sqlalchemy import create_engine, inspect, text

from api.db import get_engine
from api.models import Base


def test_an_old_store_gains_the_callback_url_column(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    old = create_engine(url)
    Base.metadata.create_all(old)
    with old.begin() as connection:
        connection.execute(text("ALTER TABLE jobs DROP COLUMN callback_url"))
    old.dispose()
    columns = {column["name"] for column in inspect(get_engine(url)).get_columns("jobs")}
    assert "callback_url" in columns
