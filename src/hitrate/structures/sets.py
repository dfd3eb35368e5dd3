"""``cache.seen(name)``: exact dedup sets; ``cache.unique(name)``: HyperLogLog counts.

**seen** is a Redis SET. ``add(item)`` answers "was it new?" in one round trip (SADD and
the expiry in one Lua call). Without ``window=`` the set expires ``ttl`` after its last
add (renewed by every add), so a set in use stays and an idle one goes away. With
``window=`` ("unique visitors today"), items go to the set of the current window —
windows are aligned to the Unix epoch, in UTC (``window=86400`` is calendar days, UTC),
measured with the cache's clock — and each window's set expires ``ttl`` after the window
ends (default: one more window, so the previous one can still be counted). Memory grows
with the number of items: about 50-100 bytes each.

**unique** is a HyperLogLog: ``count()`` estimates how many distinct items were added,
with a standard error of 0.81 %, in at most 12 KB per counter (12,304 bytes once dense;
small counters are sparse and far smaller), however many items. ``merge`` folds other
counters into this one (days into a week) and works across Redis Cluster slots.

Both are data, not copies of data: no expiry unless ``ttl=`` (or a policy for the name's
family) is given, and ``CacheUnavailableError`` when Redis is unreachable (nothing to fall
back on). Items are strings, bytes or ints, compared by their text: ``5`` and ``"5"`` are
the same item.
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Iterable
from typing import Any

from .. import scripts
from ..errors import ConfigurationError, InvalidArgumentError
from ..ops import Batch, Eval
from ..plans import Context
from ..policy import TTLLike
from ._base import (
    CHUNK,
    Awaited,
    PlanOf,
    Structure,
    Synced,
    expiry_ms,
    structure_policy,
    verb,
)

__all__ = ["AsyncSeen", "AsyncUnique", "Seen", "Unique"]

STEP = CHUNK * 10  # items per Lua call when adding many (each call is atomic with its expiry)


def _item(value: Any) -> str | bytes:
    if isinstance(value, str | bytes):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise InvalidArgumentError(
        f"items are strings, bytes or ints, not {type(value).__name__} {value!r}"
    )


def _timestamp(at: float | _dt.datetime) -> float:
    if isinstance(at, _dt.datetime):
        return at.timestamp()
    if isinstance(at, bool) or not isinstance(at, int | float):
        raise InvalidArgumentError(f"at= is a Unix time or a datetime, not {at!r}")
    return float(at)


# -- seen ----------------------------------------------------------------------------------


class _Seen(Structure):
    __slots__ = ("_keep_ms", "_key", "_policy", "_window_ms", "name")

    def __init__(
        self,
        ctx: Context,
        driver: Any,
        name: str,
        *,
        ttl: TTLLike,
        window: float | _dt.timedelta | None,
    ) -> None:
        super().__init__(ctx, driver)
        self._key = ctx.keys.structure("seen", name, "set name")
        self.name = name
        self._policy = structure_policy(ctx, name, ttl)
        self._window_ms = self._keep_ms = 0
        if window is not None:
            seconds = window.total_seconds() if isinstance(window, _dt.timedelta) else window
            if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds <= 0:
                raise ConfigurationError(f"window must be > 0 seconds, not {window!r}")
            self._window_ms = max(1, round(seconds * 1000))
            keep = self._policy.ttl if ttl is not None else None
            self._keep_ms = self._window_ms if keep is None else math.ceil(keep * 1000)

    def __repr__(self) -> str:
        window = f", window={self._window_ms / 1000}" if self._window_ms else ""
        return f"{type(self).__name__}({self.name!r}{window})"

    def redis_key(self, at: float | _dt.datetime | None = None) -> str:
        """The set's Redis key; with ``window=``, the key of the window holding *at*
        (default: now), e.g. ``app:~seen:{visitors}:w1764115200000``."""
        return self._where(at)[0]

    def _where(self, at: float | _dt.datetime | None = None) -> tuple[str, int]:
        """(Redis key, expiry as Unix ms or 0) of the set that *at* (default now) falls in."""
        if not self._window_ms:
            return self._key, 0
        now = self._ctx.clock() if at is None else _timestamp(at)
        start = math.floor(now * 1000 / self._window_ms) * self._window_ms
        return f"{self._key}:w{start}", start + self._window_ms + self._keep_ms

    def _add(self, items: list[str | bytes]) -> Eval:
        key, at = self._where()
        px = 0 if self._window_ms else expiry_ms(self._ctx, self._policy)
        return Eval(scripts.SEEN_ADD, [key], (px, at, *items))

    @verb
    def add(self, item: str | bytes | int) -> PlanOf[bool]:
        """Add *item*; True when it was new (not seen before). One round trip."""
        return bool((yield self._add([_item(item)])))

    @verb
    def add_many(self, items: Iterable[str | bytes | int]) -> PlanOf[int]:
        """Add many items (pipelined); returns how many were new."""
        values = [_item(i) for i in items]
        if not values:
            return 0
        replies = yield Batch(
            [self._add(values[i : i + STEP]) for i in range(0, len(values), STEP)]
        )
        return sum(int(r) for r in replies)

    @verb
    def contains(self, item: str | bytes | int) -> PlanOf[bool]:
        """Whether *item* was added (in the current window, with ``window=``)."""
        return bool((yield ("SISMEMBER", self._where()[0], _item(item))))

    @verb
    def count(self, at: float | _dt.datetime | None = None) -> PlanOf[int]:
        """How many distinct items were added; with ``window=``, in the window holding *at*
        (a Unix time or datetime; default now) while it is kept."""
        return int((yield ("SCARD", self._where(at)[0])))

    @verb
    def remove(self, *items: str | bytes | int) -> PlanOf[int]:
        """Forget items (say, when processing a new one failed and it should be retried);
        returns how many were there."""
        if not items:
            return 0
        return int((yield ("SREM", self._where()[0], *(_item(i) for i in items))))

    @verb
    def clear(self) -> PlanOf[bool]:
        """Forget every item (of the current window, with ``window=``)."""
        return bool((yield ("UNLINK", self._where()[0])))


class Seen(_Seen, Synced):
    """A dedup set for :class:`~hitrate.Cache`::

    emails = cache.seen("sent:welcome", ttl=timedelta(days=7))
    if emails.add(user_id):        # True only the first time
        send_welcome(user_id)
    user_id in emails              # True

    today = cache.seen("visitors", window=timedelta(days=1))
    today.add(visitor_id); today.count()
    """

    __slots__ = ()

    def __contains__(self, item: object) -> bool:
        return self.contains(item)  # type: ignore[arg-type]


class AsyncSeen(_Seen, Awaited):
    """The asyncio twin of :class:`Seen`; use ``await seen.contains(item)`` for ``in``."""

    __slots__ = ()

    def __contains__(self, item: object) -> bool:
        raise TypeError("'in' cannot wait for Redis: use 'await seen.contains(item)'")


# -- unique --------------------------------------------------------------------------------


class _Unique(Structure):
    __slots__ = ("_key", "_policy", "name")

    def __init__(self, ctx: Context, driver: Any, name: str, *, ttl: TTLLike) -> None:
        super().__init__(ctx, driver)
        self._key = ctx.keys.structure("hll", name, "counter name")
        self.name = name
        self._policy = structure_policy(ctx, name, ttl)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    @property
    def redis_key(self) -> str:
        """The HyperLogLog's Redis key, e.g. ``app:~hll:{visitors}``."""
        return self._key

    def _px(self) -> int:
        return expiry_ms(self._ctx, self._policy)

    @verb
    def add(self, *items: str | bytes | int) -> PlanOf[bool]:
        """Count items; True when the estimate changed (some item was probably new).
        Any number of items; large batches are pipelined."""
        values = [_item(i) for i in items]
        if not values:
            return False
        replies = yield Batch(
            [
                Eval(scripts.HLL_ADD, [self._key], (self._px(), *values[i : i + STEP]))
                for i in range(0, len(values), STEP)
            ]
        )
        return any(int(r) for r in replies)

    @verb
    def count(self) -> PlanOf[int]:
        """The estimated number of distinct items (standard error 0.81 %)."""
        return int((yield ("PFCOUNT", self._key)))

    @verb
    def merge(self, *others: str | _Unique) -> PlanOf[int]:
        """Fold other counters (by name, or Unique objects of this cache) into this one;
        returns this one's count afterwards. Works when they live in other Cluster slots."""
        keys = []
        for other in others:
            if isinstance(other, _Unique):
                keys.append(other._key)
            elif isinstance(other, str):
                keys.append(self._ctx.keys.structure("hll", other, "counter name"))
            else:
                raise InvalidArgumentError(
                    f"merge() takes counter names or Unique objects, not {other!r}"
                )
        blobs = (yield Batch([("GET", k) for k in keys])) if keys else []
        scratch = f"{self._key}:merge:{self._ctx.token()}"
        found = [b for b in blobs if b is not None]
        count = yield Eval(scripts.HLL_MERGE, [self._key, scratch], (self._px(), *found))
        return int(count)

    @verb
    def clear(self) -> PlanOf[bool]:
        """Delete the counter; returns whether it existed."""
        return bool((yield ("UNLINK", self._key)))


class Unique(_Unique, Synced):
    """A HyperLogLog distinct count for :class:`~hitrate.Cache`::

    visitors = cache.unique(f"visitors:{date.today()}")
    visitors.add(visitor_id)
    visitors.count()                             # ~ distinct visitors, +-0.81 %
    cache.unique("visitors:week").merge(*days)   # union of the days
    """

    __slots__ = ()


class AsyncUnique(_Unique, Awaited):
    """The asyncio twin of :class:`Unique`: the same verbs, awaited."""

    __slots__ = ()
