"""``FromCache``: cached ORM queries (``select(...).options(FromCache(...))``), run by the
``do_orm_execute`` hook that :meth:`ORMCache.attach <hitrate.contrib.sqlalchemy.ORMCache.attach>`
installs.

A miss runs the statement and caches its frozen result (:mod:`.rows` says how) with a fill
lease, through :meth:`Cache.get_or_fetch <hitrate.Cache.get_or_fetch>`, so concurrent
misses of one query run it once and a fill that raced a committed change is refused. A hit
rebuilds the objects and merges them into the session without SQL
(:func:`~sqlalchemy.orm.loading.merge_frozen_result`, ``load=False``), as SQLAlchemy's
own result-cache example does. Every cached query is tagged with the tables it reads
(``orm:<table>``), which every committed change of one of their rows invalidates.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy.orm import Mapper, ORMExecuteState
from sqlalchemy.orm.interfaces import UserDefinedOption
from sqlalchemy.sql.util import find_tables

from ...policy import TTLLike
from .rules import table_tag

__all__ = ["FromCache", "query_key", "read_tables"]


class FromCache(UserDefinedOption):
    """Serve this SELECT from the cache: ``select(User).options(FromCache(ttl=60))``.

    ``key``: the cache key (default ``sql:<hash of the SQL, its parameters and loader
    options>``); ``ttl``: seconds, a ``timedelta`` or a :class:`~hitrate.Policy` (default:
    the key family's policy; ``stale``/``early`` refreshes are turned off, as a background
    refresh could not use the session); ``tags``: tags of its own, beside the ``orm:<table>``
    tags of every table the query reads, which commits invalidate. Also accepted as an
    execution option: ``.execution_options(hitrate=FromCache(...))``.

    The query is served from the cache only outside a transaction's own writes: a session
    holding flushed or pending changes runs it on the database (read your own writes, and a
    result that may yet be rolled back is never cached).
    """

    propagate_to_loaders = False  # lazy loads of its objects are not this query

    def __init__(
        self, key: str | None = None, *, ttl: TTLLike = None, tags: Iterable[str] = ()
    ) -> None:
        super().__init__()
        if key is not None and (not isinstance(key, str) or not key):
            raise TypeError(f"FromCache(key=...) takes a non-empty str, not {key!r}")
        if isinstance(tags, str):
            raise TypeError(f"FromCache(tags=...) takes a list of tags, not the str {tags!r}")
        self.key = key
        self.ttl = ttl
        self.tags = tuple(tags)

    def __repr__(self) -> str:
        return f"FromCache(key={self.key!r}, ttl={self.ttl!r}, tags={self.tags!r})"


def option_of(orm: ORMExecuteState) -> FromCache | None:
    """The :class:`FromCache` of this execution, if any."""
    opt = orm.execution_options.get("hitrate")
    if isinstance(opt, FromCache):
        return opt
    for o in orm.user_defined_options:
        if isinstance(o, FromCache):
            return o
    return None


def _stable(part: Any) -> str:
    """A text of a cache-key part that is the same in every process (no addresses)."""
    if isinstance(part, tuple | list):
        return "(" + ",".join(_stable(p) for p in part) + ")"
    if isinstance(part, Mapper):
        return f"<{part.class_.__module__}.{part.class_.__qualname__}>"
    if isinstance(part, type):
        return f"<{part.__qualname__}>"
    if part is None or isinstance(part, str | int | float | bool):
        return repr(part)
    return f"<{type(part).__qualname__}>"


def query_key(orm: ORMExecuteState) -> str:
    """``sql:<blake2b>`` of the statement's SQL for the session's dialect, its parameters
    and its loader options: the same in every process."""
    stmt: Any = orm.statement
    bind = orm.session.get_bind(**orm.bind_arguments)
    compiled = stmt.compile(dialect=bind.dialect)
    params: dict[str, Any] = dict(compiled.params)
    if isinstance(orm.parameters, dict):
        params.update(orm.parameters)
    opts = []
    for opt in getattr(stmt, "_with_options", ()):
        made = getattr(opt, "_generate_cache_key", None)
        ck = made() if made is not None else None
        opts.append(_stable(ck.key) if ck is not None else type(opt).__qualname__)
    text = "\n".join([str(compiled), repr(sorted(params.items(), key=repr)), *opts])
    return "sql:" + hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def read_tables(stmt: Any) -> set[str]:
    """The ``orm:<table>`` tags of every table *stmt* names (FROM, joins, subqueries)."""
    return {table_tag(t.name) for t in find_tables(stmt, include_crud=True) if t.name}


def statement_mappers(orm: ORMExecuteState) -> Sequence[Mapper[Any]]:
    return list(orm.all_mappers)
