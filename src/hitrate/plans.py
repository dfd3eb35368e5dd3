"""The decisions, written once: each public verb is a generator that yields the Redis
operations and user calls it needs (see :mod:`hitrate.ops`) and returns its result.
:mod:`hitrate.drivers` runs them with a sync or an asyncio Redis client; the unit tests run
them with scripted replies and no Redis at all.

Fail-open lives here, at the ``yield`` that failed: the driver throws
:class:`CacheUnavailableError` into the plan, and the plan decides what "treat it as a miss"
means for that step (load without caching, serve the stale value, queue an invalidation).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from . import scripts
from .codec import Codec, DecodeError, Entry, decode_entry, encode_entry
from .errors import CacheUnavailableError, LoaderError, ValueTooLargeError
from .keys import KeySpace, family_of
from .ops import CALL, Batch, Coalesce, Eval, Plan, Publish, Sleep, Spawn
from .policy import Policy, TTLLike, to_policy
from .stats import Counters

__all__ = ["MISSING", "Context"]


class _Missing:
    """The type of :data:`MISSING`: "no value", never confused with a cached ``None``."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


MISSING: Final = _Missing()

ERROR_TEXT_MS = 2000  # how long a loader's failure is shown to waiters in other processes
MAX_PENDING = 10_000  # invalidations kept for retry while Redis is unreachable


@dataclass
class Context:
    """Everything a plan needs to decide, shared by one cache's calls."""

    keys: KeySpace
    codec: Codec
    default_policy: Policy
    policies: Mapping[str, Policy]
    max_value_size: int = 1024 * 1024
    write_window: float = 30.0
    rng: random.Random = field(default_factory=random.Random)
    clock: Callable[[], float] = time.time
    monotonic: Callable[[], float] = time.monotonic
    stats: Counters = field(default_factory=Counters)
    pending: set[str] = field(default_factory=set)
    pending_tags: set[str] = field(default_factory=set)
    pending_patterns: set[str] = field(default_factory=set)
    owes: bool = False  # some invalidation is owed to Redis (checked on every call: cheap)
    _pending_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def policy(self, key: str, ttl: TTLLike) -> Policy:
        return self.family_policy(family_of(key), ttl)

    def family_policy(self, family: str, ttl: TTLLike) -> Policy:
        base = self.policies.get(family, self.default_policy)
        if ttl is None or ttl is base:
            return base
        return ttl if isinstance(ttl, Policy) else to_policy(ttl, base)

    @staticmethod
    def token() -> str:
        return os.urandom(12).hex()

    def encode(
        self, key: str, value: Any, policy: Policy, load_time: float = 0.0, vtype: Any = None
    ) -> tuple[bytes, int]:
        """Entry bytes and Redis expiry in ms (0 = none); raises before anything is written.

        ``b""`` means "store nothing": a ``None`` under a policy with ``negative_ttl=0``.
        """
        if value is None and not policy.negative_ttl:
            return b"", 0
        ttl = policy.draw_ttl(self.rng, negative=value is None)
        expires_at = self.clock() + ttl if ttl is not None else 0.0
        data = encode_entry(self.codec, key, value, expires_at, load_time, vtype)
        if len(data) > self.max_value_size:
            raise ValueTooLargeError(
                f"value for key {key!r} is {len(data)} bytes encoded, over max_value_size="
                f"{self.max_value_size}; nothing was written. Cache a smaller projection of "
                "it, or raise max_value_size"
            )
        if ttl is None:
            return data, 0
        return data, math.ceil((ttl + (policy.stale if value is not None else 0)) * 1000)

    def remember_failed_write(self, key: str) -> None:
        """A write or invalidation could not reach Redis: retry it when Redis is back."""
        with self._pending_lock:
            if len(self.pending) < MAX_PENDING:
                self.pending.add(key)
            self.owes = True

    def remember_failed_invalidation(self, *, tag: str = "", pattern: str = "") -> None:
        """A tag or pattern invalidation did not complete: run it again when Redis is back."""
        with self._pending_lock:
            if tag:
                self.pending_tags.add(tag)
            if pattern:
                self.pending_patterns.add(pattern)
            self.owes = True

    def take_pending(self) -> tuple[list[str], list[str], list[str]]:
        """The keys, tags and patterns whose invalidation is owed to Redis, emptying them."""
        with self._pending_lock:
            keys, tags, patterns = self.pending, self.pending_tags, self.pending_patterns
            self.pending, self.pending_tags, self.pending_patterns = set(), set(), set()
            self.owes = False
        return sorted(keys), sorted(tags), sorted(patterns)


def _decode(ctx: Context, key: str, rkey: str, raw: bytes, family: str, vtype: Any = None) -> Plan:
    """Decode an entry; bytes that are not one of ours are a miss, counted and deleted --
    unless they are another codec's, format's or type's entry (another app version on this
    prefix): those are left alone."""
    try:
        return decode_entry(ctx.codec, key, raw, vtype)
    except DecodeError as exc:
        ctx.stats.incr(family, "decode_errors")
        if not exc.foreign:
            with contextlib.suppress(CacheUnavailableError):
                yield ("UNLINK", rkey)
        return None


# -- reads ---------------------------------------------------------------------------------


def get(ctx: Context, key: str, default: Any, vtype: Any = None) -> Plan:
    rkey = ctx.keys.entry(key)
    family = family_of(key)
    try:
        raw = yield ("GET", rkey)
    except CacheUnavailableError:
        ctx.stats.incr(family, "fail_open")
        return default
    if raw is not None:
        entry: Entry | None = yield from _decode(ctx, key, rkey, raw, family, vtype)
        if entry is not None and (not entry.expires_at or ctx.clock() < entry.expires_at):
            ctx.stats.hit(family)
            return entry.value
    ctx.stats.miss(family)
    return default


def get_many(ctx: Context, keys: Iterable[str], vtype: Any = None) -> Plan:
    wanted = list(dict.fromkeys(keys))
    if not wanted:
        return {}
    rkeys = [ctx.keys.entry(k) for k in wanted]
    try:
        raws = yield ("MGET", *rkeys)
    except CacheUnavailableError:
        for k in wanted:
            ctx.stats.incr(family_of(k), "fail_open")
        return {}
    found: dict[str, Any] = {}
    bad: list[str] = []
    now = ctx.clock()
    for key, rkey, raw in zip(wanted, rkeys, raws, strict=True):
        family = family_of(key)
        if raw is not None:
            try:
                entry = decode_entry(ctx.codec, key, raw, vtype)
            except DecodeError as exc:
                ctx.stats.incr(family, "decode_errors")
                if not exc.foreign:  # another app version's entry: a miss, left alone
                    bad.append(rkey)
            else:
                if not entry.expires_at or now < entry.expires_at:
                    found[key] = entry.value
                    ctx.stats.hit(family)
                    continue
        ctx.stats.miss(family)
    if bad:
        with contextlib.suppress(CacheUnavailableError):
            yield ("UNLINK", *bad)
    return found


# -- writes --------------------------------------------------------------------------------


def set_(ctx: Context, key: str, value: Any, ttl: TTLLike, vtype: Any = None) -> Plan:
    quad = ctx.keys.quad(key)
    data, px = ctx.encode(key, value, ctx.policy(key, ttl), vtype=vtype)
    try:
        if data:
            yield Eval(scripts.SET, quad, (data, px, ctx.token()))
        else:  # a None that this policy does not cache: drop what was there
            yield Eval(scripts.INVALIDATE, quad, (ctx.token(),))
    except CacheUnavailableError:
        ctx.stats.incr(family_of(key), "fail_open")
        ctx.remember_failed_write(key)
        return False
    return True


def set_many(ctx: Context, mapping: Mapping[str, Any], ttl: TTLLike, vtype: Any = None) -> Plan:
    # Encode everything first: one bad value means nothing is written.
    ops = []
    for key, value in mapping.items():
        quad = ctx.keys.quad(key)
        data, px = ctx.encode(key, value, ctx.policy(key, ttl), vtype=vtype)
        script = scripts.SET if data else scripts.INVALIDATE
        ops.append(Eval(script, quad, (data, px, ctx.token()) if data else (ctx.token(),)))
    if not ops:
        return True
    try:
        yield Batch(ops)
    except CacheUnavailableError:
        for key in mapping:
            ctx.stats.incr(family_of(key), "fail_open")
            ctx.remember_failed_write(key)
        return False
    return True


def invalidate(ctx: Context, keys: Sequence[str]) -> Plan:
    if not keys:
        return 0
    flat: list[str] = []
    for key in keys:
        flat.extend(ctx.keys.quad(key))
    try:
        deleted: int = yield Eval(scripts.INVALIDATE, flat, (ctx.token(),))
    except CacheUnavailableError:
        for key in keys:
            ctx.stats.incr(family_of(key), "fail_open")
            ctx.remember_failed_write(key)
        return 0
    for key in keys:
        ctx.stats.incr(family_of(key), "invalidations")
    return deleted


def owed(ctx: Context) -> Plan:
    """Deliver the invalidations that failed while Redis was unreachable (each re-queues
    itself if it fails again)."""
    keys, tags, patterns = ctx.take_pending()
    if keys:
        yield from invalidate(ctx, keys)
    for tag in tags:
        yield from invalidate_tag(ctx, tag)
    for pattern in patterns:
        yield from invalidate_pattern(ctx, pattern)


def _invalidate_entries(
    ctx: Context, entries: Sequence[str], batch: int, tag_key: str = ""
) -> Plan:
    """Invalidate entries given by their Redis keys, ``batch`` per script call, pipelined;
    with *tag_key*, each is also taken out of that tag set in the same script."""
    total = 0
    ops = []
    for i in range(0, len(entries), batch):
        flat: list[str] = [tag_key] if tag_key else []
        for rkey in entries[i : i + batch]:
            flat += ctx.keys.quad_of(rkey)
        args = (ctx.token(), "tag") if tag_key else (ctx.token(),)
        ops.append(Eval(scripts.INVALIDATE, flat, args))
    if ops:
        replies = yield Batch(ops)
        total = sum(int(r) for r in replies)
    return total


def invalidate_pattern(ctx: Context, pattern: str, count: int = 1000, batch: int = 500) -> Plan:
    """SCAN (never KEYS) for entries under the prefix matching *pattern*, then invalidate
    them in pipelined batches as they are found. Fail-open: returns what was deleted so far;
    strict mode raises."""
    match = ctx.keys.pattern(pattern)
    cursor: Any = 0
    seen: set[str] = set()
    deleted = 0
    try:
        while True:
            cursor, found = yield ("SCAN", cursor, "MATCH", match, "COUNT", count)
            entries = []
            for raw in found:
                entry = ctx.keys.entry_of(raw.decode() if isinstance(raw, bytes) else raw)
                if entry is not None and entry not in seen:
                    seen.add(entry)
                    entries.append(entry)
            deleted += yield from _invalidate_entries(ctx, entries, batch)
            if int(cursor) == 0:
                break
    except CacheUnavailableError:
        ctx.stats.incr(family_of(pattern), "fail_open")
        ctx.remember_failed_invalidation(pattern=pattern)
    ctx.stats.incr(family_of(pattern), "invalidations", len(seen))
    return deleted


def invalidate_tag(ctx: Context, tag: str, batch: int = 500) -> Plan:
    """Bump the tag's generation (fills whose lease predates this are refused), then
    invalidate every entry the tag names and remove it from the tag set."""
    tag_key = ctx.keys.tag(tag)
    gen_key = ctx.keys.tag_gen(tag_key)
    gen_ms = 24 * 3600 * 1000
    try:
        _, members = yield Batch(
            [("SET", gen_key, ctx.token(), "PX", gen_ms), ("SMEMBERS", tag_key)]
        )
        entries = sorted(m.decode() if isinstance(m, bytes) else m for m in members)
        deleted = yield from _invalidate_entries(ctx, entries, batch, tag_key)
    except CacheUnavailableError:
        ctx.stats.incr("tag", "fail_open")
        ctx.remember_failed_invalidation(tag=tag)
        return 0
    ctx.stats.incr("tag", "invalidations", len(entries))
    return deleted


# -- cache-aside with leases ---------------------------------------------------------------


def _xfetch(
    now: float, expires_at: float, load_time: float, beta: float, rng: random.Random
) -> bool:
    """XFetch (Vattani et al., VLDB 2015): refresh early with a probability that rises as
    expiry nears, scaled by how long the last load took."""
    return now - load_time * beta * math.log(1.0 - rng.random()) >= expires_at


def _load_unfilled(ctx: Context, family: str) -> Plan:
    """Waited as long as the lease allows for another caller's fill: load, don't fill."""
    t0 = ctx.monotonic()
    value = yield CALL
    ctx.stats.load(family, ctx.monotonic() - t0)
    return value


def _load_only(ctx: Context, family: str) -> Plan:
    """Redis is unavailable: serve the loader's value, cache nothing."""
    ctx.stats.incr(family, "fail_open")
    t0 = ctx.monotonic()
    value = yield CALL
    ctx.stats.load(family, ctx.monotonic() - t0)
    return value


def fresh_value(
    ctx: Context, key: str, family: str, raw: bytes | None, policy: Policy, vtype: Any = None
) -> Any:
    """What a GET reply serves at once: the cached value (a hit, counted), or
    :data:`MISSING` when ``get_or_fetch`` must do more: a miss, undecodable bytes, a stale
    entry, or an early refresh that XFetch says is due. No Redis; the plan below and the
    drivers' hit fast path (``Cache.get_or_fetch``) both decide with it."""
    if raw is None:
        return MISSING
    try:
        entry = decode_entry(ctx.codec, key, raw, vtype)
    except DecodeError:
        return MISSING
    expires_at = entry.expires_at
    if expires_at:
        now = ctx.clock()
        if now >= expires_at or (
            policy.early and _xfetch(now, expires_at, entry.load_time, policy.early, ctx.rng)
        ):
            return MISSING
    ctx.stats.hit(family)
    if entry.value is None:
        ctx.stats.incr(family, "negative_hits")
    return entry.value


def get_or_fetch(
    ctx: Context,
    key: str,
    ttl: TTLLike,
    tags: Sequence[str] = (),
    *,
    checked: bool = False,
    vtype: Any = None,
) -> Plan:
    """Cache-aside with leases. ``checked``: the driver already ran :func:`fresh_value` on
    the GET reply it replays (the hit fast path), so the XFetch draw is not made twice."""
    rkey = ctx.keys.entry(key)
    family = family_of(key)
    try:
        raw = yield ("GET", rkey)
    except CacheUnavailableError:
        return (yield from _load_only(ctx, family))
    policy = ctx.policy(key, ttl)
    if not checked:
        value = fresh_value(ctx, key, family, raw, policy, vtype)
        if value is not MISSING:
            return value
    if raw is not None:
        entry: Entry | None = yield from _decode(ctx, key, rkey, raw, family, vtype)
        if entry is not None and ctx.clock() < entry.expires_at + policy.stale:
            # Still fresh but XFetch says refresh early, or inside the stale window.
            return (yield from _refresh(ctx, key, rkey, family, policy, tags, raw, entry, vtype))
    ctx.stats.miss(family)
    if (yield Coalesce(rkey, policy.lease)):
        # Another caller here loaded for longer than the lease time: load without filling.
        return (yield from _load_unfilled(ctx, family))
    return (yield from _fill(ctx, key, rkey, family, policy, tags, vtype))


def _refresh(
    ctx: Context,
    key: str,
    rkey: str,
    family: str,
    policy: Policy,
    tags: Sequence[str],
    raw: bytes,
    old: Entry,
    vtype: Any = None,
) -> Plan:
    """The entry is stale (or XFetch says refresh early). Every caller is served the old
    value at once; the one that gets the lease also starts a background load and fill, so
    no caller waits for the loader (a worker thread in sync code, a task in asyncio)."""
    ctx.stats.hit(family)
    if old.expires_at <= ctx.clock():
        ctx.stats.incr(family, "stale_hits")
    token = ctx.token()
    try:
        reply = yield _lease_op(ctx, rkey, tags, token, policy, seen=raw[4:12])
    except CacheUnavailableError:
        return old.value
    if reply[0] == 1:  # refreshed meanwhile by another caller: serve the new value
        entry = yield from _decode(ctx, key, rkey, reply[1], family, vtype)
        return old.value if entry is None else entry.value
    if reply[0] == 2:
        yield Spawn(_load_and_fill(ctx, key, rkey, family, policy, tags, token, reply[3:], vtype))
    return old.value


def _lease_op(
    ctx: Context, rkey: str, tags: Sequence[str], token: str, policy: Policy, *, seen: bytes
) -> Eval:
    """lease.lua: *seen* is the expiry field of the entry being refreshed, b"" on a miss."""
    gens = [ctx.keys.tag_gen(ctx.keys.tag(t)) for t in tags]
    return Eval(
        scripts.LEASE,
        [rkey, ctx.keys.lease(rkey), *gens],
        (token, math.ceil(policy.lease * 1000), seen),
    )


def _current(ctx: Context, entry: Entry) -> bool:
    """Not logically expired (Redis may keep a key past that: stale windows, clock skew)."""
    return not entry.expires_at or ctx.clock() < entry.expires_at


def _fill(
    ctx: Context,
    key: str,
    rkey: str,
    family: str,
    policy: Policy,
    tags: Sequence[str],
    vtype: Any = None,
) -> Plan:
    """Miss: take the lease and load, or wait (bounded) for the caller that holds it."""
    lease_key = ctx.keys.lease(rkey)
    err_key = ctx.keys.error(rkey)
    token = ctx.token()
    deadline: float | None = None
    delay = 0.002
    seen = b""  # the expiry field of an expired entry Redis still holds (clock skew)
    while True:
        try:
            reply = yield _lease_op(ctx, rkey, tags, token, policy, seen=seen)
        except CacheUnavailableError:
            return (yield from _load_only(ctx, family))
        status = reply[0]
        if status == 2:
            return (
                yield from _load_and_fill(
                    ctx, key, rkey, family, policy, tags, token, reply[3:], vtype
                )
            )
        if status == 1:
            entry = yield from _decode(ctx, key, rkey, reply[1], family, vtype)
            if entry is not None:
                if _current(ctx, entry):
                    yield Publish(entry.value)
                    return entry.value
                seen = reply[1][4:12]  # logically expired: take the lease despite it
            continue
        # Another caller is loading: wait for its fill, polling with backoff.
        holder = reply[2]
        if deadline is None:
            ctx.stats.incr(family, "waits")
            deadline = ctx.monotonic() + policy.lease
        while True:
            if ctx.monotonic() >= deadline:
                # Past the budget: load ourselves, but don't fill (the holder may still).
                return (yield from _load_unfilled(ctx, family))
            yield Sleep(min(delay, max(0.0, deadline - ctx.monotonic())))
            delay = min(delay * 2, 0.05)
            try:
                raw, now_holder, err = yield ("MGET", rkey, lease_key, err_key)
            except CacheUnavailableError:
                return (yield from _load_only(ctx, family))
            if raw is not None:
                entry = yield from _decode(ctx, key, rkey, raw, family, vtype)
                if entry is not None and _current(ctx, entry):
                    yield Publish(entry.value)
                    return entry.value
            if err is not None and holder and err.startswith(holder + b"\n"):
                message = err[len(holder) + 1 :].decode(errors="replace")
                raise LoaderError(
                    f"the loader for {key!r} failed in the caller that held its lease: {message}"
                )
            if now_holder is None:
                break  # released or revoked without a fill: try for the lease ourselves
            holder = now_holder


def _load_and_fill(
    ctx: Context,
    key: str,
    rkey: str,
    family: str,
    policy: Policy,
    tags: Sequence[str],
    token: str,
    gens: Sequence[Any],
    vtype: Any = None,
) -> Plan:
    lease_key = ctx.keys.lease(rkey)
    t0 = ctx.monotonic()
    try:
        value = yield CALL
        load_time = ctx.monotonic() - t0
        ctx.stats.load(family, load_time)
        data, px = ctx.encode(key, value, policy, load_time, vtype)
    except (Exception, asyncio.CancelledError) as exc:
        try:
            # A cancelled caller just gives the lease back: waiters load for themselves.
            cancelled = isinstance(exc, asyncio.CancelledError)
            text = "" if cancelled else f"{type(exc).__name__}: {exc}"
            yield Eval(
                scripts.RELEASE, [lease_key, ctx.keys.error(rkey)], (token, text, ERROR_TEXT_MS)
            )
        except CacheUnavailableError:
            pass
        raise
    try:
        if not data:  # a None we don't cache: just give the lease back
            released = yield Eval(
                scripts.RELEASE, [lease_key, ctx.keys.error(rkey)], (token, "", 0)
            )
            if released:  # still ours: nothing revoked it while we loaded
                yield Publish(value)
            return value
        tag_keys = [ctx.keys.tag(t) for t in tags]
        gen_keys = [ctx.keys.tag_gen(t) for t in tag_keys]
        filled = yield Eval(
            scripts.FILL,
            [rkey, lease_key, *tag_keys, *gen_keys],
            (token, data, px, len(tags), *gens),
        )
    except CacheUnavailableError:
        ctx.stats.incr(family, "fail_open")
        return value
    if filled:
        # Filled under a lease nothing revoked: no write completed since our load began.
        ctx.stats.incr(family, "fills")
        yield Publish(value)
    else:
        ctx.stats.incr(family, "fills_refused")
    return value


# -- write-through -------------------------------------------------------------------------


def write_through(
    ctx: Context,
    key: str,
    value: Any,
    ttl: TTLLike,
    version: Callable[[Any], Any] | None = None,
    vtype: Any = None,
) -> Plan:
    """Save to the source of truth (the driver's CALL), then cache what was saved, unless
    another write or an invalidation of this key overlapped ours: then delete the entry, so
    the next read loads whatever the source of truth holds now.

    If the save returns something other than ``None`` (the stored row, with the version or
    timestamps the database gave it), that is what gets cached. With ``version`` (a function
    of the cached value giving a number that grows with every write of the row), overlapping
    writes are settled by comparing versions in Lua instead of deleting.
    """
    quad = ctx.keys.quad(key)
    lease_key, writes_key = quad[1], quad[2]
    family = family_of(key)
    policy = ctx.policy(key, ttl)
    ctx.encode(key, value, policy, vtype=vtype)  # refuse an unencodable value before saving
    token = ctx.token()
    began = True
    try:
        in_flight = yield Eval(
            scripts.WRITE_BEGIN,
            [lease_key, writes_key],
            (token, math.ceil(ctx.write_window * 1000)),
        )
    except CacheUnavailableError:
        began, in_flight = False, 0
    try:
        saved = yield CALL
        if saved is not None:
            value = saved
        data, px = ctx.encode(key, value, policy, vtype=vtype)
        row_version = "" if version is None else _version_text(key, version(value))
    except Exception:
        # The save failed (or what it returned cannot be cached): forget the entry.
        try:
            if began:
                yield Eval(scripts.WRITE_END, quad, (token, "1", b"", 0, ctx.token(), ""))
            else:
                yield Eval(scripts.INVALIDATE, quad, (ctx.token(),))
        except CacheUnavailableError:
            ctx.remember_failed_write(key)
        raise
    try:
        if not began:
            # Redis missed our begin, so a reader may have filled an old value meanwhile.
            yield Eval(scripts.INVALIDATE, quad, (ctx.token(),))
            return value
        conflict = "1" if int(in_flight) > 1 else "0"
        yield Eval(scripts.WRITE_END, quad, (token, conflict, data, px, ctx.token(), row_version))
    except CacheUnavailableError:
        ctx.stats.incr(family, "fail_open")
        ctx.remember_failed_write(key)
    return value


def _version_text(key: str, number: Any) -> str:
    if isinstance(number, bool) or not isinstance(number, int | float) or math.isnan(number):
        raise TypeError(
            f"version= for key {key!r} must give a number that grows with each write of the "
            f"row (an int version column, a timestamp); got {number!r}"
        )
    return repr(number)
