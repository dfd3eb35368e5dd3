"""hitrate.contrib.sqlalchemy with asyncio: AsyncCache and async sessions (aiosqlite,
psycopg async), on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm.exc import StaleDataError

import hitrate
from hitrate import AsyncCache, Cache, ConfigurationError
from hitrate.contrib.sqlalchemy import FromCache, ORMCache

from .consistency import Op, violations
from .sa_models import Row, Team, User, db_url

__all__ = ["db_url"]


def async_url(url: str) -> str:
    if url.startswith("sqlite"):
        return url.replace("sqlite+pysqlite", "sqlite+aiosqlite")
    return url  # postgresql+psycopg: create_async_engine uses psycopg's async side


@pytest.fixture
async def amaker(db_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_async_engine(async_url(db_url))
    async with AsyncSession(engine) as s:
        s.add_all([Team(id=1, name="red"), Team(id=2, name="blue")])
        s.add_all([User(id=1, name="ada", team_id=1), User(id=3, name="cy", team_id=2)])
        s.add_all([Row(id=k, version=0) for k in (1, 2, 3)])
        await s.commit()
    yield async_sessionmaker(engine, expire_on_commit=False)
    await engine.dispose()


@pytest.fixture
def aorm(acache: AsyncCache, amaker: async_sessionmaker[AsyncSession]) -> ORMCache:
    orm = ORMCache(acache)
    orm.model(User, invalidates=("user:{id}", "tag:team:{team_id}"))
    orm.model(Row, "rowv:{id}")
    orm.attach(amaker)
    return orm


async def test_async_commit_rollback_and_savepoint(
    acache: AsyncCache, aorm: ORMCache, amaker: async_sessionmaker[AsyncSession]
) -> None:
    for key in ("user:1", "user:3"):
        await acache.set(key, "cached")
    async with amaker() as s:
        (await s.get_one(User, 1)).name = "x"
        await s.flush()
        assert await acache.get("user:1") == "cached"  # flushed: not yet
        await s.rollback()
    assert await acache.get("user:1") == "cached"  # rolled back: never
    async with amaker() as s:
        (await s.get_one(User, 1)).name = "kept"
        sp = await s.begin_nested()
        (await s.get_one(User, 3)).name = "undone"
        await s.flush()
        await sp.rollback()
        await s.commit()
    assert await acache.get("user:1", hitrate.MISSING) is hitrate.MISSING
    assert await acache.get("user:3") == "cached"


async def test_async_from_cache(
    acache: AsyncCache, aorm: ORMCache, amaker: async_sessionmaker[AsyncSession]
) -> None:
    stmt = select(User).where(User.team_id == 1).options(FromCache(key="team1"))
    async with amaker() as s:
        assert [u.name for u in (await s.scalars(stmt)).all()] == ["ada"]
    assert await acache.get("team1") is not None  # the frozen rows are cached
    async with amaker() as s:
        users = (await s.scalars(stmt)).all()
        assert [u.name for u in users] == ["ada"] and users[0] in s
        s.add(User(id=4, name="dee", team_id=1))
        await s.commit()
    assert await acache.get("team1") is None  # the commit invalidated the users table tag
    async with amaker() as s:
        assert sorted(u.name for u in (await s.scalars(stmt)).all()) == ["ada", "dee"]


def test_async_cache_needs_async_sessions(acache: AsyncCache) -> None:
    from sqlalchemy.orm import sessionmaker

    with pytest.raises(ConfigurationError, match="asyncio sessions"):
        ORMCache(acache).attach(sessionmaker())


async def test_sync_cache_with_async_sessions(
    cache: Cache, amaker: async_sessionmaker[AsyncSession]
) -> None:
    orm = ORMCache(cache)
    orm.model(User, "user:{id}")
    orm.attach(amaker)
    cache.set("user:1", "cached")
    async with amaker() as s:
        (await s.get_one(User, 1)).name = "y"
        await s.commit()
    assert cache.get("user:1") is None


async def test_async_write_through(
    acache: AsyncCache, amaker: async_sessionmaker[AsyncSession]
) -> None:
    orm = ORMCache(acache)
    orm.model(Row, "row:{id}", write_through=lambda row: {"id": row.id, "version": row.version})
    orm.attach(amaker)
    async with amaker() as s:
        (await s.get_one(Row, 2)).note = "changed"
        await s.commit()
    assert await acache.get("row:2") == {"id": 2, "version": 2}  # inserted at 1, updated


async def test_async_no_stale_reads(
    acache: AsyncCache, aorm: ORMCache, amaker: async_sessionmaker[AsyncSession]
) -> None:
    """The consistency checker with asyncio tasks (see test_sqlalchemy_consistency.py for
    the companion that catches the invalidate-at-flush hook)."""
    log: list[Op] = []
    started = time.monotonic()
    done = asyncio.Event()

    def writing() -> bool:  # 1.5 s, and on (up to 6 s, a loaded machine) to 20 commits
        now = time.monotonic()
        commits = sum(op.kind == "write" for op in log)
        if now < started + 1.5 or (commits < 20 and now < started + 6):
            return True
        done.set()
        return False

    async def reader(n: int) -> None:
        rng = random.Random(n)
        while not done.is_set():
            k = rng.choice((1, 2, 3))
            t0 = time.monotonic()
            async with amaker() as s:
                if n % 2:
                    stmt = select(Row).where(Row.id == k).options(FromCache(key=f"row:{k}"))
                    version = (await s.scalars(stmt)).one().version
                else:

                    async def load(s: AsyncSession = s, k: int = k) -> int:
                        return (await s.get_one(Row, k)).version

                    version = await acache.get_or_fetch(f"rowv:{k}", load)
            log.append(Op("read", str(k), t0, time.monotonic(), version))

    async def writer(n: int) -> None:
        rng = random.Random(100 + n)
        while writing():
            k = rng.choice((1, 2, 3))
            t0 = time.monotonic()
            async with amaker() as s:
                row = await s.get_one(Row, k, populate_existing=True)
                row.note = f"{n}-{t0}"
                try:
                    await s.flush()
                except StaleDataError:
                    continue
                version = row.version
                await asyncio.sleep(0.005)
                await s.commit()
            log.append(Op("write", str(k), t0, time.monotonic(), version))
            await asyncio.sleep(rng.uniform(0, 0.004))

    await asyncio.gather(*(reader(i) for i in range(6)), *(writer(i) for i in range(2)))
    writes = sum(op.kind == "write" for op in log)
    print(f"async ORM: {violations(log)} stale reads, {len(log) - writes} reads, {writes} commits")
    assert writes >= 10
    assert violations(log) == 0
