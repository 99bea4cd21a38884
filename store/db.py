"""Engine and sessions for the job store: PostgreSQL in production, SQLite (WAL) embedded."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, func, inspect, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import ORMExecuteState, Session, sessionmaker

from store.models import NOT_A_CHANGE, REPORT_COLUMNS, Base, ChangeCounter, Job


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, +-inf) replaced by None, at any depth."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    return value


def json_dumps(value: Any) -> str:
    """The JSON columns' serializer: standard JSON, where NaN and infinities are null. PostgreSQL rejects the
    NaN token that Python writes, and a diverging model's monitor row or an all-zero carrier share holds one;
    SQLite stored it, so the two stores disagreed (R10 failed as internal_error on PostgreSQL only)."""
    return json.dumps(json_safe(value), allow_nan=False)


def normalise_url(url: str) -> str:
    """postgresql:// means psycopg 3 here (the driver we install)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


@lru_cache(maxsize=8)
def get_engine(url: str) -> Engine:
    url = normalise_url(url)
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30},
                               json_serializer=json_dumps)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(connection, _record) -> None:  # type: ignore[no-untyped-def]
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")  # API and worker processes write concurrently
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()
    else:
        engine = create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20, json_serializer=json_dumps)
    Base.metadata.create_all(engine)
    added = {column for table, column in _add_new_columns(engine) if table == "jobs"}
    _fill_from_reports(engine, added)
    with engine.begin() as connection:
        if "updated_at" in added:  # the last change an older version recorded
            connection.execute(update(Job).values(updated_at=func.coalesce(Job.finished_at, Job.started_at,
                                                                           Job.created_at),
                                                  change_seq=Job.change_seq))
        insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
        connection.execute(insert(ChangeCounter).values(id=1, value=0).on_conflict_do_nothing())
        if "change_seq" in added:  # the changes an older version made: one number, before every later one
            connection.execute(update(Job).where(Job.change_seq.is_(None))
                               .values(change_seq=1, updated_at=Job.updated_at))
            connection.execute(update(ChangeCounter).where(ChangeCounter.value < 1).values(value=1))
    _add_new_indexes(engine)
    return engine


def _add_new_columns(engine: Engine) -> set[tuple[str, str]]:
    """Stores created by an older version lack later nullable columns (``jobs.callback_url``); add them and
    return the (table, column) pairs this call added. ``create_all`` creates missing tables only."""
    added = set()
    inspector = inspect(engine)
    for table in Base.metadata.sorted_tables:
        present = {column["name"] for column in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name not in present and column.nullable:
                kind = column.type.compile(dialect=engine.dialect)
                try:
                    with engine.begin() as connection:
                        connection.execute(text(f"ALTER TABLE {table.name} ADD COLUMN {column.name} {kind}"))
                    added.add((table.name, column.name))
                except Exception:  # another process starting at the same time added it first
                    if column.name not in {c["name"] for c in inspect(engine).get_columns(table.name)}:
                        raise
    return added


def _fill_from_reports(engine: Engine, added: set[str]) -> None:
    """Columns copied from the report at finish (``store.models.REPORT_COLUMNS``) that were just added: copy
    them from the reports written before (once)."""
    values = {column: Job.report[path].as_float() for column, path in REPORT_COLUMNS.items()
              if column in added}
    if values:
        values.update(NOT_A_CHANGE)  # a copy, not a change
        with engine.begin() as connection:
            connection.execute(update(Job).where(Job.report.is_not(None)).values(**values))


def _add_new_indexes(engine: Engine) -> None:
    """Stores created by an older version lack later indexes (``store.models``: the list and reconciler
    indexes); create them. ``create_all`` creates the indexes of the tables it creates only."""
    inspector = inspect(engine)
    for table in Base.metadata.sorted_tables:
        present = {index["name"] for index in inspector.get_indexes(table.name)}
        for index in table.indexes:
            if index.name in present:
                continue
            try:
                index.create(engine, checkfirst=True)
            except Exception:  # another process starting at the same time created it first
                if index.name not in {i["name"] for i in inspect(engine).get_indexes(table.name)}:
                    raise


@lru_cache(maxsize=8)
def _sessions(url: str) -> sessionmaker[Session]:
    factory = sessionmaker(get_engine(url), expire_on_commit=False)

    @event.listens_for(factory, "do_orm_execute")
    def _statement(state: ORMExecuteState) -> None:
        if not state.is_select:
            state.session.info["wrote"] = True

    @event.listens_for(factory, "after_flush")
    def _flush(session: Session, _context: Any) -> None:
        session.info["wrote"] = True

    return factory


def stamp_changes(session: Session) -> None:
    """Number the jobs this transaction changed (``Job.change_seq``: NULL until now), as its last statements
    before the commit: the counter's row stays locked until the commit (PostgreSQL: its row lock; SQLite: the
    write lock the transaction already holds), so numbers are handed out in commit order, and a poll that saw
    number n also saw every change numbered below n. Transactions that changed no job (reads, lease renewals)
    skip the counter."""
    if not session.info.pop("wrote", False):
        return
    session.flush()
    if session.scalar(select(Job.id).where(Job.change_seq.is_(None)).limit(1)) is None:
        return
    number = session.scalar(update(ChangeCounter).where(ChangeCounter.id == 1)
                            .values(value=ChangeCounter.value + 1).returning(ChangeCounter.value))
    session.execute(update(Job).where(Job.change_seq.is_(None))
                    .values(change_seq=number, updated_at=Job.updated_at)
                    .execution_options(synchronize_session=False))


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """One unit of work: a session that commits when the block exits (its job changes numbered first:
    ``stamp_changes``) and rolls back when it raises. The only place that commits (see ``store``)."""
    session = _sessions(url)()
    try:
        yield session
        stamp_changes(session)
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
