"""Models and databases for the SQLAlchemy integration tests: SQLite (a file, so several
connections and processes share it) and PostgreSQL at 127.0.0.1:5432, database ``test``
(``HITRATE_TEST_POSTGRES``), each test in a schema of its own, dropped afterwards."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import ForeignKey, Numeric, create_engine, event, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

PG_URL = os.environ.get("HITRATE_TEST_POSTGRES", "postgresql://127.0.0.1:5432/test")


class Base(DeclarativeBase):
    pass


class Team(Base):
    __tablename__ = "teams"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]
    users: Mapped[list[User]] = relationship(back_populates="team", order_by="User.id")


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id"))
    balance: Mapped[Decimal] = mapped_column(Numeric(12, 2), default=Decimal("0.00"))
    joined: Mapped[datetime | None] = mapped_column(default=None)
    team: Mapped[Team] = relationship(back_populates="users")


class Row(Base):
    """A versioned row for the consistency checker (``version_id_col``)."""

    __tablename__ = "rows"
    id: Mapped[int] = mapped_column(primary_key=True)
    version: Mapped[int] = mapped_column(nullable=False)
    note: Mapped[str] = mapped_column(default="")
    __mapper_args__ = {"version_id_col": version}  # noqa: RUF012


def _pg_reachable() -> str | None:
    try:
        import psycopg

        with psycopg.connect(PG_URL, connect_timeout=2):
            return None
    except Exception as exc:
        return f"PostgreSQL at {PG_URL} is not reachable ({exc.__class__.__name__}: {exc})"


def sqlite_url(path: Path, driver: str = "pysqlite") -> str:
    return f"sqlite+{driver}:///{path}"


def pg_url(schema: str, driver: str = "psycopg") -> str:
    rest = PG_URL.split("://", 1)[1]
    return f"postgresql+{driver}://{rest}?options=-csearch_path%3D{schema}"


def _sqlite_setup(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn: Any, _: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
        _sqlite_setup(engine)
        return engine
    return create_engine(url, pool_size=20, max_overflow=20)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh database with the tables, as a URL (sync drivers)."""
    if request.param == "sqlite":
        url = sqlite_url(tmp_path / "test.db")
        engine = make_engine(url)
        Base.metadata.create_all(engine)
        engine.dispose()
        yield url
        return
    reason = _pg_reachable()
    if reason:
        pytest.skip(reason)
    schema = f"hitrate_{uuid.uuid4().hex[:10]}"
    admin = create_engine(pg_url("public"))
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    url = pg_url(schema)
    engine = make_engine(url)
    Base.metadata.create_all(engine)
    engine.dispose()
    try:
        yield url
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()
