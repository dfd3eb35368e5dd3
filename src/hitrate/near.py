"""The near cache: an opt-in, bounded copy of hot entries in this process, in front of Redis,
kept coherent by server-assisted invalidation::

    cache = Cache.from_url(url, prefix="app", near=NearCache(max_entries=10_000, ttl=60))

A hit served from it costs a dict lookup instead of a round trip. What keeps it honest:

* **Tracking.** A listener (:mod:`hitrate.listener`) holds one connection with
  ``CLIENT TRACKING on REDIRECT <itself> BCAST PREFIX app:{ PREFIX app:~gen PREFIX
  app:~tag:``, subscribed to ``__redis__:invalidate``: whoever changes one of this cache's
  keys, in any process, the server tells it, and the copy is dropped. Nothing is served
  from here while that connection is not up (the copies are dropped when it goes, and
  nothing is kept until it is back): never stale, only slower. On Redis Cluster there is
  one such connection per primary (:mod:`hitrate.listener_cluster`), and the near cache
  is live only while every current primary is tracked: one connection down, a failover
  or a new primary drops it until tracking is on everywhere again.
* **No stale insert.** A read takes a *ticket* before it goes to Redis: the invalidation
  counter of its key's stripe and a global epoch. Its value is kept only if neither moved
  when it comes back, so "read the old value, the invalidation arrives, then keep the old
  value" cannot happen: the invalidation either refuses the insert or removes what it put.
* **Local writes** (``set``, ``invalidate``, ``write_through``, ``bump``, tags, patterns)
  drop the copies they affect when they return, in this process at once.
* **Generations and tags.** A change of ``app:~gen`` (a bump, a pattern invalidation)
  drops every copy and makes the generation view due; a change of a tag's version
  (``app:~tag:{t}:v``) drops the copies carrying that tag.
* **Expiry.** A copy is served only before the entry's logical expiry and the near
  cache's own *ttl*.

**Hot keys only** (the default): a key is kept only once a count-min sketch of the reads
that reached Redis says it was read ``hot_after`` times lately (the sketch halves its
counts as it goes, so old popularity fades), so memory goes where it pays.
``hot_only=False`` keeps every read. ``Policy(..., near=False)`` or
``NearCache(families={...})`` choose the families.

Values served from here are shared between callers: treat them as read-only, or pass
``copy=True`` (each hit decodes a fresh copy; slower, still no round trip).
"""

from __future__ import annotations

import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from contextvars import ContextVar
from typing import Any

from .codec import Entry, decode_entry
from .errors import ConfigurationError
from .generations import ALL, family_of_pattern
from .keys import decode_user_key
from .plans import MISSING, Context

__all__ = ["HotKeys", "NearCache", "async_near", "sync_near"]

STRIPES = 4096  # invalidation counters, one per stripe of keys (by hash)
_MASK = STRIPES - 1
_HALF = bytes(i >> 1 for i in range(256))


class HotKeys:
    """A count-min sketch (``depth`` rows of ``width`` saturating byte counters) with
    conservative update; every ``10 * width`` samples all counts are halved, so a key is
    hot for what it was read lately. Bounded: ``width * depth`` bytes, whatever the keys."""

    __slots__ = ("_added", "_mask", "_period", "_rows", "threshold")

    def __init__(self, threshold: int, width: int = 4096, depth: int = 4) -> None:
        if width & (width - 1) or not 16 <= width <= 65536 or not 1 <= depth <= 4:
            raise ConfigurationError("HotKeys: width is a power of two in 16..65536, depth 1..4")
        self.threshold = threshold
        self._rows = [bytearray(width) for _ in range(depth)]
        self._mask = width - 1
        self._added = 0
        self._period = 10 * width

    def add(self, key: str) -> bool:
        """Count one read of *key*; True when it is hot (read ``threshold`` times lately)."""
        h, mask = hash(key), self._mask
        slots = [(row, (h >> (16 * i)) & mask) for i, row in enumerate(self._rows)]
        low = min(row[at] for row, at in slots)
        if low < 255:
            for row, at in slots:
                if row[at] == low:  # conservative update: only the smallest counters grow
                    row[at] = low + 1
        self._added += 1
        if self._added >= self._period:
            self._added = 0
            for row in self._rows:
                row[:] = row.translate(_HALF)
        return low + 1 >= self.threshold

    def estimate(self, key: str) -> int:
        h, mask = hash(key), self._mask
        return min(row[(h >> (16 * i)) & mask] for i, row in enumerate(self._rows))


class _Item:
    __slots__ = ("expires_at", "family", "raw", "tags", "until", "value", "vtype")

    def __init__(
        self,
        value: Any,
        vtype: Any,
        expires_at: float,
        until: float,
        family: str,
        tags: tuple[str, ...],
        raw: bytes | None,
    ) -> None:
        self.value, self.vtype, self.expires_at, self.until = value, vtype, expires_at, until
        self.family, self.tags, self.raw = family, tags, raw


class _Ticket:
    """Taken before a read goes to Redis: what must not have moved for its value to be kept."""

    __slots__ = ("epoch", "family", "key", "seq", "stripe", "vtype")

    def __init__(self, key: str, family: str, vtype: Any, epoch: int, stripe: int, seq: int):
        self.key, self.family, self.vtype = key, family, vtype
        self.epoch, self.stripe, self.seq = epoch, stripe, seq


#: The ticket of the read in progress in this thread or task (set by the wrappers below,
#: taken by :meth:`NearCache.offer`, which the hit decisions call).
_pending: ContextVar[_Ticket | None] = ContextVar("hitrate_near_ticket", default=None)

_all: weakref.WeakSet[NearCache] = weakref.WeakSet()


class NearCache:
    """A bounded in-process LRU of hot entries, kept coherent with Redis (see the module).

    ``max_entries``: copies kept (least recently used dropped first). ``ttl``: the longest a
    copy is served, seconds (besides the entry's own expiry). ``hot_only``: keep only keys
    the sketch finds hot (``hot_after`` reads lately); False keeps every read.
    ``families``: only these key families (default: every family whose policy does not
    say ``near=False``). ``copy``: decode a fresh copy for every hit. One NearCache serves
    one cache.
    """

    def __init__(
        self,
        max_entries: int = 10_000,
        ttl: float = 60.0,
        *,
        hot_only: bool = True,
        hot_after: int = 3,
        families: Iterable[str] | None = None,
        copy: bool = False,
    ) -> None:
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1:
            raise ConfigurationError(
                f"NearCache(max_entries=...) must be an int >= 1, not {max_entries!r}"
            )
        if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not ttl > 0:
            raise ConfigurationError(f"NearCache(ttl=...) must be seconds > 0, not {ttl!r}")
        if (
            isinstance(hot_after, bool)
            or not isinstance(hot_after, int)
            or not 1 <= hot_after <= 255
        ):
            raise ConfigurationError(
                f"NearCache(hot_after=...) must be an int in 1..255, not {hot_after!r}"
            )
        if isinstance(families, str):
            raise ConfigurationError(
                f"NearCache(families=...) takes a set of names, e.g. {{{families!r}}}"
            )
        self.max_entries = max_entries
        self.ttl = float(ttl)
        self.families = frozenset(families) if families is not None else None
        self.copy = copy
        self.sketch = HotKeys(hot_after) if hot_only else None
        self._entries: OrderedDict[str, _Item] = OrderedDict()
        self._tags: dict[str, set[str]] = {}
        self._lock = threading.Lock()
        self._seq = [0] * STRIPES
        self._epoch = 0
        self._live = False
        self._ctx: Context | None = None
        self._roots = ("", "", "")  # entry root "app:{", "app:~gen", tag root "app:~tag:"
        self.listener: Any = None  # hitrate.listener.Listener, set by the cache
        self.refused = 0  # inserts refused: an invalidation ran while the value was read
        self.evicted = 0  # copies dropped to stay within max_entries
        self.outages = 0  # times the invalidation connection went down
        _watch_forks(self)

    # -- set up -------------------------------------------------------------------------
    def attach(self, ctx: Context) -> None:
        """Serve the cache of *ctx* (once)."""
        if self._ctx is not None:
            raise ConfigurationError(
                "this NearCache already serves another cache: give each cache its own "
                "NearCache(...)"
            )
        self._ctx = ctx
        root = ctx.keys.root
        self._roots = (root + "{", ctx.keys.generations(), root + "~tag:")
        ctx.near = self

    @property
    def live(self) -> bool:
        """Invalidations are being received: copies are kept and served."""
        return self._live

    @property
    def tracking_prefixes(self) -> tuple[str, ...]:
        """The key prefixes the listener asks Redis to track (BCAST)."""
        return self._roots

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def state(self) -> dict[str, Any]:
        """For ``health()``: is it live, how full, and what it refused or dropped."""
        listener = self.listener
        return {
            "live": self._live,
            "entries": len(self._entries),
            "max_entries": self.max_entries,
            "refused": self.refused,
            "evicted": self.evicted,
            "outages": self.outages,
            "reconnects": getattr(listener, "reconnects", 0),
        }

    # -- reads --------------------------------------------------------------------------
    def ticket(self, key: str, ttl: Any, vtype: Any) -> _Ticket | None:
        """A ticket for a read of *key* about to go to Redis, or None when its value
        is not to be kept (not live, family off, not hot yet)."""
        if not self._live:
            if self.listener is not None:
                self.listener.ensure()
            return None
        ctx = self._ctx
        assert ctx is not None
        try:
            _, family = ctx.keys.locate(key)
            policy = ctx.family_policy(family, ttl)
        except Exception:  # a bad key or ttl: the read itself says what is wrong
            return None
        if not policy.near or (self.families is not None and family not in self.families):
            return None
        if self.sketch is not None and not self.sketch.add(key):
            return None
        stripe = hash(key) & _MASK
        return _Ticket(key, family, vtype, self._epoch, stripe, self._seq[stripe])

    def offer(self, key: str, entry: Entry, raw: bytes) -> None:
        """A read decided *entry* (its bytes *raw*) is a hit: keep it if the read held a
        ticket for *key* and nothing was invalidated since the ticket was taken."""
        ticket = _pending.get()
        if ticket is None or ticket.key != key:
            return
        _pending.set(None)
        ctx = self._ctx
        assert ctx is not None
        item = _Item(
            entry.value,
            ticket.vtype,
            entry.expires_at,
            ctx.monotonic() + self.ttl,
            ticket.family,
            tuple(tag for tag, _ in entry.tags),
            bytes(raw) if self.copy else None,
        )
        entries = self._entries
        with self._lock:
            if (
                not self._live
                or self._epoch != ticket.epoch
                or self._seq[ticket.stripe] != ticket.seq
            ):
                self.refused += 1
                return
            old = entries.pop(key, None)
            if old is not None:
                self._untag(key, old)
            entries[key] = item
            for tag in item.tags:
                self._tags.setdefault(tag, set()).add(key)
            while len(entries) > self.max_entries:
                gone, dropped = entries.popitem(last=False)
                self._untag(gone, dropped)
                self.evicted += 1

    def decode(self, key: str, item: _Item) -> Any:
        """A fresh copy of a kept value (``copy=True``)."""
        ctx = self._ctx
        assert ctx is not None
        assert item.raw is not None
        return decode_entry(ctx.codec, key, item.raw, item.vtype).value

    def _untag(self, key: str, item: _Item) -> None:
        for tag in item.tags:
            keys = self._tags.get(tag)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._tags[tag]

    # -- invalidation -------------------------------------------------------------------
    def forget(self, *keys: str) -> None:
        """Drop the copies of *keys* and refuse reads of them in flight (a write here)."""
        with self._lock:
            for key in keys:
                try:
                    stripe = hash(key) & _MASK
                except TypeError:
                    continue
                self._seq[stripe] += 1
                item = self._entries.pop(key, None)
                if item is not None:
                    self._untag(key, item)

    def forget_family(self, family: str | None) -> None:
        """Drop every copy of *family* (None or ``"*"``: every copy)."""
        with self._lock:
            self._epoch += 1
            if family is None or family == ALL:
                self._entries.clear()
                self._tags.clear()
                return
            for key in [k for k, item in self._entries.items() if item.family == family]:
                self._untag(key, self._entries.pop(key))

    def forget_pattern(self, pattern: str) -> None:
        """Drop the copies a pattern invalidation may cover: its family's, or all."""
        self.forget_family(family_of_pattern(pattern))

    def forget_tag(self, tag: str) -> None:
        """Drop every copy carrying *tag*."""
        with self._lock:
            self._epoch += 1
            for key in self._tags.pop(tag, ()):
                item = self._entries.pop(key, None)
                if item is not None:
                    self._untag(key, item)

    def invalidated(self, keys: list[bytes] | None) -> None:
        """The server says *keys* changed (None: the database was flushed)."""
        if keys is None:
            self._changed_generations()
            return
        entry_root, gen_key, tag_root = self._roots
        for raw in keys:
            name = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
            if name.startswith(entry_root):
                if name.find("}") == len(name) - 1:  # the entry itself, not a sidecar
                    self.forget(decode_user_key(name[len(entry_root) : -1]))
            elif name == gen_key:
                self._changed_generations()
            elif name.startswith(tag_root) and name.endswith("}:v"):
                self.forget_tag(decode_user_key(name[len(tag_root) + 1 : -3]))

    def _changed_generations(self) -> None:
        self.forget_family(None)
        if self._ctx is not None:
            self._ctx.gens.changed()

    def went_live(self) -> None:
        """Tracking is on: from now on copies may be kept."""
        with self._lock:
            self._epoch += 1
            self._entries.clear()
            self._tags.clear()
            self._live = True
        if self._ctx is not None:
            self._ctx.gens.changed()  # what changed while it was down is read again

    def went_down(self) -> None:
        """Tracking is off (the connection dropped): drop everything, keep nothing."""
        with self._lock:
            if self._live:
                self.outages += 1
            self._live = False
            self._epoch += 1
            self._entries.clear()
            self._tags.clear()

    def _after_fork(self) -> None:
        self._lock = threading.Lock()  # another thread may have held it at the fork
        self.went_down()


class _Off:
    """What a cache without a near cache calls on its writes: nothing."""

    __slots__ = ()

    def forget(self, *keys: str) -> None:
        pass

    def forget_family(self, family: str | None) -> None:
        pass

    def forget_pattern(self, pattern: str) -> None:
        pass

    def forget_tag(self, tag: str) -> None:
        pass


OFF = _Off()


# -- the read paths: a near hit returns before anything else runs --------------------------


def _lookup(near: NearCache) -> Callable[[Any, Any], Any]:
    """The near hit: the kept value of a key (of that ``type=``), or MISSING."""
    entries, ctx = near._entries, near._ctx
    assert ctx is not None
    clock, monotonic, count, move = (
        ctx.clock,
        ctx.monotonic,
        ctx.stats.near_hit,
        entries.move_to_end,
    )

    def lookup(key: Any, vtype: Any) -> Any:
        try:
            item = entries.get(key)
        except TypeError:  # unhashable: the read says what is wrong
            return MISSING
        if (
            item is None
            or item.vtype != vtype
            or monotonic() >= item.until
            or (item.expires_at and clock() >= item.expires_at)
        ):
            return MISSING
        try:  # noqa: SIM105 - suppress() costs more than the rest of a near hit
            move(key)
        except KeyError:  # invalidated a moment ago: still what the read saw
            pass
        count(item.family)
        return item.value if item.raw is None else near.decode(key, item)

    return lookup


def sync_near(near: NearCache, read: Callable[..., Any], fetching: bool) -> Callable[..., Any]:
    """``get_or_fetch`` (*fetching*) or ``get`` of a Cache, served from *near* first."""
    lookup = _lookup(near)

    if fetching:

        def get_or_fetch(
            key: str,
            fetch: Any,
            ttl: Any = None,
            tags: Any = (),
            *,
            unless: Any = None,
            type: Any = None,
        ) -> Any:
            value = lookup(key, type)
            if value is not MISSING:
                return value
            ticket = near.ticket(key, ttl, type)
            if ticket is None:
                return read(key, fetch, ttl, tags, unless=unless, type=type)
            token = _pending.set(ticket)
            try:
                return read(key, fetch, ttl, tags, unless=unless, type=type)
            finally:
                _pending.reset(token)

        return get_or_fetch

    def get(key: str, default: Any = None, *, type: Any = None) -> Any:
        value = lookup(key, type)
        if value is not MISSING:
            return value
        ticket = near.ticket(key, None, type)
        if ticket is None:
            return read(key, default, type=type)
        token = _pending.set(ticket)
        try:
            return read(key, default, type=type)
        finally:
            _pending.reset(token)

    return get


def async_near(
    near: NearCache, read: Callable[..., Awaitable[Any]], fetching: bool
) -> Callable[..., Awaitable[Any]]:
    """See :func:`sync_near`; for an AsyncCache (a near hit still costs no I/O)."""
    lookup = _lookup(near)

    if fetching:

        async def get_or_fetch(
            key: str,
            fetch: Any,
            ttl: Any = None,
            tags: Any = (),
            *,
            unless: Any = None,
            type: Any = None,
        ) -> Any:
            value = lookup(key, type)
            if value is not MISSING:
                return value
            ticket = near.ticket(key, ttl, type)
            if ticket is None:
                return await read(key, fetch, ttl, tags, unless=unless, type=type)
            token = _pending.set(ticket)
            try:
                return await read(key, fetch, ttl, tags, unless=unless, type=type)
            finally:
                _pending.reset(token)

        return get_or_fetch

    async def get(key: str, default: Any = None, *, type: Any = None) -> Any:
        value = lookup(key, type)
        if value is not MISSING:
            return value
        ticket = near.ticket(key, None, type)
        if ticket is None:
            return await read(key, default, type=type)
        token = _pending.set(ticket)
        try:
            return await read(key, default, type=type)
        finally:
            _pending.reset(token)

    return get


def _after_fork() -> None:
    for near in list(_all):
        near._after_fork()


_fork_hook: list[bool] = []


def _watch_forks(near: NearCache) -> None:
    """A forked child has no listener: its copies are dropped (registered on first use)."""
    _all.add(near)
    if not _fork_hook and hasattr(os, "register_at_fork"):
        _fork_hook.append(True)
        os.register_at_fork(after_in_child=_after_fork)
