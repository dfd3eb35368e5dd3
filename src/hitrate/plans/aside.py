"""Cache-aside for cache entries: the hit decision (:func:`fresh_value`), the plan
(:func:`get_or_fetch`: GET first, or the lease script first while a family has been
missing), serve-stale and XFetch early refresh, and :class:`EntryStore` - a cache entry
as the lease protocol of :mod:`.leases` sees it (one string, ``lease.lua``/``fill.lua``,
with tag versions and namespace generations).
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Sequence
from typing import Any

from .. import scripts
from ..codec import DecodeError, Entry, decode_entry
from ..codec.entry import MAX_TAGS, plain_entry
from ..errors import CacheUnavailableError, ConfigurationError
from ..generations import new_token
from ..keys import family_of, tags_of
from ..ops import TIMEOUT, Batch, Coalesce, Eval, Plan, Publish, Spawn
from ..policy import Policy, TTLLike
from .context import (
    CLUSTER_PRUNE,
    CLUSTER_PRUNE_EVERY,
    MISSING,
    TAG_PRUNE,
    Context,
    _decode,
    generations,
)
from .leases import (
    Unless,
    give_back,
    lease_and_fill,
    load_and_fill,
    load_down,
    load_only,
    load_unfilled,
    take_lease,
)
from .tags import Versions, covers, current, version_keys, versions

__all__ = ["EntryStore", "fresh_value", "get_or_fetch", "prepare_many", "settle"]


class EntryStore:
    """A cache entry: one Redis string (``lease.lua``, ``fill.lua``), with tags, fill
    epochs and namespace generations."""

    __slots__ = ("ctx", "family", "key", "known", "policy", "rkey", "tags", "vtype", "written")

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
        #: Redis Cluster: (SHA1 of the entry bytes, expiry ms, lease reply) of the last fill,
        #: for :func:`settle`.
        self.written: tuple[str, int, Sequence[Any]] = ("", 0, ())

    def prepare(self) -> Plan:
        """On Redis Cluster, what ``lease.lua`` reads on one server: the generations view
        (read again when due) and the versions of this fill's tags (one made for a tag that
        has none), which live in other slots; they are then passed to the script."""
        if self.ctx.cluster:
            yield from prepare_many(self.ctx, [self])

    def lease(self, token: str, seen: bytes) -> Eval:
        keys = self.ctx.keys
        if self.ctx.cluster:
            return Eval(
                scripts.LEASE,
                [self.rkey, keys.lease(self.rkey), keys.writes(self.rkey)],
                (
                    token,
                    math.ceil(self.policy.lease * 1000),
                    seen,
                    self.family,
                    "",
                    *self.ctx.gens.fields(self.family),
                    *((self.known or {}).get(t) or b"" for t in self.tags),
                ),
            )
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
        if ctx.cluster:  # checked after it is written: see settle()
            self.written = (hashlib.sha1(data).hexdigest(), px, reply)
            rkey = self.rkey
            wake = keys.wake_channel(rkey)
            return Eval(
                scripts.FILL_SLOT,
                [rkey, keys.lease(rkey), keys.waiting(rkey)],
                (token, data, px, wake),
            ), value
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

    def filled(self, reply: Any) -> Plan:
        """Was the fill written, and does it stand? On Redis Cluster it is checked now
        (see :func:`settle`)."""
        if reply and self.ctx.cluster:
            return (yield from settle(self.ctx, [self]))[0]
        return bool(reply)

    def served(self, value: Any) -> Any:
        return value


def prepare_many(ctx: Context, stores: Sequence[EntryStore]) -> Plan:
    """Redis Cluster, before lease scripts: the generations view read again when due, and
    the current version of every tag the fills will carry (one is made for a tag that has
    none, as lease.lua does on one server), in one round trip."""
    if ctx.gens.due():
        yield from generations(ctx)
    tags = list(dict.fromkeys(t for s in stores for t in s.tags))
    if not tags:
        return
    ms = math.ceil(max(s.policy.lease for s in stores) * 1000) + 60_000
    token = new_token()
    keys = version_keys(ctx, tags)
    replies = yield Batch(
        [Eval(scripts.TAG_VERSION, [k], (f"{token}.{i}", ms)) for i, k in enumerate(keys)]
    )
    known = dict(zip(tags, replies, strict=True))
    for store in stores:
        store.known = {t: known[t] for t in store.tags}


def settle(ctx: Context, stores: Sequence[EntryStore]) -> Plan:
    """Redis Cluster, after fills that were written: what fill.lua checks on one server
    before it writes - that no pattern invalidation or bump changed a fill epoch, and no
    tag was invalidated, since the lease was granted - checked now (the generations hash
    and the tags live in other slots), with the entry added to its tags' member sets. An
    entry that fails the check is taken back (unfill.lua: only if it is still the one we
    wrote). Returns, per store, whether its fill stands and is still there - read in the
    same round trip (held.lua), as the fill script's reply says on one server: the value
    is then shared with callers of this process that arrived before this check, which a
    completed invalidation or write would have made unsafe.

    Exact for the same reason as on one server: an invalidation that began before the
    fill was written changed the epoch (or version) first, so this read sees it; one that
    began after deletes the entry itself. If the check cannot reach Redis, the entries
    are owed an invalidation (delivered when it is back)."""
    keys = ctx.keys
    families = list(dict.fromkeys(s.family for s in stores))
    ops: list[Any] = [_epochs(keys, ("ep:*", "id", *("ep:" + f for f in families)))]
    tagged: list[tuple[int, int]] = []  # per store: where its tag_add replies are
    prune = CLUSTER_PRUNE if ctx.rng.random() < 1 / CLUSTER_PRUNE_EVERY else 0
    for store in stores:
        _, px, reply = store.written
        start = len(ops)
        for tag, version in zip(store.tags, reply[8:], strict=False):
            tag_key = keys.tag(tag)
            ops.append(
                Eval(
                    scripts.TAG_ADD,
                    [tag_key, keys.tag_version(tag_key)],
                    (store.rkey, px, version, prune),
                )
            )
        tagged.append((start, len(ops)))
    held_at = len(ops)
    ops += [Eval(scripts.HELD, [s.rkey], (s.written[0],)) for s in stores]
    try:
        replies = yield Batch(ops)
    except CacheUnavailableError:
        for store in stores:
            ctx.remember_failed_write(store.key)
        return [False] * len(stores)
    ep_all, ident, *eps = (_token(v) for v in replies[0])
    epoch = dict(zip(families, eps, strict=True))
    stands = []
    for store, (start, end) in zip(stores, tagged, strict=True):
        _, _, reply = store.written
        same = (ep_all, epoch[store.family], ident) == (
            _token(reply[3]),
            _token(reply[4]),
            _token(reply[7]),
        )
        stands.append(same and all(r[0] == 1 for r in replies[start:end]))
    held = [r == 1 for r in replies[held_at:]]
    if prune:
        yield from _prune(ctx, ops[1:held_at], replies[1:held_at])
    if not all(stands):
        ctx.gens.changed()  # our view was behind, or an invalidation ran: read it again
        undo = [
            Eval(scripts.UNFILL, [s.rkey], (s.written[0],))
            for s, ok in zip(stores, stands, strict=True)
            if not ok
        ]
        try:
            yield Batch(undo)
        except CacheUnavailableError:
            for store, ok in zip(stores, stands, strict=True):
                if not ok:
                    ctx.remember_failed_write(store.key)
    return [ok and still for ok, still in zip(stands, held, strict=True)]


def _prune(ctx: Context, adds: Sequence[Any], replies: Sequence[Any]) -> Plan:
    """Redis Cluster: drop from tag member sets the members (sampled by tag_add.lua) whose
    entry is gone - expired, evicted, invalidated - so a tag set stays about as large as
    the entries it names (one server does this inside fill.lua). Best effort: a failure
    here only leaves a few members for a later fill."""
    members: dict[str, list[str]] = {}
    for add, reply in zip(adds, replies, strict=True):
        for member in reply[1:]:
            members.setdefault(add.keys[0], []).append(
                member.decode() if isinstance(member, bytes) else member
            )
    sampled = [m for found in members.values() for m in found]
    if not sampled:
        return
    try:
        exists = yield Batch([("EXISTS", m) for m in sampled])
        it = iter(exists)
        gone = [(tag_key, [m for m in found if not next(it)]) for tag_key, found in members.items()]
        drops = [("SREM", tag_key, *found) for tag_key, found in gone if found]
        if drops:
            yield Batch(drops)
    except CacheUnavailableError:
        pass


def _epochs(keys: Any, fields: Sequence[str]) -> Any:
    """Read *fields* of the generations hash on the primary: a script, so that a client
    reading from replicas does not send it to one that lags."""
    return Eval(scripts.EPOCHS, [keys.generations()], tuple(fields))


def _token(value: Any) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else str(value)


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
