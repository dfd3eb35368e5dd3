"""``ORMCache``: invalidate on commit, and serve ``FromCache`` queries.

The events it listens to on a session (class, ``sessionmaker``, ``AsyncSession``...):

* ``after_flush`` - what each flushed row touches (:class:`~.rules.Changes`: its rule's
  keys and tags, with old and new values, and its table's ``orm:<table>`` tag) is put on
  the innermost transaction in progress: the savepoint, or the session's transaction.
* ``after_rollback`` - a savepoint rolled back drops what it held; a rollback of the whole
  transaction drops everything.
* ``after_transaction_end`` - a savepoint released hands what it held to its parent; the
  end of the session's transaction drops whatever is left (it was not committed).
* ``after_commit`` - the commit is durable: invalidate (or write through) everything held.
* ``do_orm_execute`` - ``FromCache`` SELECTs (:mod:`.query`), and bulk ``update()`` /
  ``delete()`` statements, whose rows are read before (and, for updates, after) they run
  so their keys and tags can be named.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, TypeVar, cast

from sqlalchemy import Connection, event, select, tuple_
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import ORMExecuteState, Session, SessionTransaction, sessionmaker
from sqlalchemy.orm.loading import merge_frozen_result
from sqlalchemy.util import await_only, greenlet_spawn

from ...cache import AsyncCache, Cache
from ...errors import ConfigurationError
from . import rows
from .query import option_of, query_key, read_tables
from .rules import Changes, Rule, Target, Write, table_tag

__all__ = ["ORMCache"]

T = TypeVar("T")
PENDING = "hitrate.pending"


def _version(write: Write) -> Callable[[Any], Any]:
    return lambda _: write.version


class _Superseded(Exception):
    """A write-through row that a later commit already changed: delete, don't write."""


def _pending(session: Session) -> dict[SessionTransaction, Changes]:
    found: dict[SessionTransaction, Changes] = session.info.setdefault(PENDING, {})
    return found


class ORMCache:
    """Keep a :class:`~hitrate.Cache` (or :class:`~hitrate.AsyncCache`) in step with what
    SQLAlchemy sessions commit, and serve ``FromCache`` queries from it::

        orm = ORMCache(cache)
        orm.model(User, invalidates=("user:{id}", "tag:team:{team_id}"))
        orm.attach(SessionLocal)          # a sessionmaker, Session class, async_sessionmaker

    Nothing is invalidated before the commit is durable, nothing at all on rollback, and
    a savepoint rolled back takes its changes with it. Every mapped class, with a rule or
    not, invalidates its table's ``orm:<table>`` tag (cached queries) when a row changes.
    """

    def __init__(self, cache: Cache | AsyncCache) -> None:
        if not isinstance(cache, Cache | AsyncCache):
            raise ConfigurationError(
                f"ORMCache takes a hitrate Cache or AsyncCache, not {type(cache).__name__}"
            )
        self.cache = cache
        self._rules: dict[Any, Rule] = {}
        self._learned: dict[str, set[str]] = {}

    # -- configuration -----------------------------------------------------------------------
    def model(
        self,
        cls: type[Any],
        invalidates: Target = (),
        *,
        write_through: Callable[[Any], Any] | None = None,
    ) -> None:
        """What a committed insert, update or delete of a *cls* row invalidates:
        templates over its column attributes (``"user:{id}"`` a key, ``"tag:team:{team_id}"``
        a tag), or a callable taking the object and returning such strings.
        ``write_through=lambda user: {...}`` caches that value under the key templates
        instead of deleting them (deletes still invalidate); it needs a version column
        (``__mapper_args__ = {"version_id_col": ...}``) so a late commit never overwrites
        a newer row."""
        mapper = sa_inspect(cls, raiseerr=False)
        if mapper is None or not hasattr(mapper, "column_attrs"):
            raise ConfigurationError(f"ORMCache.model() takes a mapped class, not {cls!r}")
        self._rules[mapper] = Rule(mapper, invalidates, write_through)

    def attach(self, target: T) -> T:
        """Listen on *target*: a ``sessionmaker``, a ``Session`` subclass (or ``Session``
        itself: every session), a session, an ``async_sessionmaker``, an ``AsyncSession``.
        Returns *target*. An ``AsyncCache`` works with asyncio sessions only."""
        sync_target: Any = target
        is_async = isinstance(target, AsyncSession | async_sessionmaker) or (
            isinstance(target, type) and issubclass(target, AsyncSession)
        )
        if isinstance(target, AsyncSession):
            sync_target = target.sync_session
        elif isinstance(target, async_sessionmaker):
            base = target.kw.get("sync_session_class", Session)
            sync_target = type(f"Hitrate{base.__name__}", (base,), {})
            target.kw["sync_session_class"] = sync_target
        elif isinstance(target, type) and issubclass(target, AsyncSession):
            raise ConfigurationError(
                "attach an async_sessionmaker or an AsyncSession instance, not the "
                "AsyncSession class (its sessions use a plain Session underneath)"
            )
        elif not (
            isinstance(target, Session | sessionmaker)
            or (isinstance(target, type) and issubclass(target, Session))
        ):
            raise ConfigurationError(
                f"ORMCache.attach() takes a sessionmaker, Session or AsyncSession, not {target!r}"
            )
        if isinstance(self.cache, AsyncCache) and not is_async:
            raise ConfigurationError(
                "an AsyncCache can only be kept in step with asyncio sessions "
                "(async_sessionmaker, AsyncSession); give plain sessions a Cache"
            )
        event.listen(sync_target, "after_flush", self._after_flush)
        event.listen(sync_target, "after_rollback", self._after_rollback)
        event.listen(sync_target, "after_transaction_end", self._after_transaction_end)
        event.listen(sync_target, "after_commit", self._after_commit)
        event.listen(sync_target, "do_orm_execute", self._do_orm_execute)
        return target

    # -- collecting --------------------------------------------------------------------------
    def _changes_of(self, obj: Any, *, deleted: bool) -> Changes:
        mapper = sa_inspect(obj).mapper
        rule = self._rule_for(mapper)
        if rule is not None:
            return rule.changes(obj, deleted=deleted)
        return Changes(tags={table_tag(t.name) for t in mapper.tables})

    def _hold(self, session: Session, changes: Changes) -> None:
        if not changes:
            return
        txn = session.get_nested_transaction() or session.get_transaction()
        if txn is None:  # no transaction: nothing can be committed later; nothing held
            return
        _pending(session).setdefault(txn, Changes()).update(changes)

    def _after_flush(self, session: Session, flush_context: Any) -> None:
        changes = Changes()
        for obj in session.new:
            changes.update(self._changes_of(obj, deleted=False))
        for obj in session.dirty:
            changes.update(self._changes_of(obj, deleted=False))
        for obj in session.deleted:
            changes.update(self._changes_of(obj, deleted=True))
        self._hold(session, changes)

    def _after_rollback(self, session: Session) -> None:
        pending = session.info.get(PENDING)
        if not pending:
            return
        nested = session.get_nested_transaction()
        if nested is None:
            pending.clear()
        else:
            pending.pop(nested, None)

    def _after_transaction_end(self, session: Session, txn: SessionTransaction) -> None:
        pending = session.info.get(PENDING)
        if not pending:
            return
        if txn.parent is None:  # the session's transaction ended without commit: drop
            pending.clear()
            return
        held = pending.pop(txn, None)
        if held is not None and txn.nested:  # a savepoint released: its parent holds them
            pending.setdefault(txn.parent, Changes()).update(held)

    # -- delivering --------------------------------------------------------------------------
    def _after_commit(self, session: Session) -> None:
        pending = session.info.pop(PENDING, None)
        if not pending:
            return
        changes = Changes()
        for held in pending.values():
            changes.update(held)
        if changes:
            self._deliver(session, changes)

    def _deliver(self, session: Session, changes: Changes) -> None:
        cache = self.cache
        if isinstance(cache, AsyncCache):
            await_only(self._adeliver(session, cache, changes))
            return
        if changes.keys:
            cache.invalidate(*sorted(changes.keys))
        for tag in sorted(changes.tags):
            cache.invalidate_tag(tag)
        for key, (value, write) in changes.writes.items():
            with contextlib.suppress(_Superseded):
                cache.write_through(
                    key, value, self._checker(session, write), version=_version(write)
                )

    async def _adeliver(self, session: Session, cache: AsyncCache, changes: Changes) -> None:
        if changes.keys:
            await cache.invalidate(*sorted(changes.keys))
        for tag in sorted(changes.tags):
            await cache.invalidate_tag(tag)
        for key, (value, write) in changes.writes.items():
            check = self._checker(session, write)

            async def save(v: Any, check: Callable[[Any], Any] = check) -> Any:
                return await greenlet_spawn(check, v)

            with contextlib.suppress(_Superseded):
                await cache.write_through(key, value, save, version=_version(write))

    @staticmethod
    def _checker(session: Session, write: Write) -> Callable[[Any], Any]:
        """The write-through "save": inside the write window, check the database still
        holds the version this commit wrote; a later commit's row is never overwritten."""

        def check(value: Any) -> Any:
            mapper = write.mapper
            version_col = mapper.version_id_col
            where = [c == v for c, v in zip(mapper.primary_key, write.ident, strict=True)]
            query = select(cast(Any, version_col)).where(*where)
            bind = session.get_bind(mapper)
            if isinstance(bind, Connection):  # a session joined to the caller's connection
                current = bind.execute(query).scalar()
            else:
                with bind.connect() as conn:
                    current = conn.execute(query).scalar()
            if current != write.version:
                raise _Superseded
            return value

        return check

    # -- do_orm_execute: cached SELECTs and bulk statements ----------------------------------
    def _do_orm_execute(self, orm: ORMExecuteState) -> Any:
        if orm.is_select:
            opt = option_of(orm)
            if opt is None or orm.is_relationship_load or orm.is_column_load:
                return None
            session = orm.session
            if session.info.get(PENDING) or session.new or session.dirty or session.deleted:
                return None  # this transaction wrote: read its own writes, cache nothing
            return self._cached_select(orm, opt)
        if orm.is_update or orm.is_delete:
            return self._bulk(orm)
        if orm.is_insert:
            return self._bulk_insert(orm)
        return None

    def _bulk_insert(self, orm: ORMExecuteState) -> Any:
        """``insert(User)`` statements: the table's tag, and the rule's targets for each
        row whose given values fill its templates (a generated id cannot be named)."""
        mapper = orm.bind_mapper
        if mapper is None:
            return None
        result = orm.invoke_statement()
        changes = Changes(tags={table_tag(t.name) for t in mapper.tables})
        rule = self._rule_for(mapper)
        params: Any = orm.parameters
        given: list[Any] = params if isinstance(params, list) else [params or {}]
        if rule is not None:
            for values in given:
                with contextlib.suppress(KeyError, IndexError):
                    keys, tags = rule.render(values)
                    changes.keys |= keys
                    changes.tags |= tags
        self._hold(orm.session, changes)
        return result

    def _cached_select(self, orm: ORMExecuteState, opt: Any) -> Any:
        cache = self.cache
        ctx = cache._ctx
        key = opt.key or query_key(orm)
        tags = set(opt.tags) | read_tables(orm.statement) | self._learned.get(key, set())
        policy = cache.policy_for(key, opt.ttl)
        if policy.stale or policy.early:
            policy = policy.with_(stale=0, early=0)
        live: list[Any] = []
        uncovered: list[bool] = []

        def fetch() -> Any:
            frozen = orm.invoke_statement().freeze()
            live.append(frozen)
            doc, tables = rows.dump(ctx, key, frozen)
            extra = {table_tag(t) for t in tables} - tags
            if extra:  # eager loads read tables the statement does not name: learn them
                self._learned.setdefault(key, set()).update(extra)
                uncovered.append(True)
            return doc

        def unless(doc: Any) -> bool:
            return bool(uncovered)

        ordered = sorted(tags)
        if isinstance(cache, AsyncCache):

            async def afetch() -> Any:
                return await greenlet_spawn(fetch)

            doc = await_only(cache.get_or_fetch(key, afetch, policy, ordered, unless=unless))
        else:
            doc = cache.get_or_fetch(key, fetch, policy, ordered, unless=unless)
        if live:
            return live[0]()
        try:
            frozen = rows.load(ctx, key, doc, orm.all_mappers)
        except (ValueError, KeyError, TypeError, IndexError):
            return None  # written by another version of the models: run it on the database
        merged = merge_frozen_result(orm.session, orm.statement, frozen, load=False)  # type: ignore[no-untyped-call]
        return merged()

    def _bulk(self, orm: ORMExecuteState) -> Any:
        """``update(User).where(...)`` / ``delete(...)``: read the rows it will touch (and,
        for an update, the same rows after), so their keys and tags can be named."""
        mapper = orm.bind_mapper
        if mapper is None:
            return None
        session = orm.session
        rule = self._rule_for(mapper)
        changes = Changes(tags={table_tag(t.name) for t in mapper.tables})
        if rule is None:
            result = orm.invoke_statement()
            self._hold(session, changes)
            return result
        attrs = [p.key for p in mapper.column_attrs]
        columns = [getattr(mapper.class_, a) for a in attrs]
        pk = [mapper.get_property_by_column(c).key for c in mapper.primary_key]
        if isinstance(orm.parameters, list):  # bulk UPDATE by primary key (executemany)
            idents = [tuple(p[k] for k in pk) for p in orm.parameters]
            before = self._by_ident(session, mapper, columns, attrs, pk, idents)
        else:
            where = getattr(orm.statement, "whereclause", None)
            query = select(*columns) if where is None else select(*columns).where(where)
            before = [dict(zip(attrs, r, strict=True)) for r in session.execute(query)]
        result = orm.invoke_statement()
        after: list[dict[str, Any]] = []
        if orm.is_update and before:
            idents = [tuple(v[k] for k in pk) for v in before]
            after = self._by_ident(session, mapper, columns, attrs, pk, idents)
        for values in before + after:
            keys, tags = rule.render(values)
            changes.keys |= keys
            changes.tags |= tags
        self._hold(session, changes)
        return result

    def _rule_for(self, mapper: Any) -> Rule | None:
        for m in mapper.iterate_to_root():
            rule = self._rules.get(m)
            if rule is not None:
                return rule
        return None

    @staticmethod
    def _by_ident(
        session: Session,
        mapper: Any,
        columns: list[Any],
        attrs: list[str],
        pk: list[str],
        idents: list[tuple[Any, ...]],
    ) -> list[dict[str, Any]]:
        keys = [getattr(mapper.class_, k) for k in pk]
        found: list[dict[str, Any]] = []
        for i in range(0, len(idents), 500):
            chunk = idents[i : i + 500]
            if len(keys) == 1:
                cond = keys[0].in_([x[0] for x in chunk])
            else:
                cond = tuple_(*keys).in_(chunk)
            found += [
                dict(zip(attrs, r, strict=True))
                for r in session.execute(select(*columns).where(cond))
            ]
        return found
