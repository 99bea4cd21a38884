"""The store's startup (a database created before a nullable column existed gains it) and its commit
convention."""

from __future__ import annotations

import ast
from pathlib import Path

from sqlalchemy import create_engine, inspect, text

from store.db import get_engine
from store.models import Base


def test_an_old_store_gains_the_callback_url_column(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    old = create_engine(url)
    Base.metadata.create_all(old)
    with old.begin() as connection:
        connection.execute(text("ALTER TABLE jobs DROP COLUMN callback_url"))
    old.dispose()
    columns = {column["name"] for column in inspect(get_engine(url)).get_columns("jobs")}
    assert "callback_url" in columns


def test_only_session_scope_commits():
    """The commit convention of ``store``: one ``session_scope`` block is one unit of work and the only
    place that commits; crud functions, routes, the worker and the CLI never call ``commit()``."""
    root = Path(__file__).resolve().parents[2]
    commits = []
    for package in ("store", "api", "worker", "coscope"):
        for path in sorted((root / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and node.func.attr == "commit"):
                    commits.append(f"{path.relative_to(root)}:{node.lineno}")
    assert len(commits) == 1 and commits[0].startswith("store/db.py:"), commits
