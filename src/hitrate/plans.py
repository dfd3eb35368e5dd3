"""The decisions, written once: each public verb is a generator that yields the Redis
operations and user calls it needs (see :mod:`hitrate.ops`) and returns its result.
:mod:`hitrate.drivers` runs them with a sync or an asyncio Redis client; the unit tests run
them with scripted replies and no Redis at all.

Fail-open lives here, at the ``yield`` that failed: the driver throws
:class:`CacheUnavailableError` into the plan, and the plan decides what "treat it as a miss"
means for that step (load without caching, serve the stale value, queue an invalidation).
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from . import scripts
from .codec import Codec, DecodeError, Entry, decode_entry, encode_entry
from .errors import CacheUnavailableError, LoaderError, ValueTooLargeError
from .generations import ALL, Generations, family_of_pattern, new_token
from .keys import KeySpace, family_of
from .ops import CALL, LEAD, TIMEOUT, Batch, Coalesce, Eval, Plan, Publish, Sleep, Spawn
from .owed import OwedQueue
from .policy import Policy, TTLLike, to_policy
from .stats import Counters

__all__ = ["MISSING", "Context"]

#: Sizes of the chunks that multi-key verbs are cut into (one command or script call
#: each, pipelined), so no single command blocks the server for long.
MGET_CHUNK = 500
SCRIPT_CHUNK = 100  # entries per invalidate.lua call
BATCH_CHUNK = 500  # commands per pipeline


class _Missing:
    """The type of :data:`MISSING`: "no value", never confused with a cached ``None``."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


MISSING: Final = _Missing()

ERROR_TEXT_MS = 2000  # how long a loader's failure is shown to waiters in other processes
TAG_PRUNE = 2  # tag-set members checked (and dropped if their entry is gone) per tagged fill
DOWN_ROUNDS = 3  # in-process single-flight rounds while Redis is unreachable


def interrupted(exc: BaseException) -> bool:
    """An exception a plan must clean up after (give leases back, close write windows)
    before passing it on: anything but the generator being closed."""
    return not isinstance(exc, GeneratorExit)


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
    owed: OwedQueue = field(default_factory=OwedQueue)
    gens: Generations = field(default_factory=Generations)

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
        self,
        key: str,
        value: Any,
        policy: Policy,
        load_time: float = 0.0,
        gen: int | None = None,
        vtype: Any = None,
    ) -> tuple[bytes, int]:
        """Entry bytes and Redis expiry in ms (0 = none); raises before anything is written.

        ``b""`` means "store nothing": a ``None`` under a policy with ``negative_ttl=0``.
        *gen* is the namespace stamp (default: this process's view of the key's family).
        """
        if value is None and not policy.negative_ttl:
            return b"", 0
        ttl = policy.draw_ttl(self.rng, negative=value is None)
        expires_at = self.clock() + ttl if ttl is not None else 0.0
        if gen is None:
            gen = self.gens.stamp(family_of(key))
        data = encode_entry(self.codec, key, value, expires_at, load_time, vtype, gen)
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
        """A write or invalidation could not reach Redis: owe it (delivered before the
        next command once Redis is back; see :mod:`hitrate.owed`)."""
        self.owed.entry(self.keys.entry(key), family_of(key))

    def fresh(self, entry: Entry, family: str) -> bool:
        """Not logically expired, and written under the family's current generation."""
        return (not entry.expires_at or self.clock() < entry.expires_at) and (
            entry.gen == self.gens.stamp(family)
        )


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


def generations(ctx: Context) -> Plan:
    """Read the prefix's generations hash again (see :mod:`hitrate.generations`)."""
    reply = yield ("HGETALL", ctx.keys.generations())
    ctx.gens.replace(reply)


def _check_generations(ctx: Context) -> Plan:
    """Refresh the generation view when it is due; Redis failing here fails the read."""
    if ctx.gens.due():
        yield from generations(ctx)


# -- reads ---------------------------------------------------------------------------------


def get(ctx: Context, key: str, default: Any, vtype: Any = None) -> Plan:
    rkey = ctx.keys.entry(key)
    family = family_of(key)
    try:
        yield from _check_generations(ctx)
        raw = yield ("GET", rkey)
    except CacheUnavailableError:
        ctx.stats.incr(family, "fail_open")
        return default
    if raw is not None:
        entry: Entry | None = yield from _decode(ctx, key, rkey, raw, family, vtype)
        if entry is not None and ctx.fresh(entry, family):
            ctx.stats.hit(family)
            return entry.value
    ctx.stats.miss(family)
    return default


def get_many(ctx: Context, keys: Iterable[str], vtype: Any = None) -> Plan:
    """MGET in chunks of :data:`MGET_CHUNK` keys, all in one pipeline (one round trip)."""
    wanted = list(dict.fromkeys(keys))
    if not wanted:
        return {}
    rkeys = [ctx.keys.entry(k) for k in wanted]
    try:
        yield from _check_generations(ctx)
        chunks = [rkeys[i : i + MGET_CHUNK] for i in range(0, len(rkeys), MGET_CHUNK)]
        if len(chunks) == 1:
            raws = yield ("MGET", *chunks[0])
        else:
            replies = yield Batch([("MGET", *chunk) for chunk in chunks])
            raws = [raw for reply in replies for raw in reply]
    except CacheUnavailableError:
        for k in wanted:
            ctx.stats.incr(family_of(k), "fail_open")
        return {}
    found: dict[str, Any] = {}
    bad: list[str] = []
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
                if ctx.fresh(entry, family):
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
    """One script call per key, pipelined :data:`BATCH_CHUNK` at a time."""
    # Encode everything first: one bad value means nothing is written.
    ops = []
    for key, value in mapping.items():
        quad = ctx.keys.quad(key)
        data, px = ctx.encode(key, value, ctx.policy(key, ttl), vtype=vtype)
        script = scripts.SET if data else scripts.INVALIDATE
        ops.append(Eval(script, quad, (data, px, ctx.token()) if data else (ctx.token(),)))
    keys = list(mapping)
    for i in range(0, len(ops), BATCH_CHUNK):
        try:
            yield Batch(ops[i : i + BATCH_CHUNK])
        except CacheUnavailableError:
            for key in keys[i:]:  # what may not have been written is owed a delete
                ctx.stats.incr(family_of(key), "fail_open")
                ctx.remember_failed_write(key)
            return False
    return True


def _invalidate_entries(
    ctx: Context, entries: Sequence[str], batch: int = SCRIPT_CHUNK, tag_key: str = ""
) -> Plan:
    """Invalidate entries given by their Redis keys, ``batch`` per script call, pipelined
    :data:`BATCH_CHUNK` calls at a time; with *tag_key*, each is also taken out of that tag
    set in the same script."""
    ops = []
    for i in range(0, len(entries), batch):
        flat: list[str] = [tag_key] if tag_key else []
        for rkey in entries[i : i + batch]:
            flat += ctx.keys.quad_of(rkey)
        args = (ctx.token(), "tag") if tag_key else (ctx.token(),)
        ops.append(Eval(scripts.INVALIDATE, flat, args))
    if len(ops) == 1:
        return int((yield ops[0]))
    total = 0
    for i in range(0, len(ops), BATCH_CHUNK):
        replies = yield Batch(ops[i : i + BATCH_CHUNK])
        total += sum(int(r) for r in replies)
    return total


def invalidate(ctx: Context, keys: Sequence[str]) -> Plan:
    if not keys:
        return 0
    entries = list(dict.fromkeys(ctx.keys.entry(key) for key in keys))
    try:
        deleted: int = yield from _invalidate_entries(ctx, entries)
    except CacheUnavailableError:
        for key in keys:
            ctx.stats.incr(family_of(key), "fail_open")
            ctx.remember_failed_write(key)
        return 0
    for key in keys:
        ctx.stats.incr(family_of(key), "invalidations")
    return deleted


def bump(ctx: Context, family: str | None) -> Plan:
    """Make every entry of *family* (``None``: of the whole prefix) unreachable in O(1):
    new namespace and fill-epoch tokens (see :mod:`hitrate.generations`)."""
    name = ALL if family is None else family
    token = new_token()
    try:
        yield ("HSET", ctx.keys.generations(), "ns:" + name, token, "ep:" + name, new_token())
    except CacheUnavailableError:
        ctx.stats.incr(name, "fail_open")
        ctx.owed.bump(name)
        return False
    ctx.gens.bumped(name, token)
    ctx.stats.incr(name, "invalidations")
    return True


def owed(ctx: Context, chunk_size: int = 500) -> Plan:
    """Deliver the invalidations owed since Redis was unreachable, a chunk at a time; each
    chunk leaves the queue only once Redis confirmed it (see :mod:`hitrate.owed`). A
    failure is raised: the driver then fails the call that triggered delivery open."""
    queue = ctx.owed
    while True:
        chunk = queue.peek(chunk_size)
        if not chunk:
            return
        if chunk.bumps:
            fields: list[str] = []
            for name in chunk.bumps:
                fields += ["ns:" + name, new_token(), "ep:" + name, new_token()]
            yield ("HSET", ctx.keys.generations(), *fields)
            for name in chunk.bumps:
                ctx.gens.bumped(name, fields[fields.index("ns:" + name) + 1])
        elif chunk.entries:
            yield from _invalidate_entries(ctx, chunk.entries)
        elif chunk.unlink:
            yield Batch([("UNLINK", k) for k in chunk.unlink])
        elif chunk.tags:
            yield from _invalidate_tag(ctx, chunk.tags[0])
        elif chunk.scan is not None:
            family, cursor = chunk.scan
            cursor, found = yield ("SCAN", cursor, "MATCH", ctx.keys.objects(family), "COUNT", 1000)
            if found:
                yield ("UNLINK", *found)
            queue.scanned(family, int(cursor))
            continue
        queue.done(chunk)


def invalidate_pattern(ctx: Context, pattern: str, count: int = 1000) -> Plan:
    """SCAN (never KEYS) for entries under the prefix matching *pattern*, then invalidate
    them in pipelined batches as they are found. First the fill epoch of the pattern's
    family (or of the prefix, when the pattern spans families) changes, so a fill whose
    load began before this call is refused even where SCAN has already passed.
    Fail-open: returns what was deleted so far, and the rest is owed (as a generation bump
    of the family, delivered before the next command); strict mode raises."""
    match = ctx.keys.pattern(pattern)
    family = family_of_pattern(pattern)
    cursor: Any = 0
    seen: set[str] = set()
    deleted = 0
    try:
        yield ("HSET", ctx.keys.generations(), "ep:" + family, new_token())
        while True:
            cursor, found = yield ("SCAN", cursor, "MATCH", match, "COUNT", count)
            entries = []
            for raw in found:
                entry = ctx.keys.entry_of(raw.decode() if isinstance(raw, bytes) else raw)
                if entry is not None and entry not in seen:
                    seen.add(entry)
                    entries.append(entry)
            deleted += yield from _invalidate_entries(ctx, entries)
            if int(cursor) == 0:
                break
    except CacheUnavailableError:
        ctx.stats.incr(family_of(pattern), "fail_open")
        ctx.owed.bump(family)
    ctx.stats.incr(family_of(pattern), "invalidations", len(seen))
    return deleted


def _invalidate_tag(ctx: Context, tag: str) -> Plan:
    tag_key = ctx.keys.tag(tag)
    gen_key = ctx.keys.tag_gen(tag_key)
    gen_ms = 24 * 3600 * 1000
    _, members = yield Batch([("SET", gen_key, ctx.token(), "PX", gen_ms), ("SMEMBERS", tag_key)])
    entries = sorted(m.decode() if isinstance(m, bytes) else m for m in members)
    deleted = yield from _invalidate_entries(ctx, entries, tag_key=tag_key)
    return deleted, len(entries)


def invalidate_tag(ctx: Context, tag: str) -> Plan:
    """Bump the tag's generation (fills whose lease predates this are refused), then
    invalidate every entry the tag names and remove it from the tag set."""
    ctx.keys.tag(tag)  # a bad tag is an error now, not an owed invalidation
    try:
        deleted, count = yield from _invalidate_tag(ctx, tag)
    except CacheUnavailableError:
        ctx.stats.incr("tag", "fail_open")
        ctx.owed.tag(tag)
        return 0
    ctx.stats.incr("tag", "invalidations", count)
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
    return (yield from _load_unfilled(ctx, family))


def _load_down(ctx: Context, rkey: str, family: str, wait: float, unless: Unless = None) -> Plan:
    """Redis is unavailable: load without caching, but one caller per key in this process
    at a time (the others share its value if its load began after they arrived)."""
    ctx.stats.incr(family, "fail_open")
    for _ in range(DOWN_ROUNDS):
        joined = yield Coalesce(rkey, wait)
        if joined is LEAD:
            value = yield from _load_unfilled(ctx, family)
            if unless is None or not unless(value):
                yield Publish(value, loaded=True)
            return value
        if joined is TIMEOUT:
            break
    return (yield from _load_unfilled(ctx, family))


def fresh_value(
    ctx: Context, key: str, family: str, raw: bytes | None, policy: Policy, vtype: Any = None
) -> Any:
    """What a GET reply serves at once: the cached value (a hit, counted), or
    :data:`MISSING` when ``get_or_fetch`` must do more: a miss, undecodable bytes, a stale
    entry, an entry of an older generation, an early refresh that XFetch says is due, or a
    generation view due to be read again. No Redis; the plan below and the drivers' hit
    fast path (``Cache.get_or_fetch``) both decide with it."""
    if raw is None:
        return MISSING
    try:
        entry = decode_entry(ctx.codec, key, raw, vtype)
    except DecodeError:
        return MISSING
    gens = ctx.gens
    if entry.gen != gens.stamp(family) or gens.due():
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


Unless = Callable[[Any], object] | None


def get_or_fetch(
    ctx: Context,
    key: str,
    ttl: TTLLike,
    tags: Sequence[str] = (),
    *,
    checked: bool = False,
    unless: Unless = None,
    vtype: Any = None,
) -> Plan:
    """Cache-aside with leases. ``checked``: the driver already ran :func:`fresh_value` on
    the GET reply it replays (the hit fast path), so the XFetch draw is not made twice
    (unless the generation view had to be read again first). ``unless(value)`` true: the
    loaded value is returned but not cached (nor shared with waiting callers)."""
    rkey = ctx.keys.entry(key)
    family = family_of(key)
    policy = ctx.policy(key, ttl)
    try:
        raw = yield ("GET", rkey)
        if ctx.gens.due():
            yield from generations(ctx)
            checked = False
    except CacheUnavailableError:
        return (yield from _load_down(ctx, rkey, family, policy.lease, unless))
    if not checked:
        value = fresh_value(ctx, key, family, raw, policy, vtype)
        if value is not MISSING:
            return value
    if raw is not None:
        entry: Entry | None = yield from _decode(ctx, key, rkey, raw, family, vtype)
        if (
            entry is not None
            and entry.gen == ctx.gens.stamp(family)
            and ctx.clock() < entry.expires_at + policy.stale
        ):
            # Still fresh but XFetch says refresh early, or inside the stale window.
            return (
                yield from _refresh(ctx, key, rkey, family, policy, tags, raw, entry, unless, vtype)
            )
    ctx.stats.miss(family)
    joined = yield Coalesce(rkey, policy.lease)
    if joined is TIMEOUT:
        # Another caller here loaded for longer than the lease time: load without filling.
        return (yield from _load_unfilled(ctx, family))
    seen = raw[4:12] if raw is not None else b""  # an entry that is there but not fresh
    return (yield from _fill(ctx, key, rkey, family, policy, tags, seen, unless, vtype))


def _refresh(
    ctx: Context,
    key: str,
    rkey: str,
    family: str,
    policy: Policy,
    tags: Sequence[str],
    raw: bytes,
    old: Entry,
    unless: Unless = None,
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
        reply = yield from _take_lease(ctx, rkey, family, tags, token, policy, raw[4:12])
    except CacheUnavailableError:
        return old.value
    if reply[0] == 1:  # refreshed meanwhile by another caller: serve the new value
        entry = yield from _decode(ctx, key, rkey, reply[1], family, vtype)
        return old.value if entry is None or not ctx.fresh(entry, family) else entry.value
    if reply[0] == 2:
        fill = _load_and_fill(ctx, key, rkey, family, policy, tags, token, reply, unless, vtype)
        if not (yield Spawn(fill, rkey)):
            # This process already refreshes the key, or its refresh queue is full.
            fill.close()
            with contextlib.suppress(CacheUnavailableError):
                yield _release(ctx, rkey, token)
    return old.value


def _release(ctx: Context, rkey: str, token: str, text: str = "") -> Eval:
    """release.lua: give the lease back (if still ours), with the loader's error text."""
    return Eval(
        scripts.RELEASE,
        [ctx.keys.lease(rkey), ctx.keys.error(rkey)],
        (token, text, ERROR_TEXT_MS if text else 0),
    )


def _take_lease(
    ctx: Context,
    rkey: str,
    family: str,
    tags: Sequence[str],
    token: str,
    policy: Policy,
    seen: bytes,
) -> Plan:
    """lease.lua: *seen* is the expiry field of the entry being refreshed, b"" on a miss.
    Interrupted (cancelled, KeyboardInterrupt) while the script may have granted the
    lease, it gives the lease back before passing the interruption on."""
    gens = [ctx.keys.tag_gen(ctx.keys.tag(t)) for t in tags]
    op = Eval(
        scripts.LEASE,
        [rkey, ctx.keys.lease(rkey), ctx.keys.writes(rkey), ctx.keys.generations(), *gens],
        (token, math.ceil(policy.lease * 1000), seen, family),
    )
    try:
        reply = yield op
    except CacheUnavailableError:
        raise
    except BaseException as exc:
        if interrupted(exc):
            with contextlib.suppress(CacheUnavailableError):
                yield _release(ctx, rkey, token)
        raise
    ctx.gens.saw(family, reply[5], reply[6])
    return reply


def _fill(
    ctx: Context,
    key: str,
    rkey: str,
    family: str,
    policy: Policy,
    tags: Sequence[str],
    seen: bytes = b"",
    unless: Unless = None,
    vtype: Any = None,
) -> Plan:
    """Miss: take the lease and load, or wait (bounded) for the caller that holds it.
    *seen*: the expiry field of an entry Redis holds that is not fresh for us (logically
    expired, or of an older generation): the lease is taken despite it."""
    lease_key = ctx.keys.lease(rkey)
    err_key = ctx.keys.error(rkey)
    token = ctx.token()
    deadline: float | None = None
    delay = 0.002
    while True:
        try:
            reply = yield from _take_lease(ctx, rkey, family, tags, token, policy, seen)
        except CacheUnavailableError:
            return (yield from _load_only(ctx, family))
        status = reply[0]
        if status == 2:
            return (
                yield from _load_and_fill(
                    ctx, key, rkey, family, policy, tags, token, reply, unless, vtype
                )
            )
        if status == 1:
            entry = yield from _decode(ctx, key, rkey, reply[1], family, vtype)
            if entry is not None:
                if ctx.fresh(entry, family):
                    yield Publish(entry.value)
                    return entry.value
                seen = reply[1][4:12]  # not fresh for us: take the lease despite it
            continue
        # Another caller is loading (3), or a write-through of the key is in flight (4):
        # wait for its fill, polling with backoff.
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
                if entry is not None and ctx.fresh(entry, family):
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
    lease_reply: Sequence[Any],
    unless: Unless = None,
    vtype: Any = None,
) -> Plan:
    """Holding the lease: load, then fill only if nothing invalidated the key meanwhile.
    However the load ends (an error, a cancellation, KeyboardInterrupt), the lease is given
    back before the exception goes on, so waiters need not wait out the lease time."""
    t0 = ctx.monotonic()
    try:
        value = yield CALL
        load_time = ctx.monotonic() - t0
        ctx.stats.load(family, load_time)
        gen = ctx.gens.saw(family, lease_reply[5], lease_reply[6])
        skip = unless is not None and bool(unless(value))
        data, px = (b"", 0) if skip else ctx.encode(key, value, policy, load_time, gen, vtype)
    except BaseException as exc:
        if interrupted(exc):
            # A failed loader tells waiters in other processes why; an interrupted one
            # just gives the lease back: waiters load for themselves.
            text = f"{type(exc).__name__}: {exc}" if isinstance(exc, Exception) else ""
            with contextlib.suppress(CacheUnavailableError):
                yield _release(ctx, rkey, token, text)
        raise
    try:
        if not data:  # a None we don't cache, or unless= said no: give the lease back
            released = yield _release(ctx, rkey, token)
            if released and not skip:  # still ours: nothing revoked it while we loaded
                yield Publish(value)
            return value
        tag_keys = [ctx.keys.tag(t) for t in tags]
        gen_keys = [ctx.keys.tag_gen(t) for t in tag_keys]
        filled = yield Eval(
            scripts.FILL,
            [rkey, ctx.keys.lease(rkey), ctx.keys.generations(), *tag_keys, *gen_keys],
            (
                token,
                data,
                px,
                len(tags),
                family,
                lease_reply[3],
                lease_reply[4],
                *lease_reply[7:],
                TAG_PRUNE,
            ),
        )
    except CacheUnavailableError:
        ctx.stats.incr(family, "fail_open")
        return value
    except BaseException as exc:
        if interrupted(exc):  # the fill may not have run: the lease goes back if still ours
            with contextlib.suppress(CacheUnavailableError):
                yield _release(ctx, rkey, token)
        raise
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

    While the save runs, no reader may take a fill lease for the key (it would cache the
    row as it was before the save). However the write ends - the save failing, the call
    being cancelled or interrupted even after the save committed - the write window is
    closed and the entry deleted unless the write completed, so no old row stays cached.

    If the save returns something other than ``None`` (the stored row, with the version or
    timestamps the database gave it), that is what gets cached. With ``version`` (a function
    of the cached value giving a number that grows with every write of the row), overlapping
    writes are settled by comparing versions in Lua instead of deleting, and an older write
    never deletes a newer cached row.
    """
    quad = ctx.keys.quad(key)
    lease_key, writes_key = quad[1], quad[2]
    family = family_of(key)
    policy = ctx.policy(key, ttl)
    ctx.encode(key, value, policy, vtype=vtype)  # refuse an unencodable value before saving
    token = ctx.token()
    began = True
    abandon = Eval(scripts.WRITE_END, quad, (token, "1", b"", 0, ctx.token(), ""))
    try:
        in_flight = yield Eval(
            scripts.WRITE_BEGIN,
            [lease_key, writes_key],
            (token, math.ceil(ctx.write_window * 1000)),
        )
    except CacheUnavailableError:
        began, in_flight = False, 0
    except BaseException as exc:
        if interrupted(exc):  # the begin may have run: close the window it may have opened
            try:
                yield abandon
            except CacheUnavailableError:
                ctx.remember_failed_write(key)
        raise
    try:
        saved = yield CALL
        if saved is not None:
            value = saved
        data, px = ctx.encode(key, value, policy, vtype=vtype)
        row_version = "" if version is None else _version_text(key, version(value))
    except BaseException as exc:
        # The save failed, was interrupted (it may have committed), or what it returned
        # cannot be cached: forget the entry and close our write window.
        if interrupted(exc):
            try:
                yield abandon if began else Eval(scripts.INVALIDATE, quad, (ctx.token(),))
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
    except BaseException as exc:
        if interrupted(exc):  # the end may not have run: make sure the window closes
            try:
                yield abandon if began else Eval(scripts.INVALIDATE, quad, (ctx.token(),))
            except CacheUnavailableError:
                ctx.remember_failed_write(key)
        raise
    return value


def _version_text(key: str, number: Any) -> str:
    if isinstance(number, bool) or not isinstance(number, int | float) or math.isnan(number):
        raise TypeError(
            f"version= for key {key!r} must give a number that grows with each write of the "
            f"row (an int version column, a timestamp); got {number!r}"
        )
    return repr(number)
