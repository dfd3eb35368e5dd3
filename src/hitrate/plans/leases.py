"""Cache-aside with leases: one plan for every kind of cached value.

A miss takes a short lease (``SET NX PX`` in Lua) before it loads; its fill is written only
if the lease is still its own, so a value loaded before an invalidation or a write is never
cached. Callers that find the lease held wait (bounded by the lease time) for the fill,
polling with backoff, and see the holder's loader error if it failed. However a load ends -
a value, an error, a cancellation - the lease is given back.

That protocol is written once, in :func:`lease_and_fill` and :func:`load_and_fill`. What
differs between a cache entry (one string, ``lease.lua`` / ``fill.lua``) and a cached object
(a hash, ``obj_lease.lua`` / ``obj_fill.lua``) is only where the value lives and how it is
read and written: a :class:`Store`.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from .. import scripts
from ..codec import DecodeError, Entry, decode_entry
from ..codec.entry import MAX_TAGS, plain_entry
from ..errors import (
    CacheUnavailableError,
    CircuitOpenError,
    ConfigurationError,
    LoaderError,
    ValueTooLargeError,
)
from ..generations import new_token
from ..keys import KeySpace, family_of, tags_of
from ..ops import CALL, LEAD, TIMEOUT, Batch, Coalesce, Eval, Plan, Publish, Sleep, Spawn
from ..owed import OwedDeliveryInProgress
from ..policy import Policy, TTLLike
from .context import (
    DOWN_ROUNDS,
    ERROR_TEXT_MS,
    MISSING,
    TAG_PRUNE,
    Context,
    _decode,
    generations,
    interrupted,
)
from .tags import Versions, covers, current, version_keys, versions

__all__ = ["EntryStore", "Store", "fresh_value", "get_or_fetch", "lease_and_fill", "load_down"]

Unless = Callable[[Any], object] | None
log = logging.getLogger("hitrate")


class Store(Protocol):
    """Where one cached value lives, for the lease plan."""

    @property
    def family(self) -> str: ...

    @property
    def rkey(self) -> str:
        """The Redis key holding the value (its lease and error keys hang off it)."""

    @property
    def label(self) -> str:
        """How errors name it: the user's key (``user:42``)."""

    def lease(self, token: str, seen: bytes) -> Eval:
        """Read the value, or take the lease: reply ``[status, value, holder, ...]`` with
        status 1 (value there), 2 (lease granted), 3 (held by *holder*), 4 (a write in
        flight). *seen*: a value not fresh for us, to take the lease despite."""

    def leased(self, reply: Sequence[Any]) -> None:
        """Note what a lease reply says beyond its status (generations)."""

    def poll(self) -> Any:
        """One round trip whose reply is ``(value, lease holder, error text)``."""

    def read(self, raw: Any) -> Plan:
        """``(value, seen)``: the value if there and fresh, else :data:`MISSING` and what
        to pass as *seen* to :meth:`lease` (``b""`` for nothing)."""

    def fill(
        self, token: str, value: Any, load_time: float, reply: Sequence[Any]
    ) -> tuple[Eval | None, Any]:
        """The fill script for a loaded *value* (``None``: nothing to store, give the lease
        back) and what the caller gets: raises before anything is written when the value
        cannot be stored."""

    def served(self, value: Any) -> Any:
        """What a caller gets for a value loaded without filling."""


def release(rkey: str, token: str, text: str = "") -> Eval:
    """release.lua: give the lease on *rkey* back (if still ours), with the loader's error
    text for waiters in other processes (``""``: none)."""
    return Eval(
        scripts.RELEASE,
        [rkey + ":lease", rkey + ":err", KeySpace.waiting(rkey)],
        (token, text, ERROR_TEXT_MS if text else 0, KeySpace.wake_channel(rkey), rkey),
    )


def _maybe_ran(exc: CacheUnavailableError) -> bool:
    """Could the command that failed with *exc* have run (its reply lost)? Not when it
    was never sent (breaker open, owed work being delivered) or Redis refused it."""
    return not exc.refused and not isinstance(exc, CircuitOpenError | OwedDeliveryInProgress)


def give_back(ctx: Context, rkey: str, token: str, text: str = "") -> Plan:
    """Release the lease; if that cannot reach Redis (or is itself interrupted), the
    release is owed (see :mod:`hitrate.owed`), so no caller elsewhere waits out the lease
    time for a fill that will never come. Returns whether it was still ours (None: owed)."""
    try:
        return (yield release(rkey, token, text))
    except BaseException as exc:
        ctx.owed.lease(rkey, token)
        if isinstance(exc, CacheUnavailableError):
            return None
        raise


def _too_large(ctx: Context, store: Store, exc: ValueTooLargeError) -> None:
    """Counted every time; logged once per family and cache."""
    ctx.stats.incr(store.family, "fail_open")
    told = ctx.warned.setdefault("too_large", set())
    if store.family not in told and len(told) < 1024:
        told.add(store.family)
        log.warning("hitrate: served without caching: %s", exc)


def take_lease(ctx: Context, store: Store, token: str, seen: bytes) -> Plan:
    """The store's lease script. Failed or interrupted (cancelled, KeyboardInterrupt) while
    the script may have granted the lease, it gives the lease back (or owes that) before
    passing the exception on."""
    try:
        reply = yield store.lease(token, seen)
    except CacheUnavailableError as exc:
        if _maybe_ran(exc):
            ctx.owed.lease(store.rkey, token)  # the reply may be what was lost
        raise
    except BaseException as exc:
        if interrupted(exc):
            yield from give_back(ctx, store.rkey, token)
        raise
    store.leased(reply)
    return reply


def load_unfilled(ctx: Context, store: Store) -> Plan:
    """Load, don't fill (waited past the lease time, or Redis failed mid-way)."""
    t0 = ctx.monotonic()
    value = yield CALL
    ctx.stats.load(store.family, ctx.monotonic() - t0)
    return store.served(value)


def load_only(ctx: Context, store: Store) -> Plan:
    """Redis is unavailable: serve the loader's value, cache nothing."""
    ctx.stats.incr(store.family, "fail_open")
    return (yield from load_unfilled(ctx, store))


def load_down(ctx: Context, store: Store, wait: float, unless: Unless = None) -> Plan:
    """Redis is unavailable: load without caching, one caller per key in this process at a
    time; the others share its value."""
    ctx.stats.incr(store.family, "fail_open")
    for _ in range(DOWN_ROUNDS):
        joined = yield Coalesce(store.rkey, wait)
        if joined is LEAD:
            value = yield from load_unfilled(ctx, store)
            if unless is None or not unless(value):
                yield Publish(value, loaded=True)
            return value
        if joined is TIMEOUT:
            break
    return (yield from load_unfilled(ctx, store))


def lease_and_fill(
    ctx: Context,
    store: Store,
    policy: Policy,
    seen_raw: Any = None,
    unless: Unless = None,
    *,
    leased: tuple[str, Sequence[Any]] | None = None,
) -> Plan:
    """Miss: take the lease and load, or wait (bounded) for the caller that holds it.
    *seen_raw*: a value Redis holds that was not fresh for us (logically expired, or of
    another generation as far as this process knew): the lease is taken despite it - and
    if the lease reply shows our view of the generations was behind and the value is
    fresh after all, it is served and the lease given back, instead of loading again.
    *leased*: ``(token, reply)`` of a lease script the caller already ran (status 2, 3
    or 4: the lease-first miss of :func:`get_or_fetch`)."""
    family = store.family
    token = ctx.token() if leased is None else leased[0]
    deadline: float | None = None
    delay = 0.002
    seen = b""
    if seen_raw is not None:
        _, seen = yield from store.read(seen_raw)
    while True:
        if leased is not None:
            reply, leased = leased[1], None
        else:
            try:
                reply = yield from take_lease(ctx, store, token, seen)
            except CacheUnavailableError:
                return (yield from load_only(ctx, store))
        status = reply[0]
        if status == 2:
            if seen_raw is not None:  # the lease reply updated our view: look again
                value, _ = yield from store.read(seen_raw)
                if value is not MISSING:
                    # Served to this caller, whose read came first; not published: an
                    # invalidation may have deleted it since, before others arrived.
                    yield from give_back(ctx, store.rkey, token)
                    return value
            return (yield from load_and_fill(ctx, store, policy, token, reply, unless))
        if status == 1:
            value, seen = yield from store.read(reply[1])
            if value is not MISSING:
                yield Publish(value)
                return value
            if not seen:  # not an entry we can read (another app version's, or garbage):
                return (yield from load_unfilled(ctx, store))  # asking again would loop
            seen_raw = reply[1]
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
                return (yield from load_unfilled(ctx, store))
            yield Sleep(min(delay, max(0.0, deadline - ctx.monotonic())), store.rkey)
            delay = min(delay * 2, 0.05)
            try:
                raw, now_holder, err = yield store.poll()
            except CacheUnavailableError:
                return (yield from load_only(ctx, store))
            if raw:
                value, _ = yield from store.read(raw)
                if value is not MISSING:
                    yield Publish(value)
                    return value
            if err is not None and holder and err.startswith(holder + b"\n"):
                message = err[len(holder) + 1 :].decode(errors="replace")
                raise LoaderError(
                    f"the loader for {store.label!r} failed in the caller that held its "
                    f"lease: {message}"
                )
            if now_holder is None:
                break  # released or revoked without a fill: try for the lease ourselves
            holder = now_holder


def load_and_fill(
    ctx: Context,
    store: Store,
    policy: Policy,
    token: str,
    reply: Sequence[Any],
    unless: Unless = None,
) -> Plan:
    """Holding the lease: load, then fill only if nothing invalidated the key meanwhile.
    However the load ends (an error, a cancellation, KeyboardInterrupt), the lease is given
    back before the exception goes on, so waiters need not wait out the lease time."""
    family, rkey = store.family, store.rkey
    t0 = ctx.monotonic()
    try:
        value = yield CALL
        load_time = ctx.monotonic() - t0
        ctx.stats.load(family, load_time)
        skip = unless is not None and bool(unless(value))
        if skip:
            op, result = None, store.served(value)
        else:
            try:
                op, result = store.fill(token, value, load_time, reply)
            except ValueTooLargeError as exc:
                # Fail open: the caller gets what it loaded; only the cache goes without.
                _too_large(ctx, store, exc)
                op, result = None, store.served(value)
    except BaseException as exc:
        if interrupted(exc):
            # A failed loader tells waiters in other processes why; an interrupted one
            # just gives the lease back: waiters load for themselves.
            text = f"{type(exc).__name__}: {exc}" if isinstance(exc, Exception) else ""
            yield from give_back(ctx, rkey, token, text)
        raise
    try:
        if op is None:  # nothing to store, or unless= said no: give the lease back
            released = yield release(rkey, token)
            if released and not skip:  # still ours: nothing revoked it while we loaded
                yield Publish(result)
            return result
        filled = yield op
    except CacheUnavailableError as exc:
        ctx.stats.incr(family, "fail_open")
        if not exc.refused:  # the fill may not have run: the lease is owed back
            ctx.owed.lease(rkey, token)
        return result
    except BaseException as exc:
        if interrupted(exc):  # the fill may not have run: the lease goes back if still ours
            yield from give_back(ctx, rkey, token)
        raise
    if filled:
        # Filled under a lease nothing revoked: no write completed since our load began.
        ctx.stats.incr(family, "fills")
        yield Publish(result)
    else:
        ctx.stats.incr(family, "fills_refused")
    return result


# -- cache entries ---------------------------------------------------------------------------


class EntryStore:
    """A cache entry: one Redis string (``lease.lua``, ``fill.lua``), with tags, fill
    epochs and namespace generations."""

    __slots__ = ("ctx", "family", "key", "known", "policy", "rkey", "tags", "vtype")

    @property
    def label(self) -> str:
        return self.key

    def __init__(
        self,
        ctx: Context,
        key: str,
        rkey: str,
        family: str,
        policy: Policy,
        tags: Sequence[str],
        vtype: Any = None,
    ) -> None:
        self.ctx, self.key, self.rkey, self.family = ctx, key, rkey, family
        if len(tags) > MAX_TAGS:  # refused before any lease is taken or loader called
            raise ConfigurationError(
                f"key {key!r} has {len(tags)} tags; an entry can carry at most {MAX_TAGS} "
                "(tag the group, not each member)"
            )
        self.policy, self.tags, self.vtype = policy, tags, vtype
        # Tag versions read at or after every entry read so far, so valid to judge them
        # (from a lease reply, which reads both at once); None after a poll.
        self.known: Versions | None = None

    def lease(self, token: str, seen: bytes) -> Eval:
        keys = self.ctx.keys
        return Eval(
            scripts.LEASE,
            [
                self.rkey,
                keys.lease(self.rkey),
                keys.writes(self.rkey),
                keys.generations(),
                *version_keys(self.ctx, self.tags),
            ],
            (token, math.ceil(self.policy.lease * 1000), seen, self.family, new_token()),
        )

    def leased(self, reply: Sequence[Any]) -> None:
        self.ctx.gens.saw(self.family, reply[5], reply[6], reply[7])
        self.known = dict(zip(self.tags, reply[8:], strict=False))

    def poll(self) -> Any:
        self.known = None  # the entry polled may be newer than the versions we know
        rkey, keys = self.rkey, self.ctx.keys
        marked = math.ceil(self.policy.lease * 1000)  # the fill then wakes us (poll.lua)
        return Eval(
            scripts.POLL, [rkey, keys.lease(rkey), keys.error(rkey), keys.waiting(rkey)], (marked,)
        )

    def read(self, raw: Any) -> Plan:
        ctx = self.ctx
        entry = yield from _decode(ctx, self.key, self.rkey, raw, self.family, self.vtype)
        if entry is None:
            return MISSING, b""
        if ctx.fresh(entry, self.family):
            if not entry.tags:
                return entry.value, b""
            self.known = yield from versions(ctx, (t for t, _ in entry.tags), self.known)
            if current(entry, self.known):
                return entry.value, b""
        return MISSING, raw  # there but not fresh for us: take the lease despite it

    def fill(
        self, token: str, value: Any, load_time: float, reply: Sequence[Any]
    ) -> tuple[Eval | None, Any]:
        ctx, keys = self.ctx, self.ctx.keys
        gen = ctx.gens.saw(self.family, reply[5], reply[6], reply[7])
        tags = tuple(zip(self.tags, reply[8:], strict=False))  # each with its version
        data, px = ctx.encode(self.key, value, self.policy, load_time, gen, self.vtype, tags)
        if not data:  # a None this policy does not cache
            return None, value
        tag_keys = [keys.tag(t) for t in self.tags]
        op = Eval(
            scripts.FILL,
            [
                self.rkey,
                keys.lease(self.rkey),
                keys.generations(),
                *tag_keys,
                *version_keys(ctx, self.tags),
                keys.waiting(self.rkey),
            ],
            (
                token,
                data,
                px,
                len(self.tags),
                self.family,
                reply[3],
                reply[4],
                reply[7],
                *reply[8:],
                TAG_PRUNE,
                keys.wake_channel(self.rkey),
            ),
        )
        return op, value

    def served(self, value: Any) -> Any:
        return value


def _xfetch(
    now: float, expires_at: float, load_time: float, beta: float, rng: random.Random
) -> bool:
    """XFetch (Vattani et al., VLDB 2015): refresh early with a probability that rises as
    expiry nears, scaled by how long the last load took."""
    return now - load_time * beta * math.log(1.0 - rng.random()) >= expires_at


def fresh_value(
    ctx: Context,
    key: str,
    family: str,
    raw: bytes | None,
    policy: Policy,
    vtype: Any = None,
    known: Versions | None = None,
) -> Any:
    """What a GET reply serves at once: the cached value (a hit, counted), or
    :data:`MISSING` when ``get_or_fetch`` must do more: a miss, undecodable bytes, a stale
    entry, an entry of an older generation, a tagged entry whose tag versions are not
    *known* (read with or after it) or not current, an early refresh that XFetch says is
    due, or a generation view due to be read again. No Redis; the plan below and the
    drivers' hit fast path (``Cache.get_or_fetch``) both decide with it."""
    if raw is None:
        return MISSING
    codec = ctx.codec
    plain = vtype is None and getattr(codec, "unseal", None) is None
    fast = plain_entry(codec, key, raw) if plain else None
    if fast is not None:  # the common entry, without building an Entry
        value, expires_at, load_time, gen = fast
        entry = None
    else:
        try:
            entry = decode_entry(codec, key, raw, vtype)
        except DecodeError:
            return MISSING
        if entry.tags and not (covers(known, entry) and current(entry, known or {})):
            return MISSING
        value, expires_at, load_time, gen = (
            entry.value,
            entry.expires_at,
            entry.load_time,
            entry.gen,
        )
    gens = ctx.gens
    if gen != gens.stamp(family) or gens.due():
        return MISSING
    if expires_at:
        now = ctx.clock()
        if now >= expires_at or (
            policy.early and _xfetch(now, expires_at, load_time, policy.early, ctx.rng)
        ):
            return MISSING
    ctx.stats.hit(family)
    if value is None:
        ctx.stats.incr(family, "negative_hits")
    if ctx.near is not None:  # the near cache may keep it (hitrate.near)
        if entry is None:
            entry = Entry(value, expires_at, load_time, gen)
        ctx.near.offer(key, entry, raw)
    return value


def get_or_fetch(
    ctx: Context,
    key: str,
    ttl: TTLLike,
    tags: Sequence[str] = (),
    *,
    checked: bool = False,
    unless: Unless = None,
    vtype: Any = None,
    leasing: bool = False,
) -> Plan:
    """Cache-aside with leases. ``checked``: the driver already ran :func:`fresh_value` on
    the GET reply it replays (the hit fast path), so the XFetch draw is not made twice
    (unless the generation view had to be read again first). ``unless(value)`` true: the
    loaded value is returned but not cached (nor shared with waiting callers).
    ``leasing``: a miss is likely (see :meth:`Context.likely_miss`), so the first command
    is the lease script, which returns the entry when there is one: a miss then costs two
    round trips (lease, fill), like GET + SET, instead of three."""
    rkey = ctx.keys.entry(key)
    family = family_of(key)
    policy = ctx.policy(key, ttl)
    tags = tags_of(tags)
    store = EntryStore(ctx, key, rkey, family, policy, tags, vtype)
    if leasing:
        return (yield from _lease_first(ctx, store, policy, unless))
    try:
        if tags:  # the entry and its tags' versions in one round trip, in that order
            raw, found = yield Batch([("GET", rkey), ("MGET", *version_keys(ctx, tags))])
            store.known = dict(zip(tags, found, strict=True))
        else:
            raw = yield ("GET", rkey)
        if ctx.gens.due():
            yield from generations(ctx)
            checked = False
    except CacheUnavailableError:
        return (yield from load_down(ctx, store, policy.lease, unless))
    if not checked:
        value = fresh_value(ctx, key, family, raw, policy, vtype, store.known)
        if value is not MISSING:
            return value
    if raw is not None:
        try:
            value = yield from _not_fresh(ctx, store, raw, checked, unless)
        except CacheUnavailableError:
            return (yield from load_down(ctx, store, policy.lease, unless))
        if value is not MISSING:
            return value
    ctx.missed(family)
    joined = yield Coalesce(rkey, policy.lease)
    if joined is TIMEOUT:
        # Another caller here loaded for longer than the lease time: load without filling.
        return (yield from load_unfilled(ctx, store))
    # raw: an entry that is there but not fresh for us (the lease is taken despite it)
    return (yield from lease_and_fill(ctx, store, policy, raw, unless))


def _not_fresh(ctx: Context, store: EntryStore, raw: bytes, checked: bool, unless: Unless) -> Plan:
    """An entry is there that :func:`fresh_value` did not serve. A tagged entry whose tag
    versions were not known with it is judged again once they are; an entry still fresh
    for which XFetch says refresh early, or inside its stale window, is served while one
    caller refreshes it. Otherwise :data:`MISSING`: load."""
    key, family, policy = store.key, store.family, store.policy
    entry: Entry | None = yield from _decode(ctx, key, store.rkey, raw, family, store.vtype)
    if entry is None:
        return MISSING
    if entry.tags:
        judged = not checked and covers(store.known, entry)
        store.known = yield from versions(ctx, (t for t, _ in entry.tags), store.known)
        if not current(entry, store.known):
            return MISSING  # a tag was invalidated since its load
        if not judged:
            value = fresh_value(ctx, key, family, raw, policy, store.vtype, store.known)
            if value is not MISSING:
                return value
    if entry.gen == ctx.gens.stamp(family) and ctx.clock() < entry.expires_at + policy.stale:
        return (yield from _refresh(ctx, store, raw, entry, unless))
    return MISSING


def _lease_first(ctx: Context, store: EntryStore, policy: Policy, unless: Unless) -> Plan:
    """:func:`get_or_fetch` when a miss is likely: one caller per key in this process runs
    the lease script straight away; it serves the entry it returns (a hit), or loads and
    fills under the lease it grants (a miss in two round trips), or waits for the holder."""
    family = store.family
    try:
        if ctx.gens.due():
            yield from generations(ctx)
    except CacheUnavailableError:
        return (yield from load_down(ctx, store, policy.lease, unless))
    joined = yield Coalesce(store.rkey, policy.lease)
    if joined is TIMEOUT:
        ctx.missed(family)
        return (yield from load_unfilled(ctx, store))
    token = ctx.token()
    try:
        reply = yield from take_lease(ctx, store, token, b"")
    except CacheUnavailableError:  # loaded once here; callers that joined share it
        value = yield from load_only(ctx, store)
        if unless is None or not unless(value):
            yield Publish(value, loaded=True)
        return value
    if reply[0] != 1:
        ctx.missed(family)
        return (yield from lease_and_fill(ctx, store, policy, None, unless, leased=(token, reply)))
    raw = reply[1]
    value = fresh_value(ctx, store.key, family, raw, policy, store.vtype, store.known)
    if value is MISSING:
        try:
            value = yield from _not_fresh(ctx, store, raw, False, unless)
        except CacheUnavailableError:
            return (yield from load_only(ctx, store))
    if value is not MISSING:
        ctx.served(family)
        yield Publish(value)
        return value
    ctx.missed(family)
    return (yield from lease_and_fill(ctx, store, policy, raw, unless))


def _refresh(ctx: Context, store: EntryStore, raw: bytes, old: Entry, unless: Unless) -> Plan:
    """The entry is stale (or XFetch says refresh early). Every caller is served the old
    value at once; the one that gets the lease also starts a background load and fill, so
    no caller waits for the loader (a worker thread in sync code, a task in asyncio)."""
    family = store.family
    ctx.stats.hit(family)
    if old.expires_at <= ctx.clock():
        ctx.stats.incr(family, "stale_hits")
    token = ctx.token()
    try:
        reply = yield from take_lease(ctx, store, token, raw)
    except CacheUnavailableError:
        return old.value
    if reply[0] == 1:  # refreshed meanwhile by another caller: serve the new value
        value, _ = yield from store.read(reply[1])
        return old.value if value is MISSING else value
    if reply[0] == 2:
        fill = load_and_fill(ctx, store, store.policy, token, reply, unless)
        if not (yield Spawn(fill, store.rkey)):
            # This process already refreshes the key, or its refresh queue is full.
            fill.close()
            yield from give_back(ctx, store.rkey, token)
    return old.value
