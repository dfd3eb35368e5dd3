"""``Cache`` and ``AsyncCache``: the verbs they share are written once in
:class:`~hitrate.cachebase.CacheBase`; these two classes add what differs - the driver
(:mod:`hitrate.drivers`), the typed hit fast path, ``stats``/``health``/``close`` and the
typed factories of the data structures."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import timedelta
from typing import Any, TypeVar, Unpack, cast, overload

import redis
import redis.asyncio as aredis

from . import health
from .batching import ID, AsyncCachedMany, CachedMany, V, key_template
from .cachebase import CacheBase
from .connect import (
    MAX_CONNECTIONS,
    CacheOptions,
    async_client,
    async_twin,
    cluster_url,
    sync_client,
    sync_twin,
)
from .decorators import AsyncCacheDecorator, CacheDecorator, KeyArg, cached_async, cached_sync
from .drivers import AsyncDriver, SyncDriver
from .errors import CacheUnavailableError, ConfigurationError
from .flush import Flusher, flush_plan
from .health import Health
from .listener import Listener
from .near import NearCache, async_near
from .policy import TTLLike
from .stats import Stats
from .structures import (
    AsyncLeaderboard,
    AsyncObjects,
    AsyncRateLimiter,
    AsyncSeen,
    AsyncUnique,
    Leaderboard,
    Objects,
    RateLimiter,
    Seen,
    Unique,
)
from .structures._base import Awaited, Synced

__all__ = ["AsyncCache", "Cache"]

T = TypeVar("T")


class Cache(CacheBase[redis.Redis], Synced):
    """A Redis cache for synchronous code. All verbs are thread-safe.

    >>> cache = Cache.from_url("redis://localhost:6379/0", prefix="app")   # doctest: +SKIP
    >>> cache.get_or_fetch("user:42", lambda: load_user(42))             # doctest: +SKIP
    """

    def _setup(self) -> None:
        self._driver = SyncDriver(self.client, self._ctx, strict=self.strict, breaker=self.breaker)
        self.get_or_fetch = self._driver.fetch  # type: ignore[method-assign]  # the hot path
        self._twin: AsyncCache | None = None
        # The timer (stats flushes, owed work) runs on a driver of its own: it shares the
        # client, but has a breaker of its own, so it never holds the probe that would
        # tell callers Redis is back.
        timer = SyncDriver(self.client, self._ctx, strict=False, breaker=self._timer_breaker())
        self._flusher = self._start_flusher(timer)

    @classmethod
    def from_url(
        cls,
        url: str | None = None,
        *,
        timeout: float = 0.25,
        connect_timeout: float = 0.25,
        max_connections: int = MAX_CONNECTIONS,
        pool_timeout: float = 1.0,
        cluster: bool = False,
        **options: Unpack[CacheOptions],
    ) -> Cache:
        """Connect to *url* (default: ``HITRATE_REDIS_URL``, ``REDIS_URL``, localhost) with
        short timeouts and no retry storms; *options* are :class:`Cache`'s.

        The pool holds at most *max_connections*; a thread that finds them all busy waits
        up to *pool_timeout* seconds for one, then that call fails open (not counted as an
        outage by the circuit breaker). ``cluster=True``: *url* names a node of a Redis
        Cluster (the same as writing ``redis+cluster://``). :meth:`close` closes the client
        made here."""
        if cluster:
            url = cluster_url(url)
        client = sync_client(url, timeout, connect_timeout, max_connections, pool_timeout)
        cache = cls(client, **options)
        cache._owns_client = True
        return cache

    def get_or_fetch(
        self,
        key: str,
        fetch: Callable[[], T],
        ttl: TTLLike = None,
        tags: Sequence[str] = (),
        *,
        unless: Callable[[T], object] | None = None,
        type: Any = None,
    ) -> T:
        """Cache-aside: the cached value, or ``fetch()``'s, cached for the next caller.

        One caller per key loads at a time (across threads and processes); a fill is
        refused if an invalidation or write ran while it loaded. ``type=`` (what *fetch*
        returns: a dataclass, pydantic model, ``datetime``, ``list[Item]``, ...) makes hits
        decode into that type; without it, a value JSON cannot give back exactly is refused
        with :class:`~hitrate.SerializationError`. ``unless(value)`` true: the loaded value
        is returned but not cached. A hit costs one GET.
        """
        # Runs only if called through the class: instances use the driver's method itself.
        return cast(T, self._driver.fetch(key, fetch, ttl, tags, unless=unless, type=type))

    def cached(
        self,
        ttl: TTLLike = None,
        *,
        key: KeyArg = None,
        tags: Sequence[str] = (),
        unless: Callable[[Any], object] | None = None,
        name: str | None = None,
        type: Any = None,
    ) -> CacheDecorator:
        """Cache a function's results (cache-aside with leases); ``async def`` too.

        ``key`` is a format string over the function's parameters (``"user:{user_id}"``;
        a ``:`` or ``%`` in a value is encoded as in :func:`hitrate.key`), or a callable
        taking the function's arguments and returning the key. Without it the key is
        ``module.function:<stable hash of the arguments>`` (closures and lambdas: also of
        their code and captured values); ``name=`` replaces ``module.function``.
        ``unless=lambda result: ...`` returns a result without caching it when true.
        Hits are decoded as the function's return annotation (``-> User``, ``-> datetime``)
        or ``type=``, so they come back of the type the function returns.
        The wrapper keeps the function's signature and types, and gets
        ``.invalidate(*args, **kwargs)`` and ``.key(*args, **kwargs)``::

            @cache.cached(ttl=USER, key="user:{user_id}")
            def get_user(user_id: int) -> dict: ...

            get_user.invalidate(user_id=42)
        """
        return cached_sync(self, ttl, key, tags, unless, name, type)

    def cached_many(
        self, key: str, ttl: TTLLike = None, *, tags: Sequence[str] = (), type: Any = None
    ) -> Callable[[Callable[[list[ID]], Mapping[ID, V]]], CachedMany[ID, V]]:
        """Batch cache-aside for a function that loads many ids at once: the wrapper takes
        ids and returns ``{id: value}``, calling the function once with just the ids that
        missed (see :mod:`hitrate.batching`)::

            @cache.cached_many(key="user:{id}")
            def load_users(ids: list[int]) -> dict[int, dict]: ...
        """
        key_template(key)  # a bad template is an error now, not at the first call

        def decorate(func: Callable[[list[ID]], Mapping[ID, V]]) -> CachedMany[ID, V]:
            if inspect.iscoroutinefunction(func):
                raise ConfigurationError(
                    f"{func.__qualname__} is async: use AsyncCache.cached_many (cache.aio)"
                )
            return CachedMany(self, func, key, ttl, tags, type)

        return decorate

    def stats(self, *, minutes: int | None = None, history: int = 0, sample: int = 10_000) -> Stats:
        """Hit rate and counts per key family from every process (this one's are flushed
        first), with the server's memory, key count, evictions and keyspace hits/misses.

        ``minutes=60`` counts only the last hour (per-minute buckets, kept 24 h) instead of
        the totals; ``history=60`` adds the last hour minute by minute (``Stats.history``);
        ``sample`` is how many keys SCAN may examine to estimate keys and memory per family
        (0: skip). Raises :class:`~hitrate.CacheUnavailableError` if Redis is unreachable::

            s = cache.stats()
            print(s.hit_rate, s.verdict, s.family("user").load_p99)
        """
        plan = self._stats_plan(minutes, history, sample)
        try:
            return cast(Stats, self._driver.run(plan))
        except CacheUnavailableError as exc:
            raise health.unreachable(exc, self.client, self.breaker, "stats()") from exc
        finally:
            plan.close()  # if Redis failed, the counts it could not flush are kept

    # -- health (hitrate.health): is Redis usable, and if not, why and what to do ---------
    def ping(self) -> bool:
        """True if Redis answers PING now (it is tried even while the breaker is open)."""
        return self.health().ok

    def health(self) -> Health:
        """One PING, around the circuit breaker, and what it says: ``ok``, the cause and
        its fix when not (``"wrong password for redis://host:6379/0 (AUTH failed): check
        the URL's user name and password"``), the breaker's state, the round trip and the
        invalidations owed. For health-check endpoints: ``cache.health().as_dict()``."""
        started = time.perf_counter()
        try:
            self.client.ping()
        except Exception as exc:
            return health.report(self.client, self.breaker, self._ctx, started, exc)
        return health.report(self.client, self.breaker, self._ctx, started, None)

    def flush_stats(self) -> bool:
        """Write this process's uncounted-in-Redis counts now; False if Redis was
        unreachable (they are kept for the next flush). Done every ``flush_interval``
        seconds, on :meth:`close` and at exit anyway."""
        plan = flush_plan(self._ctx.stats, self.prefix, self._ctx.clock)
        try:
            return bool(self._driver.run(plan))
        except CacheUnavailableError:
            return False
        finally:
            plan.close()

    def close(self) -> None:
        """Wait for background refreshes, flush the counters, and close the clients this
        cache made (``from_url``'s, and :attr:`aio`'s); a client passed in is the caller's
        to close."""
        self._driver.close()
        listener: Listener | None = getattr(self, "_listener", None)
        if listener is not None:
            listener.close()
        if self._flusher is not None:
            self._flusher.close()
        if self._twin is not None:
            self._twin._close_client_sync()
        if self._owns_client:
            self.client.close()

    def __enter__(self) -> Cache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def aio(self) -> AsyncCache:
        """An :class:`AsyncCache` on the same server, prefix, policies and counters."""
        if self._twin is None:
            aclient = async_twin(self.client)
            twin = AsyncCache.__new__(AsyncCache)
            twin.client, twin.strict, twin.breaker, twin._ctx = (
                aclient, self.strict, self.breaker, self._ctx,
            )  # fmt: skip
            twin._owns_client, twin._flusher = True, None
            twin._driver = AsyncDriver(aclient, self._ctx, strict=self.strict, breaker=self.breaker)
            twin.get_or_fetch = twin._driver.fetch  # type: ignore[method-assign]
            twin._listener, twin._driver.listener = None, self._driver.listener
            twin._near = self._near  # the same near cache: its writes drop copies too
            if isinstance(self._near, NearCache):
                this: Any = twin
                this.get_or_fetch = async_near(self._near, twin.get_or_fetch, True)
                this.get = async_near(self._near, twin.get, False)
            self._twin = twin
        return self._twin

    # -- data structures (hitrate.structures): same prefix, driver and fail-open rules -----
    def objects(self, family: str, ttl: TTLLike = None) -> Objects:
        """Objects of *family* cached as hashes, field by field (TTL: *ttl* or the family's
        policy): ``cache.objects("user").get_field(42, "name")``."""
        return Objects(self._ctx, self._driver, family, ttl)

    def leaderboard(
        self, name: str, *, keep: int | None = None, ttl: TTLLike = None
    ) -> Leaderboard:
        """A sorted-set leaderboard, best first; ``keep=N`` trims it to the best N."""
        return Leaderboard(self._ctx, self._driver, name, keep=keep, ttl=ttl)

    def seen(
        self, name: str, ttl: TTLLike = None, *, window: float | timedelta | None = None
    ) -> Seen:
        """An exact dedup set (``add`` -> True when new); ``window=`` for per-window sets."""
        return Seen(self._ctx, self._driver, name, ttl=ttl, window=window)

    def unique(self, name: str, ttl: TTLLike = None) -> Unique:
        """A HyperLogLog distinct count (0.81 % standard error, at most 12 KB)."""
        return Unique(self._ctx, self._driver, name, ttl=ttl)

    def rate_limiter(
        self, name: str, limit: int, per: float | timedelta, algorithm: str = "sliding_window",
        *, burst: int | None = None, fail_closed: bool = False,
    ) -> RateLimiter:  # fmt: skip
        """A rate limiter: ``algorithm`` is ``"fixed_window"``, ``"sliding_window"`` (exact
        log, the default) or ``"gcra"``; fails open unless ``fail_closed=True``."""
        return RateLimiter(
            self._ctx, self._driver, name, limit, per, algorithm,
            burst=burst, fail_closed=fail_closed,
        )  # fmt: skip


class AsyncCache(CacheBase[aredis.Redis], Awaited):
    """The asyncio twin of :class:`Cache`: the same verbs, awaited."""

    def _setup(self) -> None:
        client = self.client
        self._driver = AsyncDriver(client, self._ctx, strict=self.strict, breaker=self.breaker)
        self.get_or_fetch = self._driver.fetch  # type: ignore[method-assign]  # the hot path
        # The timer flushes and delivers owed work with a small sync client on the same
        # server (see hitrate.flush).
        sync = sync_twin(client)
        driver = None
        if sync is not None:
            driver = SyncDriver(sync, self._ctx, strict=False, breaker=self._timer_breaker())
        self._flusher = self._start_flusher(driver, sync.close if sync is not None else None)

    @classmethod
    def from_url(
        cls,
        url: str | None = None,
        *,
        timeout: float = 0.25,
        connect_timeout: float = 0.25,
        max_connections: int = MAX_CONNECTIONS,
        pool_timeout: float = 1.0,
        cluster: bool = False,
        **options: Unpack[CacheOptions],
    ) -> AsyncCache:
        """Like :meth:`Cache.from_url`, with a ``redis.asyncio`` client: a task that finds
        every pooled connection busy waits up to *pool_timeout* for one."""
        if cluster:
            url = cluster_url(url)
        client = async_client(url, timeout, connect_timeout, max_connections, pool_timeout)
        cache = cls(client, **options)
        cache._owns_client = True
        return cache

    @overload
    async def get_or_fetch(
        self,
        key: str,
        fetch: Callable[[], Awaitable[T]],
        ttl: TTLLike = None,
        tags: Sequence[str] = (),
        *,
        unless: Callable[[T], object] | None = None,
        type: Any = None,
    ) -> T: ...

    @overload
    async def get_or_fetch(
        self,
        key: str,
        fetch: Callable[[], T],
        ttl: TTLLike = None,
        tags: Sequence[str] = (),
        *,
        unless: Callable[[T], object] | None = None,
        type: Any = None,
    ) -> T: ...

    async def get_or_fetch(
        self,
        key: str,
        fetch: Callable[[], Any],
        ttl: TTLLike = None,
        tags: Sequence[str] = (),
        *,
        unless: Callable[[Any], object] | None = None,
        type: Any = None,
    ) -> Any:
        """See :meth:`Cache.get_or_fetch`; *fetch* may be sync or async."""
        # Runs only if called through the class: instances use the driver's method itself.
        return await self._driver.fetch(key, fetch, ttl, tags, unless=unless, type=type)

    def cached(
        self,
        ttl: TTLLike = None,
        *,
        key: KeyArg = None,
        tags: Sequence[str] = (),
        unless: Callable[[Any], object] | None = None,
        name: str | None = None,
        type: Any = None,
    ) -> AsyncCacheDecorator:
        """See :meth:`Cache.cached`; wraps ``async def`` functions."""
        return cached_async(self, ttl, key, tags, unless, name, type)

    def cached_many(
        self, key: str, ttl: TTLLike = None, *, tags: Sequence[str] = (), type: Any = None
    ) -> Callable[[Callable[[list[ID]], Awaitable[Mapping[ID, V]]]], AsyncCachedMany[ID, V]]:
        """See :meth:`Cache.cached_many`; for coroutine functions."""
        key_template(key)

        def decorate(
            func: Callable[[list[ID]], Awaitable[Mapping[ID, V]]],
        ) -> AsyncCachedMany[ID, V]:
            if not inspect.iscoroutinefunction(func):
                raise ConfigurationError(f"{func.__qualname__} is not async: use Cache.cached_many")
            return AsyncCachedMany(self, func, key, ttl, tags, type)

        return decorate

    async def stats(
        self, *, minutes: int | None = None, history: int = 0, sample: int = 10_000
    ) -> Stats:
        """See :meth:`Cache.stats`."""
        plan = self._stats_plan(minutes, history, sample)
        try:
            return cast(Stats, await self._driver.run(plan))
        except CacheUnavailableError as exc:
            raise health.unreachable(exc, self.client, self.breaker, "stats()") from exc
        finally:
            plan.close()

    # -- health: see Cache.health ---------------------------------------------------------
    async def ping(self) -> bool:
        """See :meth:`Cache.ping`."""
        return (await self.health()).ok

    async def health(self) -> Health:
        """See :meth:`Cache.health`."""
        started = time.perf_counter()
        try:
            await self.client.ping()
        except Exception as exc:
            return health.report(self.client, self.breaker, self._ctx, started, exc)
        return health.report(self.client, self.breaker, self._ctx, started, None)

    async def flush_stats(self) -> bool:
        """See :meth:`Cache.flush_stats`."""
        plan = flush_plan(self._ctx.stats, self.prefix, self._ctx.clock)
        try:
            return bool(await self._driver.run(plan))
        except CacheUnavailableError:
            return False
        finally:
            plan.close()

    async def close(self) -> None:
        """Wait for background refreshes, flush the counters, and close the client if this
        cache made it (``from_url``); a client passed in is the caller's to close."""
        await self._driver.close()
        listener: Listener | None = getattr(self, "_listener", None)
        if listener is not None:  # joins its thread: not on the loop
            await asyncio.to_thread(listener.close)
        flusher: Flusher | None = getattr(self, "_flusher", None)
        if flusher is not None:  # its final flush, in a worker thread: the loop goes on
            await asyncio.to_thread(flusher.close)
        await self.flush_stats()  # whatever that could not write (usually nothing)
        if self._owns_client:
            await self.client.aclose()

    def _close_client_sync(self) -> None:
        """Close this cache's own client from sync code (``Cache.close`` closing ``aio``):
        its connections belong to event loops that may be gone, so they are dropped."""
        if not self._owns_client:
            return
        pool = getattr(self.client, "connection_pool", None)
        if pool is None:
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # no loop here: close the pool's sockets on a short-lived one
            with contextlib.suppress(Exception):
                asyncio.run(pool.disconnect())
        else:  # called from inside a loop (sync close in async code): don't block it
            pool.reset()

    async def __aenter__(self) -> AsyncCache:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- data structures: see Cache.objects etc.; their verbs are awaited -----------------
    def objects(self, family: str, ttl: TTLLike = None) -> AsyncObjects:
        """See :meth:`Cache.objects`."""
        return AsyncObjects(self._ctx, self._driver, family, ttl)

    def leaderboard(
        self, name: str, *, keep: int | None = None, ttl: TTLLike = None
    ) -> AsyncLeaderboard:
        """See :meth:`Cache.leaderboard`."""
        return AsyncLeaderboard(self._ctx, self._driver, name, keep=keep, ttl=ttl)

    def seen(
        self, name: str, ttl: TTLLike = None, *, window: float | timedelta | None = None
    ) -> AsyncSeen:
        """See :meth:`Cache.seen`."""
        return AsyncSeen(self._ctx, self._driver, name, ttl=ttl, window=window)

    def unique(self, name: str, ttl: TTLLike = None) -> AsyncUnique:
        """See :meth:`Cache.unique`."""
        return AsyncUnique(self._ctx, self._driver, name, ttl=ttl)

    def rate_limiter(
        self, name: str, limit: int, per: float | timedelta, algorithm: str = "sliding_window",
        *, burst: int | None = None, fail_closed: bool = False,
    ) -> AsyncRateLimiter:  # fmt: skip
        """See :meth:`Cache.rate_limiter`."""
        return AsyncRateLimiter(
            self._ctx, self._driver, name, limit, per, algorithm,
            burst=burst, fail_closed=fail_closed,
        )  # fmt: skip
