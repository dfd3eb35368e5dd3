"""SQLAlchemy 2.x integration: invalidate on commit, and cached ORM queries.

>>> orm = ORMCache(cache)                                                  # doctest: +SKIP
>>> orm.model(User, invalidates=("user:{id}", "tag:team:{team_id}"))       # doctest: +SKIP
>>> orm.attach(SessionLocal)                                               # doctest: +SKIP
>>> session.scalars(select(User).options(FromCache(ttl=60))).all()         # doctest: +SKIP

Needs ``pip install 'hitrate[sqlalchemy]'``.
"""

from ..._extras import missing_extra

try:
    import sqlalchemy  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised by tests/test_extras.py
    raise missing_extra("hitrate.contrib.sqlalchemy", "SQLAlchemy", "sqlalchemy", exc) from exc

from .orm import ORMCache
from .query import FromCache
from .rules import Changes, table_tag

__all__ = ["Changes", "FromCache", "ORMCache", "table_tag"]
