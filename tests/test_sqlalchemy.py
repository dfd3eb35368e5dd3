"""hitrate.contrib.sqlalchemy on SQLite and PostgreSQL: invalidation on commit only,
nothing on rollback, savepoints, old and new values, bulk statements, write-through, and
FromCache queries."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session, selectinload, sessionmaker

import hitrate
from hitrate import Cache, ConfigurationError
from hitrate.contrib.sqlalchemy import FromCache, ORMCache

from .sa_models import Row, Team, User, db_url, make_engine

__all__ = ["db_url"]  # the fixture


@pytest.fixture
def maker(db_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(db_url)
    with Session(engine) as s:
        s.add_all([Team(id=1, name="red"), Team(id=2, name="blue")])
        s.add_all(
            [
                User(id=1, name="ada", team_id=1, balance=Decimal("1.50")),
                User(id=2, name="bob", team_id=1),
                User(id=3, name="cy", team_id=2),
            ]
        )
        s.add(Row(id=1, version=1))
        s.commit()
    yield sessionmaker(engine, expire_on_commit=True)
    engine.dispose()


@pytest.fixture
def orm(cache: Cache, maker: sessionmaker[Session]) -> ORMCache:
    orm = ORMCache(cache)
    orm.model(User, invalidates=("user:{id}", "tag:team:{team_id}"))
    orm.attach(maker)
    return orm


def seed(cache: Cache) -> None:
    """Entries every rule of the tests could invalidate."""
    for key in ("user:1", "user:2", "user:3"):
        cache.set(key, "cached")
    for team in (1, 2):
        cache.get_or_fetch(f"members:{team}", lambda: "cached", tags=[f"team:{team}"])


def present(cache: Cache) -> set[str]:
    keys = ("user:1", "user:2", "user:3", "members:1", "members:2")
    return {k for k in keys if cache.get(k, hitrate.MISSING) is not hitrate.MISSING}


ALL = {"user:1", "user:2", "user:3", "members:1", "members:2"}


def test_commit_invalidates_keys_and_tags_only_after_it(
    cache: Cache, orm: ORMCache, maker: sessionmaker[Session]
) -> None:
    seed(cache)
    with maker() as s:
        s.get_one(User, 1).name = "ada lovelace"
        s.flush()
        assert present(cache) == ALL  # flushed, not committed: nothing invalidated yet
        s.commit()
    assert present(cache) == ALL - {"user:1", "members:1"}


def test_rollback_invalidates_nothing(
    cache: Cache, orm: ORMCache, maker: sessionmaker[Session]
) -> None:
    seed(cache)
    with maker() as s:
        s.get_one(User, 1).name = "never"
        s.add(User(id=9, name="new", team_id=2))
        s.flush()
        s.rollback()
        s.commit()  # a later commit of the same session must not deliver the rolled-back set
    assert present(cache) == ALL


def test_savepoint_rollback_drops_its_changes_only(
    cache: Cache, orm: ORMCache, maker: sessionmaker[Session]
) -> None:
    seed(cache)
    with maker() as s:
        s.get_one(User, 1).name = "kept"
        s.flush()
        sp = s.begin_nested()
        s.get_one(User, 3).name = "undone"
        s.flush()
        sp.rollback()
        with s.begin_nested():  # released: its change is the transaction's
            s.get_one(User, 2).name = "released"
        s.commit()
    assert present(cache) == ALL - {"user:1", "user:2", "members:1"}  # user 3 untouched


def test_move_between_teams_invalidates_old_and_new_team(
    cache: Cache, orm: ORMCache, maker: sessionmaker[Session]
) -> None:
    seed(cache)
    with maker() as s:
        s.get_one(User, 3).team_id = 1  # team 2 -> team 1
        s.commit()
    assert present(cache) == ALL - {"user:3", "members:1", "members:2"}


def test_move_through_the_relationship(
    cache: Cache, orm: ORMCache, maker: sessionmaker[Session]
) -> None:
    seed(cache)
    with maker() as s:
        s.get_one(User, 3).team = s.get_one(Team, 1)
        s.commit()
    assert present(cache) == ALL - {"user:3", "members:1", "members:2"}


def test_insert_and_delete(cache: Cache, orm: ORMCache, maker: sessionmaker[Session]) -> None:
    seed(cache)
    with maker() as s:
        s.add(User(id=4, name="dee", team_id=2))
        s.commit()
    assert present(cache) == ALL - {"members:2"}
    seed(cache)
    with maker() as s:
        s.delete(s.get_one(User, 2))
        s.commit()
    assert present(cache) == ALL - {"user:2", "members:1"}


def test_bulk_update_and_delete_name_their_rows(
    cache: Cache, orm: ORMCache, maker: sessionmaker[Session]
) -> None:
    seed(cache)
    with maker() as s:
        s.execute(update(User).where(User.id == 3).values(team_id=1))
        assert present(cache) == ALL
        s.commit()
    assert present(cache) == ALL - {"user:3", "members:1", "members:2"}
    seed(cache)
    with maker() as s:
        s.execute(delete(User).where(User.team_id == 1).where(User.id < 3))
        s.commit()
    assert present(cache) == ALL - {"user:1", "user:2", "members:1"}
    seed(cache)
    with maker() as s:
        s.execute(update(User), [{"id": 3, "name": "by pk"}])  # bulk by primary key
        s.rollback()
    assert present(cache) == ALL


def test_bulk_insert(cache: Cache, orm: ORMCache, maker: sessionmaker[Session]) -> None:
    from sqlalchemy import insert

    seed(cache)
    cache.set("user:7", None)  # a cached "not found"
    stmt = select(User.name).where(User.team_id == 2).options(FromCache(key="names"))
    with maker() as s:
        assert s.scalars(stmt).all() == ["cy"]
        s.execute(insert(User), [{"id": 7, "name": "gus", "team_id": 2}])
        s.commit()
    assert present(cache) == ALL - {"members:2"}
    assert cache.get("user:7", hitrate.MISSING) is hitrate.MISSING
    with maker() as s:
        assert sorted(s.scalars(stmt).all()) == ["cy", "gus"]  # the table tag


def test_callable_rule(cache: Cache, maker: sessionmaker[Session]) -> None:
    orm = ORMCache(cache)
    orm.model(Team, lambda team: [f"team:{team.id}", f"teamname:{team.name}"])
    orm.attach(maker)
    cache.set("teamname:red", 1)
    cache.set("teamname:crimson", 1)
    cache.set("team:1", 1)
    with maker() as s:
        s.get_one(Team, 1).name = "crimson"
        s.commit()
    assert cache.get("team:1") is None
    assert cache.get("teamname:red") is None  # the old name too
    assert cache.get("teamname:crimson") is None


def test_bad_rules_are_refused(cache: Cache) -> None:
    orm = ORMCache(cache)
    with pytest.raises(ConfigurationError, match=r"names \{team\}"):
        orm.model(User, invalidates="user:{team}")
    with pytest.raises(ConfigurationError, match="version column"):
        orm.model(User, invalidates="user:{id}", write_through=lambda u: u.name)
    with pytest.raises(ConfigurationError, match="mapped class"):
        orm.model(int)
    with pytest.raises(ConfigurationError, match="sessionmaker"):
        orm.attach(object())
    with pytest.raises(ConfigurationError, match="Cache or AsyncCache"):
        ORMCache(object())  # type: ignore[arg-type]


def row_orm(cache: Cache, maker: sessionmaker[Session]) -> ORMCache:
    orm = ORMCache(cache)
    orm.model(Row, "row:{id}", write_through=lambda row: {"id": row.id, "version": row.version})
    orm.attach(maker)
    return orm


def test_write_through_caches_the_committed_row(cache: Cache, maker: sessionmaker[Session]) -> None:
    row_orm(cache, maker)
    with maker() as s:
        s.add(Row(id=2, version=0))
        s.flush()
        assert cache.get("row:2") is None  # not before the commit
        s.commit()
    assert cache.get("row:2") == {"id": 2, "version": 1}  # version_id_col counts from 1
    with maker() as s:
        s.get_one(Row, 2).version += 0  # touched: the version counter moves on
        s.get_one(Row, 2).id = 2
        s.commit()
    with maker() as s:
        s.delete(s.get_one(Row, 2))
        s.commit()
    assert cache.get("row:2") is None


def test_write_through_never_writes_a_superseded_row(
    cache: Cache, maker: sessionmaker[Session]
) -> None:
    """A commit whose after_commit runs late (after a newer commit of the same row has
    been written through) must not overwrite the newer row: its write window checks the
    database's version. A plain cache.set at that point (the naive write-through) would
    leave version 1 cached."""
    orm = row_orm(cache, maker)
    from sqlalchemy import inspect as sa_inspect

    from hitrate.contrib.sqlalchemy.rules import Changes, Write

    late = Changes(writes={"row:1": ({"id": 1, "version": 1}, Write(sa_inspect(Row), (1,), 1))})
    with maker() as s:
        s.execute(update(Row).where(Row.id == 1).values(version=Row.version + 1))
        s.commit()
    cache.set("row:1", {"id": 1, "version": 2})  # what the newer commit wrote through
    with maker() as s:
        orm._deliver(s, late)
    assert cache.get("row:1") in (None, {"id": 1, "version": 2})
    cache.set("row:1", {"id": 1, "version": 2})
    cache.set("row:1", late.writes["row:1"][0])  # the naive one
    assert cache.get("row:1") == {"id": 1, "version": 1}


# -- FromCache ---------------------------------------------------------------------------------


def test_from_cache_serves_hits_without_sql(
    cache: Cache, orm: ORMCache, maker: sessionmaker[Session]
) -> None:
    stmt = select(User).where(User.team_id == 1).order_by(User.id).options(FromCache(ttl=60))
    with maker() as s:
        first = s.scalars(stmt).all()
    statements: list[str] = []
    engine = maker.kw["bind"]
    from sqlalchemy import event

    @event.listens_for(engine, "before_cursor_execute")
    def count(*args: Any) -> None:
        statements.append(args[2])

    with maker() as s:
        again = s.scalars(stmt).all()
        assert [u.name for u in again] == [u.name for u in first] == ["ada", "bob"]
        assert again[0].balance == Decimal("1.50") and isinstance(again[0].balance, Decimal)
        assert again[0] in s and s.get(User, 1) is again[0]
    assert statements == []  # served from Redis
    event.remove(engine, "before_cursor_execute", count)


def test_from_cache_is_invalidated_by_commit_of_any_row_of_its_tables(
    cache: Cache, orm: ORMCache, maker: sessionmaker[Session]
) -> None:
    stmt = select(User.name).where(User.team_id == 2).options(FromCache(key="names:2"))
    with maker() as s:
        assert s.scalars(stmt).all() == ["cy"]
        s.add(User(id=5, name="eve", team_id=2))
        assert sorted(s.scalars(stmt).all()) == ["cy", "eve"]  # own writes: not from cache
        s.rollback()
    with maker() as s:
        assert s.scalars(stmt).all() == ["cy"]  # the rolled-back read was never cached
        s.add(User(id=5, name="eve", team_id=2))
        s.commit()
    with maker() as s:
        assert sorted(s.scalars(stmt).all()) == ["cy", "eve"]


def test_from_cache_keeps_relationships_and_types(
    cache: Cache, orm: ORMCache, maker: sessionmaker[Session]
) -> None:
    when = datetime(2026, 12, 1, 12, 0, tzinfo=UTC).replace(tzinfo=None)
    with maker() as s:
        s.get_one(User, 1).joined = when
        s.commit()
    stmt = (
        select(Team)
        .options(selectinload(Team.users).selectinload(User.team), FromCache(ttl=60))
        .order_by(Team.id)
    )
    with maker() as s:
        s.scalars(stmt).all()  # miss: learns the tables the eager load reads
        s.scalars(stmt).all()  # miss again, now cached with the users table's tag too
    with maker() as s:
        teams = s.scalars(stmt).all()
        assert "users" in teams[0].__dict__  # loaded from the cache, not lazily
        assert [u.name for u in teams[0].users] == ["ada", "bob"]
        assert teams[0].users[0].team is teams[0]  # cycles come back as the same objects
        assert teams[0].users[0].joined == when
    with maker() as s:
        s.get_one(User, 2).name = "bobby"
        s.commit()
    with maker() as s:
        teams = s.scalars(stmt).all()
        assert [u.name for u in teams[0].users] == ["ada", "bobby"]


def test_from_cache_rows_of_columns(
    cache: Cache, orm: ORMCache, maker: sessionmaker[Session]
) -> None:
    stmt = select(User.id, User.name, User.balance).order_by(User.id).options(FromCache())
    with maker() as s:
        first = s.execute(stmt).all()
    with maker() as s:
        again = s.execute(stmt).all()
    assert again == first
    assert again[0].name == "ada" and again[0].balance == Decimal("1.50")
