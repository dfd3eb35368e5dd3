"""Batch cache-aside: ``get_or_fetch_many(keys, fetch_many)``.

One round trip reads every entry (MGET; skipped when the family has been missing, see
:meth:`Context.likely_miss`), one takes the fill leases of all the misses (the lease
scripts, pipelined), **one** loader call loads every key this caller holds the lease of,
and one round trip fills them. Keys whose lease another caller holds are waited for
(bounded by the lease time, polling with backoff) and loaded by a second loader call only
if their fill does not come. The guarantees are those of ``get_or_fetch``: one load per key
at a time across processes, and no fill of a value loaded before a write or invalidation.

Entries inside their stale window, or that XFetch would refresh early, are loaded with the
batch (callers of a batch wait for its loader; there is no background refresh).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..errors import CacheUnavailableError, ValueTooLargeError
from ..keys import tags_of
from ..ops import Batch, CallWith, Eval, Plan, Sleep
from .aside import EntryStore, prepare_many, settle
from .context import MGET_CHUNK, MISSING, Context, generations, interrupted
from .leases import _too_large, give_back, release
from .tags import version_keys

__all__ = ["get_or_fetch_many"]


def _mget(rkeys: Sequence[str], extra: list[tuple[Any, ...]]) -> tuple[Any, ...] | Batch:
    chunks = [("MGET", *rkeys[i : i + MGET_CHUNK]) for i in range(0, len(rkeys), MGET_CHUNK)]
    ops = chunks + extra
    return ops[0] if len(ops) == 1 else Batch(ops)


def get_or_fetch_many(
    ctx: Context,
    keys: Iterable[str],
    ttl: Any,
    tags: Sequence[str] = (),
    *,
    unless: Any = None,
    vtype: Any = None,
) -> Plan:
    """``{key: value}`` for every key: cached, or from one ``fetch_many(missing_keys)``
    call, which returns a mapping; a key it leaves out is ``None`` (cached as "not found"
    when the policy has a ``negative_ttl``)."""
    wanted = list(dict.fromkeys(keys))
    if not wanted:
        return {}
    tags = tags_of(tags)
    stores = []
    for key in wanted:
        rkey, family = ctx.keys.locate(key)
        policy = ctx.family_policy(family, ttl)
        stores.append(EntryStore(ctx, key, rkey, family, policy, tags, vtype))
    found: dict[str, Any] = {}
    leasing = ctx.likely_miss(stores[0].family)
    try:
        if ctx.gens.due():
            yield from generations(ctx)
        pending: list[tuple[EntryStore, bytes]] = [(s, b"") for s in stores]
        if not leasing:
            found_raw = yield from _read(ctx, stores)
            pending = []
            for store, raw in zip(stores, found_raw, strict=True):
                value, seen = yield from store.read(raw) if raw is not None else _nothing()
                if value is MISSING:
                    pending.append((store, seen))
                else:
                    ctx.stats.hit(store.family)
                    found[store.key] = value
    except CacheUnavailableError:
        return (yield from _load_only(ctx, stores, found, unless))
    if not pending:
        return found
    return (yield from _lease_load_fill(ctx, pending, found, unless))


def _nothing() -> Plan:
    return MISSING, b""
    yield  # a generator


def _read(ctx: Context, stores: list[EntryStore]) -> Plan:
    """The raw entries of *stores* (and, with tags, their current versions: known to
    each store, read after the entries in the same round trip)."""
    rkeys = [s.rkey for s in stores]
    tags = stores[0].tags
    extra = [("MGET", *version_keys(ctx, tags))] if tags else []
    op = _mget(rkeys, extra)
    replies = yield op
    if isinstance(op, tuple):
        return replies
    if tags:
        known = dict(zip(tags, replies[-1], strict=True))
        replies = replies[:-1]
        for store in stores:
            store.known = known
    return [raw for reply in replies for raw in reply]


def _lease_load_fill(
    ctx: Context, pending: list[tuple[EntryStore, bytes]], found: dict[str, Any], unless: Any
) -> Plan:
    ours: list[tuple[EntryStore, str, Sequence[Any]]] = []
    waiting: list[EntryStore] = []
    unfilled: list[EntryStore] = []
    hits, asked = 0, len(pending)
    families = {s.family for s, _ in pending}
    for round_ in range(2):  # a second round leases, despite it, what was there but stale
        tokens = [ctx.token() for _ in pending]
        if ctx.cluster:  # nothing granted yet: a failure here owes only what we hold
            try:
                yield from prepare_many(ctx, [s for s, _ in pending])
            except BaseException as exc:
                _owe(ctx, ours)
                if isinstance(exc, CacheUnavailableError):
                    rest = [s for s, _ in pending] + [s for s, _, _ in ours] + unfilled
                    return (yield from _load_only(ctx, rest + waiting, found, unless))
                raise
        try:
            leases = [s.lease(t, seen) for (s, seen), t in zip(pending, tokens, strict=True)]
            replies = yield Batch(leases)
        except BaseException as exc:  # any lease may have been granted: owe them back
            for (store, _), token in zip(pending, tokens, strict=True):
                ctx.owed.lease(store.rkey, token)
            _owe(ctx, ours)
            if isinstance(exc, CacheUnavailableError):
                rest = [s for s, _ in pending] + [s for s, _, _ in ours] + unfilled
                return (yield from _load_only(ctx, rest + waiting, found, unless))
            raise
        again: list[tuple[EntryStore, bytes]] = []
        try:
            for (store, _), token, reply in zip(pending, tokens, replies, strict=True):
                store.leased(reply)
                status = reply[0]
                if status == 1:
                    value, seen = yield from store.read(reply[1])
                    if value is not MISSING:
                        ctx.stats.hit(store.family)
                        found[store.key] = value
                        hits += 1
                    elif round_ == 0 and seen:  # stale, or of an older generation
                        again.append((store, seen))
                    else:  # still not fresh for us: loaded with the others, not filled
                        ctx.missed(store.family)
                        unfilled.append(store)
                elif status == 2:
                    ctx.missed(store.family)
                    ours.append((store, token, reply))
                else:  # another caller loads it (3), or a write-through is in flight (4)
                    ctx.missed(store.family)
                    ctx.stats.incr(store.family, "waits")
                    waiting.append(store)
        except BaseException:  # a tag-version read failed: the leases granted are owed
            _owe(ctx, ours)
            raise
        pending = again
        if not pending:
            break
    if hits * 2 > asked:  # mostly hits: the next batch reads with one MGET
        for family in families:
            ctx.lean.pop(family, None)
    if ours or unfilled:
        yield from _load_and_fill(ctx, ours, unfilled, found, unless)
    if waiting:
        yield from _wait(ctx, waiting, found)
    return found


def _owe(ctx: Context, ours: list[tuple[EntryStore, str, Sequence[Any]]]) -> None:
    for store, token, _ in ours:
        ctx.owed.lease(store.rkey, token)


def _call(ctx: Context, stores: list[EntryStore]) -> Plan:
    """One loader call for *stores*: ``{key: value}``, a missing key being ``None``."""
    t0 = ctx.monotonic()
    loaded = yield CallWith(([s.key for s in stores],))
    if not isinstance(loaded, Mapping):
        raise TypeError(
            f"get_or_fetch_many's loader must return a mapping of key -> value, got "
            f"{type(loaded).__name__}; keys it leaves out are cached as not found"
        )
    elapsed = ctx.monotonic() - t0
    for store in stores:
        ctx.stats.load(store.family, elapsed)
    return {s.key: loaded.get(s.key) for s in stores}, elapsed


def _load_and_fill(
    ctx: Context,
    ours: list[tuple[EntryStore, str, Sequence[Any]]],
    unfilled: list[EntryStore],
    found: dict[str, Any],
    unless: Any,
) -> Plan:
    try:
        values, elapsed = yield from _call(ctx, [s for s, _, _ in ours] + unfilled)
    except BaseException as exc:
        if interrupted(exc):  # the leases go back (or are owed), then the error goes on
            text = f"{type(exc).__name__}: {exc}" if isinstance(exc, Exception) else ""
            try:
                yield Batch([release(s.rkey, t, text) for s, t, _ in ours])
            except BaseException:
                for store, token, _ in ours:
                    ctx.owed.lease(store.rkey, token)
        raise
    for store in unfilled:
        found[store.key] = values[store.key]
    fills: list[Eval] = []
    filled_by: list[tuple[EntryStore, str]] = []
    try:
        for store, token, reply in ours:
            value = values[store.key]
            found[store.key] = value
            op: Eval | None = None
            if unless is None or not unless(value):
                try:
                    op, _ = store.fill(token, value, elapsed, reply)
                except ValueTooLargeError as exc:
                    _too_large(ctx, store, exc)
            fills.append(op if op is not None else release(store.rkey, token))
            filled_by.append((store, token))
    except BaseException:  # a value that cannot be stored (or unless= raised): every
        try:  # lease goes back (or is owed) before the error reaches the caller
            yield Batch([release(store.rkey, token) for store, token, _ in ours])
        except BaseException:
            _owe(ctx, ours)
        raise
    try:
        results = yield Batch(fills)
    except CacheUnavailableError:
        for store, token in filled_by:
            ctx.stats.incr(store.family, "fail_open")
            ctx.owed.lease(store.rkey, token)
        return
    except BaseException as exc:
        if interrupted(exc):
            for store, token in filled_by:
                yield from give_back(ctx, store.rkey, token)
        raise
    written = [
        (store, bool(result))
        for fill, (store, _), result in zip(fills, filled_by, results, strict=True)
        if fill.script.name in ("fill", "fill_slot")
    ]
    if ctx.cluster and any(ok for _, ok in written):
        stands = iter((yield from settle(ctx, [s for s, ok in written if ok])))
        written = [(store, ok and next(stands)) for store, ok in written]
    for store, ok in written:
        ctx.stats.incr(store.family, "fills" if ok else "fills_refused")


def _wait(ctx: Context, waiting: list[EntryStore], found: dict[str, Any]) -> Plan:
    """Wait (bounded by the lease time) for the fills of keys other callers load; load what
    does not come (one loader call, nothing filled)."""
    deadline = ctx.monotonic() + max(s.policy.lease for s in waiting)
    delay = 0.002
    while waiting and ctx.monotonic() < deadline:
        yield Sleep(min(delay, max(0.0, deadline - ctx.monotonic())))
        delay = min(delay * 2, 0.05)
        try:
            polls = yield Batch([s.poll() for s in waiting])
        except CacheUnavailableError:
            break
        still = []
        for store, (raw, holder, _err) in zip(waiting, polls, strict=True):
            value = MISSING
            if raw is not None:
                try:
                    value, _ = yield from store.read(raw)
                except CacheUnavailableError:
                    value = MISSING
            if value is not MISSING:
                found[store.key] = value
            elif holder is not None:
                still.append(store)
            else:  # the holder gave up without a fill: load it below
                deadline = min(deadline, ctx.monotonic())
                still.append(store)
        waiting = still
    if waiting:
        values, _ = yield from _call(ctx, waiting)
        found.update(values)


def _load_only(ctx: Context, stores: list[EntryStore], found: dict[str, Any], unless: Any) -> Plan:
    """Redis is unreachable: one loader call for what is not found yet, nothing cached."""
    rest = [s for s in stores if s.key not in found]
    for store in rest:
        ctx.stats.incr(store.family, "fail_open")
    if rest:
        values, _ = yield from _call(ctx, rest)
        found.update(values)
    return found
