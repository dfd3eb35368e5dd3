"""``Cache`` and ``AsyncCache``: the public verbs. Each is a thin call into a plan
(:mod:`hitrate.plans`) run by the sync or async driver (:mod:`hitrate.drivers`)."""

from __future__ import annotations

import functools
import inspect
import os
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar, cast

import redis
import redis.asyncio as aredis
from redis.backoff import NoBackoff
from redis.retry import Retry

from . import plans
from .breaker import Breaker
from .codec import Codec, make_codec
from .drivers import AsyncDriver, SyncDriver
from .errors import CacheUnavailableError, ConfigurationError
from .keys import KeySpace, key_builder
from .plans import MISSING, Context
from .policy import USER, Policy, TTLLike, to_policy
from .stats import Counters

__all__ = ["AsyncCache", "Cache"]

F = TypeVar("F", bound=Callable[..., Any])
DEFAULT_URL = "redis://localhost:6379/0"


def resolve_url(url: str | None) -> str:
    """``url``, else ``HITRATE_REDIS_URL``, else ``REDIS_URL``, else localhost."""
    return url or os.environ.get("HITRATE_REDIS_URL") or os.environ.get("REDIS_URL") or DEFAULT_URL


def _client_options(timeout: float, connect_timeout: float) -> dict[str, Any]:
    # Short timeouts and no retries: a cache that waits seconds for Redis is worse than none.
    return {
        "socket_timeout": timeout,
        "socket_connect_timeout": connect_timeout,
        "retry": Retry(NoBackoff(), 0),
        "retry_on_timeout": False,
        "health_check_interval": 0,
    }


class _CacheBase:
    """Configuration shared by :class:`Cache` and :class:`AsyncCache`."""

    def __init__(
        self,
        client: Any,
        *,
        prefix: str = "hitrate",
        policies: Mapping[str, TTLLike] | None = None,
        default_ttl: TTLLike = USER,
        codec: str | Codec = "json",
        pickle_secret: bytes | None = None,
        max_value_size: int = 1024 * 1024,
        strict: bool = False,
        breaker: Breaker | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
        write_window: float = 30.0,
    ) -> None:
        kwargs = getattr(getattr(client, "connection_pool", None), "connection_kwargs", {})
        if kwargs.get("decode_responses"):
            raise ConfigurationError(
                "hitrate stores binary entries: create the Redis client with "
                "decode_responses=False (the default), or use Cache.from_url()"
            )
        if not isinstance(max_value_size, int) or max_value_size < 64:
            raise ConfigurationError("max_value_size must be an int of at least 64 bytes")
        default = to_policy(default_ttl, USER)
        self.client = client
        self.strict = strict
        self.breaker = breaker or Breaker()
        self._ctx = Context(
            keys=KeySpace(prefix),
            codec=make_codec(codec, pickle_secret),
            default_policy=default,
            policies={name: to_policy(p, default) for name, p in (policies or {}).items()},
            max_value_size=max_value_size,
            write_window=write_window,
            rng=rng or random.Random(),
            clock=clock,
            stats=Counters(),
        )

    @property
    def prefix(self) -> str:
        return self._ctx.keys.prefix

    @property
    def counters(self) -> Counters:
        """This process's per-family counters (hits, misses, loads, errors, ...)."""
        return self._ctx.stats

    def policy_for(self, key: str, ttl: TTLLike = None) -> Policy:
        """The policy a write of *key* would use (family default unless *ttl* is given)."""
        return self._ctx.policy(key, ttl)

    def redis_key(self, key: str) -> str:
        """The Redis key that holds *key*'s entry, e.g. ``app:{user:42}``."""
        return self._ctx.keys.entry(key)

    def _decorate(self, func: Any, ttl: TTLLike, key: str | None, tags: Sequence[str]) -> Any:
        raise NotImplementedError

    def cached(
        self, ttl: TTLLike = None, *, key: str | None = None, tags: Sequence[str] = ()
    ) -> Callable[[F], F]:
        """Cache a function's results (cache-aside with leases).

        ``key`` is a format string over the function's parameters (``"user:{user_id}"``);
        without it the key is ``module.function:<stable hash of the arguments>``.
        The wrapper gets ``.invalidate(*args, **kwargs)`` and ``.key(*args, **kwargs)``::

            @cache.cached(ttl=USER, key="user:{user_id}")
            def get_user(user_id: int) -> dict: ...

            get_user.invalidate(user_id=42)
        """
        if callable(ttl) and not isinstance(ttl, Policy):
            raise ConfigurationError("use @cache.cached() with parentheses")

        def decorate(func: F) -> F:
            return cast(F, self._decorate(func, ttl, key, tuple(tags)))

        return decorate


class Cache(_CacheBase):
    """A Redis cache for synchronous code. All verbs are thread-safe.

    >>> cache = Cache.from_url("redis://localhost:6379/0", prefix="app")   # doctest: +SKIP
    >>> cache.get_or_fetch("user:42", lambda: load_user(42))             # doctest: +SKIP
    """

    def __init__(self, client: Any, **options: Any) -> None:
        super().__init__(client, **options)
        self._driver = SyncDriver(client, self._ctx, strict=self.strict, breaker=self.breaker)
        self._twin: AsyncCache | None = None

    @classmethod
    def from_url(
        cls,
        url: str | None = None,
        *,
        timeout: float = 0.25,
        connect_timeout: float = 0.25,
        max_connections: int | None = None,
        **options: Any,
    ) -> Cache:
        """Connect to *url* (default: ``HITRATE_REDIS_URL``, ``REDIS_URL``, localhost) with
        short timeouts and no retry storms; *options* go to :class:`Cache`."""
        client = redis.Redis.from_url(
            resolve_url(url),
            max_connections=max_connections,
            **_client_options(timeout, connect_timeout),
        )
        return cls(client, **options)

    def get(self, key: str, default: Any = None) -> Any:
        """The cached value of *key*, or *default*. A cached ``None`` returns ``None``;
        pass ``default=hitrate.MISSING`` to tell the two apart."""
        return self._driver.run(plans.get(self._ctx, key, default))

    def set(self, key: str, value: Any, ttl: TTLLike = None) -> bool:
        """Cache *value* under *key* (TTL from *ttl* or the family's policy). Returns False
        when Redis was unreachable (fail-open; the key is invalidated when it returns)."""
        return bool(self._driver.run(plans.set_(self._ctx, key, value, ttl)))

    def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """The cached values of *keys* that are present, in one round trip (MGET)."""
        return cast(dict[str, Any], self._driver.run(plans.get_many(self._ctx, keys)))

    def set_many(self, mapping: Mapping[str, Any], ttl: TTLLike = None) -> bool:
        """Cache several values in one round trip; nothing is written if one cannot be."""
        return bool(self._driver.run(plans.set_many(self._ctx, mapping, ttl)))

    def get_or_fetch(
        self, key: str, fetch: Callable[[], Any], ttl: TTLLike = None, tags: Sequence[str] = ()
    ) -> Any:
        """Cache-aside: the cached value, or ``fetch()``'s, cached for the next caller.

        One caller per key loads at a time (across threads and processes); a fill is
        refused if an invalidation or write ran while it loaded.
        """
        ctx = self._ctx
        rkey, family = ctx.keys.locate(key)
        try:  # the hit fast path: one GET, decided by the same function as the plan
            first: Any = self._driver.redis(("GET", rkey))
        except CacheUnavailableError as exc:
            if self.strict:
                raise
            first = exc
        else:
            value = plans.fresh_value(ctx, key, family, first, ctx.family_policy(family, ttl))
            if value is not MISSING:
                return value
        return self._driver.run(plans.get_or_fetch(ctx, key, ttl, tuple(tags)), fetch, first)

    def write_through(
        self,
        key: str,
        value: Any,
        save: Callable[[Any], Any],
        ttl: TTLLike = None,
        *,
        version: Callable[[Any], float] | None = None,
    ) -> Any:
        """``save(value)`` to the source of truth, then cache what was saved: *save*'s return
        value when it is not ``None`` (the stored row), else *value*. If another write or an
        invalidation of *key* overlapped, the entry is deleted instead, so the next read
        loads fresh. With ``version=lambda row: row["version"]`` the newer row wins.
        Returns what was cached."""
        return self._driver.run(
            plans.write_through(self._ctx, key, value, ttl, version), lambda: save(value)
        )

    def invalidate(self, *keys: str) -> int:
        """Delete *keys* and revoke their fill leases; returns how many entries existed."""
        return int(self._driver.run(plans.invalidate(self._ctx, keys)))

    def invalidate_pattern(self, pattern: str) -> int:
        """Invalidate every key under this cache's prefix matching the glob *pattern*, by
        SCAN (never KEYS). Escape untrusted parts with :func:`hitrate.escape_glob`."""
        return int(self._driver.run(plans.invalidate_pattern(self._ctx, pattern)))

    def invalidate_tag(self, tag: str) -> int:
        """Invalidate every entry filled with *tag*; fills in flight are refused."""
        return int(self._driver.run(plans.invalidate_tag(self._ctx, tag)))

    def close(self) -> None:
        """Wait for background refreshes, then close the connection pool."""
        self._driver.close()
        self.client.close()

    def __enter__(self) -> Cache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def aio(self) -> AsyncCache:
        """An :class:`AsyncCache` on the same server, prefix, policies and counters."""
        if self._twin is None:
            pool = self.client.connection_pool
            aclient = aredis.Redis(connection_pool=aredis.ConnectionPool(**pool.connection_kwargs))
            twin = AsyncCache.__new__(AsyncCache)
            twin.client, twin.strict, twin.breaker, twin._ctx = (
                aclient, self.strict, self.breaker, self._ctx,
            )  # fmt: skip
            twin._driver = AsyncDriver(aclient, self._ctx, strict=self.strict, breaker=self.breaker)
            self._twin = twin
        return self._twin

    def _decorate(self, func: Any, ttl: TTLLike, key: str | None, tags: Sequence[str]) -> Any:
        if inspect.iscoroutinefunction(func):
            return self.aio._decorate(func, ttl, key, tags)
        make_key = key_builder(func, key)
        get_or_fetch = self.get_or_fetch

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return get_or_fetch(make_key(*args, **kwargs), lambda: func(*args, **kwargs), ttl, tags)

        _attach(wrapper, make_key, self.invalidate)
        return wrapper


def _attach(wrapper: Any, make_key: Callable[..., str], invalidate: Callable[..., Any]) -> None:
    wrapper.key = make_key

    def invalidate_call(*args: Any, **kwargs: Any) -> Any:
        return invalidate(make_key(*args, **kwargs))

    invalidate_call.__doc__ = "Invalidate the cached result for these arguments."
    wrapper.invalidate = invalidate_call


class AsyncCache(_CacheBase):
    """The asyncio twin of :class:`Cache`: the same verbs, awaited."""

    def __init__(self, client: Any, **options: Any) -> None:
        super().__init__(client, **options)
        self._driver = AsyncDriver(client, self._ctx, strict=self.strict, breaker=self.breaker)

    @classmethod
    def from_url(
        cls,
        url: str | None = None,
        *,
        timeout: float = 0.25,
        connect_timeout: float = 0.25,
        max_connections: int | None = None,
        **options: Any,
    ) -> AsyncCache:
        """Like :meth:`Cache.from_url`, with a ``redis.asyncio`` client."""
        client = aredis.Redis.from_url(
            resolve_url(url),
            max_connections=max_connections,
            **_client_options(timeout, connect_timeout),
        )
        return cls(client, **options)

    async def get(self, key: str, default: Any = None) -> Any:
        """See :meth:`Cache.get`."""
        return await self._driver.run(plans.get(self._ctx, key, default))

    async def set(self, key: str, value: Any, ttl: TTLLike = None) -> bool:
        """See :meth:`Cache.set`."""
        return bool(await self._driver.run(plans.set_(self._ctx, key, value, ttl)))

    async def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """See :meth:`Cache.get_many`."""
        return cast(dict[str, Any], await self._driver.run(plans.get_many(self._ctx, keys)))

    async def set_many(self, mapping: Mapping[str, Any], ttl: TTLLike = None) -> bool:
        """See :meth:`Cache.set_many`."""
        return bool(await self._driver.run(plans.set_many(self._ctx, mapping, ttl)))

    async def get_or_fetch(
        self,
        key: str,
        fetch: Callable[[], Awaitable[Any] | Any],
        ttl: TTLLike = None,
        tags: Sequence[str] = (),
    ) -> Any:
        """See :meth:`Cache.get_or_fetch`; *fetch* may be sync or async."""
        ctx = self._ctx
        rkey, family = ctx.keys.locate(key)
        try:  # the hit fast path, as in Cache.get_or_fetch
            first: Any = await self._driver.redis(("GET", rkey))
        except CacheUnavailableError as exc:
            if self.strict:
                raise
            first = exc
        else:
            value = plans.fresh_value(ctx, key, family, first, ctx.family_policy(family, ttl))
            if value is not MISSING:
                return value
        return await self._driver.run(plans.get_or_fetch(ctx, key, ttl, tuple(tags)), fetch, first)

    async def write_through(
        self,
        key: str,
        value: Any,
        save: Callable[[Any], Awaitable[Any] | Any],
        ttl: TTLLike = None,
        *,
        version: Callable[[Any], float] | None = None,
    ) -> Any:
        """See :meth:`Cache.write_through`; *save* may be sync or async."""
        return await self._driver.run(
            plans.write_through(self._ctx, key, value, ttl, version), lambda: save(value)
        )

    async def invalidate(self, *keys: str) -> int:
        """See :meth:`Cache.invalidate`."""
        return int(await self._driver.run(plans.invalidate(self._ctx, keys)))

    async def invalidate_pattern(self, pattern: str) -> int:
        """See :meth:`Cache.invalidate_pattern`."""
        return int(await self._driver.run(plans.invalidate_pattern(self._ctx, pattern)))

    async def invalidate_tag(self, tag: str) -> int:
        """See :meth:`Cache.invalidate_tag`."""
        return int(await self._driver.run(plans.invalidate_tag(self._ctx, tag)))

    async def close(self) -> None:
        """Wait for background refreshes, then close the connection pool."""
        await self._driver.close()
        await self.client.aclose()

    async def __aenter__(self) -> AsyncCache:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _decorate(self, func: Any, ttl: TTLLike, key: str | None, tags: Sequence[str]) -> Any:
        if not inspect.iscoroutinefunction(func):
            raise ConfigurationError(
                f"AsyncCache.cached() wraps coroutine functions; {func.__qualname__} is not "
                "one. Use Cache.cached() for plain functions"
            )
        make_key = key_builder(func, key)

        get_or_fetch = self.get_or_fetch

        @functools.wraps(func)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            return await get_or_fetch(
                make_key(*args, **kwargs), lambda: func(*args, **kwargs), ttl, tags
            )

        _attach(wrapper, make_key, self.invalidate)
        return wrapper
