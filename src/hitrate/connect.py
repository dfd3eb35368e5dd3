"""Connecting: URLs, client options and pools, and the options a cache takes.

``Cache.from_url`` / ``AsyncCache.from_url`` build their redis-py clients here: short
timeouts and no retries (a cache that waits seconds for Redis is worse than none), and a
bounded blocking pool, so a busy program waits briefly for a connection instead of opening
more (the topologies of the Cluster issue - Sentinel, Cluster - will be made here too).
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypedDict

import redis
import redis.asyncio as aredis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .breaker import Breaker
from .codec import Codec
from .policy import TTLLike

if TYPE_CHECKING:  # near imports plans; connect stays light
    from .near import NearCache

__all__ = [
    "DEFAULT_URL",
    "MAX_CONNECTIONS",
    "CacheOptions",
    "async_client",
    "resolve_url",
    "sync_client",
    "sync_twin",
]

DEFAULT_URL = "redis://localhost:6379/0"
#: Connections per pool made by ``from_url``: a thread or task past this waits (up to
#: ``pool_timeout``) for one to be free instead of opening more.
MAX_CONNECTIONS = 64


class CacheOptions(TypedDict, total=False):
    """The keyword options of :class:`~hitrate.Cache` and :class:`~hitrate.AsyncCache`
    (also accepted by their ``from_url``); each is documented on ``Cache``."""

    prefix: str
    policies: Mapping[str, TTLLike] | None
    default_ttl: TTLLike
    codec: str | Codec
    pickle_secret: bytes | None
    secrets: Sequence[bytes] | None
    max_value_size: int
    compress_over: int
    strict: bool
    breaker: Breaker | None
    rng: random.Random | None
    clock: Callable[[], float]
    write_window: float
    count: bool
    flush_interval: float
    generation_check: float
    monotonic: Callable[[], float]
    sleep: Callable[[float], Any] | None
    near: NearCache | None
    wake: bool


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


def sync_client(
    url: str | None,
    timeout: float,
    connect_timeout: float,
    max_connections: int,
    pool_timeout: float,
) -> redis.Redis:
    """A ``redis.Redis`` on a bounded blocking pool."""
    pool = redis.BlockingConnectionPool.from_url(
        resolve_url(url),
        max_connections=max_connections,
        timeout=pool_timeout,
        **_client_options(timeout, connect_timeout),
    )
    return redis.Redis.from_pool(pool)


def async_client(
    url: str | None,
    timeout: float,
    connect_timeout: float,
    max_connections: int,
    pool_timeout: float,
) -> aredis.Redis:
    """A ``redis.asyncio.Redis`` on a bounded blocking pool."""
    pool = aredis.BlockingConnectionPool.from_url(
        resolve_url(url),
        max_connections=max_connections,
        timeout=pool_timeout,
        **_client_options(timeout, connect_timeout),
    )
    return aredis.Redis.from_pool(pool)


def sync_twin(aclient: Any) -> redis.Redis | None:
    """A sync client on the same server as the asyncio client *aclient* (for the stats
    timer), or None when its connection settings cannot be carried over."""
    pool = getattr(aclient, "connection_pool", None)
    classes: dict[str, Any] = {
        "Connection": redis.Connection,
        "SSLConnection": redis.SSLConnection,
        "UnixDomainSocketConnection": redis.UnixDomainSocketConnection,
    }
    sync_class = classes.get(getattr(pool, "connection_class", type).__name__)
    if pool is None or sync_class is None:
        return None
    kwargs = dict(pool.connection_kwargs)
    kwargs["retry"] = Retry(NoBackoff(), 0)
    try:
        sync_pool = redis.ConnectionPool(connection_class=sync_class, max_connections=2, **kwargs)
        sync_class(**kwargs)  # unknown settings fail now, not at exit
    except TypeError:
        return None
    return redis.Redis(connection_pool=sync_pool)


def async_twin(client: Any) -> aredis.Redis:
    """An asyncio client on the same server as the sync client *client* (``Cache.aio``)."""
    pool = client.connection_pool
    return aredis.Redis(connection_pool=aredis.ConnectionPool(**pool.connection_kwargs))
