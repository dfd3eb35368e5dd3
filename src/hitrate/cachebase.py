"""What :class:`~hitrate.Cache` and :class:`~hitrate.AsyncCache` share: their options and
configuration, and their verbs, written once as plan methods (:mod:`hitrate.plans`) that
the ``verb`` descriptor runs with the cache's driver - returning the result on a ``Cache``
and an awaitable of it on an ``AsyncCache``."""

from __future__ import annotations

import functools
import inspect
import random
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Generic, TypeVar, cast

from . import plans
from .breaker import Breaker
from .codec import Codec, make_codec
from .connect import ClusterUnreachable, replica_reads
from .counting import Counters, NullCounters
from .errors import ConfigurationError
from .flush import Flusher, register, wake
from .generations import Generations
from .keys import FamilyWatch, KeySpace, check_family_names, escape_glob
from .keys import key as join_key
from .listener import Listener
from .listener_cluster import ClusterListener, make_listener
from .near import OFF, NearCache, _Off, async_near, sync_near
from .plans import Context
from .policy import USER, Policy, TTLLike, to_policy
from .slots import is_cluster
from .stats import stats_plan
from .structures._base import PlanOf, calling, verb

__all__ = ["CacheBase"]

T = TypeVar("T")


def _save_value(
    key: str, value: Any, save: Callable[[Any], Any], *args: Any, **kwargs: Any
) -> Callable[[], Any]:
    """What ``write_through``'s CALL runs: ``save(value)``."""
    return functools.partial(save, value)


ClientT = TypeVar("ClientT")


class CacheBase(Generic[ClientT]):
    """Configuration shared by :class:`Cache` and :class:`AsyncCache`."""

    _driver: Any  # the subclass's SyncDriver or AsyncDriver

    def __init__(
        self,
        client: ClientT,
        *,
        prefix: str = "hitrate",
        policies: Mapping[str, TTLLike] | None = None,
        default_ttl: TTLLike = USER,
        codec: str | Codec = "json",
        pickle_secret: bytes | None = None,
        secrets: Sequence[bytes] | None = None,
        max_value_size: int = 1024 * 1024,
        compress_over: int = 1024,
        strict: bool = False,
        breaker: Breaker | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
        write_window: float = 30.0,
        count: bool = True,
        flush_interval: float = 5.0,
        generation_check: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Any] | None = None,
        near: NearCache | None = None,
        wake: bool = True,
    ) -> None:
        """Wrap a redis-py *client* (``redis.Redis`` for :class:`Cache`,
        ``redis.asyncio.Redis`` for :class:`AsyncCache`); it is not closed by :meth:`close`
        (a client made by ``from_url`` is).

        ``prefix``: the namespace of every key this cache writes. ``policies``: TTL policy
        per key family (``{"user": USER}``); ``default_ttl`` for the others. ``codec``:
        ``"json"`` (default), ``"msgpack"`` or ``"pickle"`` (signed with ``secrets=[new,
        old]`` or ``pickle_secret``). ``max_value_size``: larger encoded values are refused.
        ``compress_over``: payloads of at least this many bytes are stored zstd-compressed
        when that saves a tenth or more (0: never).
        ``strict``: raise instead of failing open. ``breaker``: the circuit breaker.
        ``rng``, ``clock``: randomness (jitter, XFetch) and wall clock, for tests.
        ``write_window``: the longest expected ``write_through`` save, seconds. ``count``:
        keep per-family counters; ``flush_interval``: seconds between flushes of them to
        Redis (0: only on demand). ``generation_check``: how often, in seconds, this process
        reads the namespace generations again (see :meth:`Cache.bump`). ``monotonic`` and
        ``sleep``: the clock that times waits, leases and load durations, and how the driver
        sleeps between polls (``time.sleep`` for a Cache, ``asyncio.sleep`` for an
        AsyncCache): inject a fake clock to test time-dependent behaviour without waiting
        (an injected ``sleep`` also turns ``wake`` off). ``near``: a
        :class:`~hitrate.NearCache`, an in-process copy of hot entries kept coherent by
        Redis' invalidation messages. ``wake``: callers waiting for another process's fill
        are woken by it (one extra connection, opened on the first wait) rather than
        polling; see :mod:`hitrate.listener`."""
        kwargs = getattr(getattr(client, "connection_pool", None), "connection_kwargs", {})
        if kwargs.get("decode_responses"):
            raise ConfigurationError(
                "hitrate stores binary entries: create the Redis client with "
                "decode_responses=False (the default), or use Cache.from_url()"
            )
        if not isinstance(max_value_size, int) or max_value_size < 64:
            raise ConfigurationError("max_value_size must be an int of at least 64 bytes")
        if (
            not isinstance(compress_over, int)
            or isinstance(compress_over, bool)
            or compress_over < 0
        ):
            raise ConfigurationError(
                "compress_over must be a size in bytes >= 0 (0: never compress)"
            )
        if not isinstance(flush_interval, int | float) or flush_interval < 0:
            raise ConfigurationError("flush_interval must be seconds >= 0 (0: no timer)")
        self._flush_interval = float(flush_interval)
        default = to_policy(default_ttl, USER)
        check_family_names(policies or {})
        self.client = client
        self.strict = strict
        self.breaker = breaker or Breaker()
        self._ctx = Context(
            keys=KeySpace(prefix, FamilyWatch(policies) if policies else None),
            codec=make_codec(codec, pickle_secret, None if secrets is None else tuple(secrets)),
            default_policy=default,
            policies={name: to_policy(p, default) for name, p in (policies or {}).items()},
            max_value_size=max_value_size,
            compress_over=compress_over,
            write_window=write_window,
            rng=rng or random.Random(),
            clock=clock,
            stats=Counters() if count else NullCounters(),
            monotonic=monotonic,
            gens=Generations(generation_check, monotonic),
            cluster=is_cluster(client),
        )
        self._owns_client = False
        self._setup()
        if sleep is not None:
            self._driver.sleep = sleep
        self._near: NearCache | _Off = OFF
        self._listener = self._listen(near, wake and sleep is None)

    def _listen(self, near: NearCache | None, wake: bool) -> Listener | ClusterListener | None:
        """The listener connection (:mod:`hitrate.listener`) for the near cache and
        wake-ups, and the near cache's read paths in front of the verbs."""
        if near is None and not wake:
            return None
        if near is not None and not isinstance(near, NearCache):
            raise ConfigurationError(f"near= takes a NearCache(...), not {near!r}")
        if near is not None and replica_reads(self.client):
            raise ConfigurationError(
                "the near cache cannot keep copies of replica reads: a replica may answer "
                "with an entry whose invalidation it has not received yet, and the copy would "
                "outlive it; drop near= or replica_reads"
            )
        try:
            listener = make_listener(self.client, self.prefix, near)
        except ClusterUnreachable:  # no node answered yet: waiters poll
            if near is not None:
                raise ConfigurationError(
                    "the near cache needs the Redis Cluster to answer when the cache is "
                    "made (no node did): start it first, or drop near="
                ) from None
            listener = None
        if listener is None:
            if near is not None:
                raise ConfigurationError(
                    "the near cache needs a redis.Redis, redis.asyncio.Redis or Redis "
                    "Cluster client whose connection settings can be copied: drop near= "
                    "for this client"
                )
            return None
        weakref.finalize(self, listener.close)
        if wake:
            self._driver.listener = listener
        if near is not None:
            near.attach(self._ctx)
            near.listener = listener
            self._near = near
            wrap = async_near if inspect.iscoroutinefunction(self._driver.fetch) else sync_near
            this: Any = self  # the instance's own read paths, in front of the class's
            this.get_or_fetch = wrap(near, this.get_or_fetch, True)
            this.get = wrap(near, this.get, False)
            listener.ensure()
        return listener

    @property
    def near(self) -> NearCache | None:
        """This cache's near cache, if it has one."""
        return self._near if isinstance(self._near, NearCache) else None

    def _setup(self) -> None:
        """Make the driver and the stats timer (each class its own)."""
        raise NotImplementedError

    @property
    def prefix(self) -> str:
        """The namespace of every Redis key this cache writes (``app`` in ``app:{user:42}``)."""
        return self._ctx.keys.prefix

    @property
    def keyspace(self) -> KeySpace:
        """How this cache lays out its Redis keys (for tools: the CLI, key scans)."""
        return self._ctx.keys

    @property
    def counters(self) -> Counters:
        """This process's per-family counters (hits, misses, loads, errors, ...)."""
        return self._ctx.stats

    def _timer_breaker(self) -> Breaker:
        return Breaker(self.breaker.threshold, self.breaker.cooldown)

    def _start_flusher(
        self, driver: Any, on_close: Callable[[], None] | None = None
    ) -> Flusher | None:
        """Flush this cache's counts to Redis, and deliver its owed work, on the shared
        timer (see :mod:`hitrate.flush`)."""
        if driver is None:
            return None
        driver.background = True
        counting = not isinstance(self._ctx.stats, NullCounters)
        flusher = Flusher(
            driver.run,
            self._ctx.stats if counting else None,
            self.prefix,
            owed=self._ctx.owed,
            deliver=driver.deliver_owed,
            interval=self._flush_interval,
            clock=self._ctx.clock,
            on_close=on_close,
        )
        weakref.finalize(self, flusher.retire)  # an unclosed cache still flushes its counts
        self._ctx.owed.on_pending = wake
        return register(flusher)

    def _stats_plan(self, minutes: int | None, history: int, sample: int) -> Any:
        ctx = self._ctx
        return stats_plan(
            ctx.stats, ctx.keys, ctx.clock, minutes=minutes, history=history, sample=sample
        )

    def policy_for(self, key: str, ttl: TTLLike = None) -> Policy:
        """The policy a write of *key* would use (family default unless *ttl* is given)."""
        return self._ctx.policy(key, ttl)

    def redis_key(self, key: str) -> str:
        """The Redis key that holds *key*'s entry, e.g. ``app:{user:42}``."""
        return self._ctx.keys.entry(key)

    # -- the verbs, written once: each runs its plan with this cache's driver, so it
    # returns the result on a Cache and an awaitable of it on an AsyncCache ----------------
    @verb
    def get(self, key: str, default: Any = None, *, type: Any = None) -> PlanOf[Any]:
        """The cached value of *key*, or *default*. A cached ``None`` returns ``None``;
        pass ``default=hitrate.MISSING`` to tell the two apart. ``type=`` decodes into that
        type (a dataclass, pydantic model, ``datetime``, ``list[Item]``, ...)."""
        return (yield from plans.get(self._ctx, key, default, type))

    @verb
    def set(self, key: str, value: Any, ttl: TTLLike = None, *, type: Any = None) -> PlanOf[bool]:
        """Cache *value* under *key* (TTL from *ttl* or the family's policy). Returns False
        when Redis was unreachable (fail-open; the key is invalidated when it returns).
        Raises :class:`~hitrate.SerializationError` for a value a hit would not return
        equal and of the same type; ``type=`` stores it for typed decoding."""
        try:
            return bool((yield from plans.set_(self._ctx, key, value, ttl, type)))
        finally:
            self._near.forget(key)

    @verb
    def get_many(self, keys: Iterable[str], *, type: Any = None) -> PlanOf[dict[str, Any]]:
        """The cached values of *keys* that are present, in one round trip (MGET);
        ``type=`` decodes each into that type."""
        return cast(dict[str, Any], (yield from plans.get_many(self._ctx, keys, type)))

    @verb
    def set_many(
        self, mapping: Mapping[str, Any], ttl: TTLLike = None, *, type: Any = None
    ) -> PlanOf[bool]:
        """Cache several values in one round trip; nothing is written if one cannot be."""
        try:
            return bool((yield from plans.set_many(self._ctx, mapping, ttl, type)))
        finally:
            self._near.forget(*mapping)

    @calling("fetch_many")
    def get_or_fetch_many(
        self,
        keys: Iterable[str],
        fetch_many: Callable[[list[str]], Mapping[str, Any] | Awaitable[Mapping[str, Any]]],
        ttl: TTLLike = None,
        tags: Sequence[str] = (),
        *,
        unless: Callable[[Any], object] | None = None,
        type: Any = None,
    ) -> PlanOf[dict[str, Any]]:
        """Batch cache-aside: ``{key: value}`` for every key, the cached ones from one
        round trip, the others from ONE ``fetch_many(missing_keys)`` call (sync, or async
        on an AsyncCache) returning ``{key: value}`` - a key it leaves out is ``None``,
        cached as "not found" when the policy has a ``negative_ttl``. The misses' leases
        are taken in one round trip and filled in one; keys another caller is loading are
        waited for, as with :meth:`get_or_fetch`, whose guarantees hold for each key."""
        return cast(
            dict[str, Any],
            (yield from plans.get_or_fetch_many(
                self._ctx, keys, ttl, tags, unless=unless, vtype=type
            )),
        )  # fmt: skip

    @calling(_save_value)
    def write_through(
        self,
        key: str,
        value: Any,
        save: Callable[[Any], Any],
        ttl: TTLLike = None,
        *,
        version: Callable[[Any], float] | None = None,
        type: Any = None,
    ) -> PlanOf[Any]:
        """``save(value)`` to the source of truth (sync, or async on an AsyncCache), then
        cache what was saved: *save*'s return value when it is not ``None`` (the stored
        row), else *value*. If another write or an invalidation of *key* overlapped, the
        entry is deleted instead, so the next read loads fresh. With ``version=lambda row:
        row["version"]`` the newer row wins. Returns what was cached."""
        try:
            return (yield from plans.write_through(self._ctx, key, value, ttl, version, type))
        finally:
            self._near.forget(key)

    @verb
    def invalidate(self, *keys: str) -> PlanOf[int]:
        """Delete *keys* and revoke their fill leases; returns how many entries existed."""
        try:
            return int((yield from plans.invalidate(self._ctx, keys)))
        finally:
            self._near.forget(*keys)

    @verb
    def invalidate_pattern(self, pattern: str) -> PlanOf[int]:
        """Invalidate every key under this cache's prefix matching the glob *pattern*, by
        SCAN (never KEYS). Escape untrusted parts with :func:`hitrate.escape_glob`."""
        try:
            return int((yield from plans.invalidate_pattern(self._ctx, pattern)))
        finally:
            self._near.forget_pattern(pattern)

    @verb
    def invalidate_prefix(self, *parts: object) -> PlanOf[int]:
        """Invalidate the key :func:`hitrate.key` builds from *parts* and every key that
        starts with it and a ``:``: ``cache.invalidate_prefix("tenant", tenant_id)``
        deletes exactly that tenant's keys (``key("tenant", tenant_id, ...)``), whatever
        the id holds -- tenant ``a`` never touches tenant ``a:b`` or ``a*``."""
        exact = join_key(*parts)
        try:
            deleted = yield from plans.invalidate(self._ctx, [exact])
            more = yield from plans.invalidate_pattern(self._ctx, escape_glob(exact) + ":*")
        finally:
            self._near.forget(exact)
            self._near.forget_pattern(escape_glob(exact) + ":*")
        return int(deleted) + int(more)

    @verb
    def invalidate_tag(self, tag: str) -> PlanOf[int]:
        """Invalidate every entry filled with *tag*; fills in flight are refused."""
        try:
            return int((yield from plans.invalidate_tag(self._ctx, tag)))
        finally:
            self._near.forget_tag(tag)

    @verb
    def bump(self, family: str | None = None) -> PlanOf[bool]:
        """Make every entry of *family* (``None``: every entry under the prefix)
        unreachable at once, in O(1) and without SCAN: for deploys and schema changes.
        Fills in flight are refused; Redis expires the old entries. This cache sees the
        bump at once, other processes within ``generation_check`` seconds (default 1).
        Returns False if Redis was unreachable (the bump is then owed, delivered before
        the next command)."""
        try:
            return bool((yield from plans.bump(self._ctx, family)))
        finally:
            self._near.forget_family(family)
