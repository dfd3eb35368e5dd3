"""``cache.ping()`` and ``cache.health()``: is Redis usable, and if not, why and what to do.

Fail-open keeps an application answering while Redis is down or misconfigured, so nothing
in its responses says the cache is not working. ``health()`` does: it sends one PING
(around the circuit breaker, so it tells the truth even while the breaker is open) and
reports the cause in words a person can act on::

    >>> cache.health()                                           # doctest: +SKIP
    Health(ok=False, url='redis://127.0.0.1:6379/99', error='DB index 99 is out of range
    for redis://127.0.0.1:6379/99 (...): fix the /DB at the end of the URL, ...',
    breaker='open', failures=2, latency_ms=None, owed=0)

A health check endpoint can return ``health.as_dict()`` as JSON.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

from .breaker import Breaker
from .errors import CacheUnavailableError, CircuitOpenError, translate
from .plans import Context

__all__ = ["Health", "server_url"]

log = logging.getLogger("hitrate")


@dataclass(frozen=True)
class Health:
    """The state of a cache's connection to Redis, as :meth:`Cache.health` found it."""

    ok: bool  #: Redis answered PING just now
    url: str  #: the server, without its password
    error: str | None  #: why not, and what to do (None when ok)
    breaker: str  #: ``"closed"``, ``"open"`` or ``"half-open"``
    failures: int  #: consecutive outage failures the breaker has counted
    latency_ms: float | None  #: the PING's round trip (None when it failed)
    owed: int  #: invalidations waiting for Redis to come back
    #: the near cache, if any: ``live`` (invalidations flowing, copies served),
    #: ``entries``, ``refused``, ``evicted``, ``outages``, ``reconnects``
    near: dict[str, Any] | None = None

    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        if self.ok:
            return (
                f"Redis at {self.url} is healthy ({self.latency_ms:.1f} ms, breaker {self.breaker})"
            )
        return f"Redis at {self.url} is NOT healthy: {self.error} (breaker {self.breaker})"

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-ready values, for a health-check endpoint."""
        return asdict(self)


def _auth(kwargs: dict[str, Any]) -> str:
    user = kwargs.get("username")
    return f"{user}:****@" if user else (":****@" if kwargs.get("password") else "")


def _cluster_url(client: Any) -> str:
    # The nodes the client knows now (after failovers), else the ones it was given.
    manager = client.nodes_manager
    nodes = list(getattr(manager, "nodes_cache", {}).values()) or list(
        manager.startup_nodes.values()
    )
    hosts = ",".join(sorted({f"{n.host}:{n.port}" for n in nodes})) or "?"
    kwargs = dict(getattr(manager, "connection_kwargs", {}))
    tls = kwargs.get("ssl") or "SSL" in getattr(kwargs.get("connection_class"), "__name__", "")
    return f"{'rediss' if tls else 'redis'}+cluster://{_auth(kwargs)}{hosts}"


def _sentinel_url(pool: Any) -> str:
    hosts = []
    for sentinel in pool.sentinel_manager.sentinels:
        kw = sentinel.connection_pool.connection_kwargs
        hosts.append(f"{kw.get('host', 'localhost')}:{kw.get('port', 26379)}")
    kwargs = pool.connection_kwargs
    scheme = "rediss" if "SSL" in pool.connection_class.__name__ else "redis"
    return (
        f"{scheme}+sentinel://{_auth(kwargs)}{','.join(hosts)}/{pool.service_name}"
        f"/{kwargs.get('db', 0)}"
    )


def server_url(client: Any) -> str:
    """``redis://host:port/db`` (``rediss://`` for TLS, ``unix://`` for a socket,
    ``redis+sentinel://sentinels/service/db`` and ``redis+cluster://nodes`` for the other
    topologies) of a redis-py client, never with its password; ``"Redis"`` if the client
    does not say."""
    if hasattr(client, "nodes_manager"):  # redis.cluster / redis.asyncio.cluster
        try:
            return _cluster_url(client)
        except (AttributeError, TypeError, RuntimeError):  # RuntimeError: changed meanwhile
            return "Redis Cluster"
    pool = getattr(client, "connection_pool", None)
    if hasattr(pool, "sentinel_manager") and hasattr(pool, "service_name"):
        try:
            return _sentinel_url(pool)
        except (AttributeError, TypeError):
            return "Redis (Sentinel)"
    kwargs = getattr(pool, "connection_kwargs", None)
    if not isinstance(kwargs, dict):
        return "Redis"
    db = kwargs.get("db", 0)
    if kwargs.get("path"):
        return f"unix://{kwargs['path']}?db={db}"
    cls = getattr(pool, "connection_class", type)
    scheme = "rediss" if "SSL" in cls.__name__ else "redis"
    host, port = kwargs.get("host", "localhost"), kwargs.get("port", 6379)
    return f"{scheme}://{_auth(kwargs)}{host}:{port}/{db}"


_REFUSALS_LOGGED = 256  # distinct refusals logged at WARNING per process, then DEBUG
_refusals: set[str] = set()
_refusals_lock = threading.Lock()


def refused(cause: str) -> None:
    """Log a refused command (``WRONGTYPE`` at one key, ...) at WARNING, once per distinct
    cause; past a bound, at DEBUG, so a broken key cannot flood the log or the memory."""
    with _refusals_lock:
        first = cause not in _refusals and len(_refusals) < _REFUSALS_LOGGED
        if first:
            _refusals.add(cause)
    log.log(logging.WARNING if first else logging.DEBUG, "hitrate: %s", cause)


def owed(ctx: Context) -> int:
    """How many invalidations (keys, tags, patterns) are waiting for Redis."""
    return len(ctx.owed)


def report(
    client: Any, breaker: Breaker, ctx: Context, started: float, error: BaseException | None
) -> Health:
    """The :class:`Health` for a PING sent at *started* (``time.perf_counter()``) that
    succeeded (*error* None) or raised *error*."""
    url = server_url(client)
    latency = None
    cause = None
    if error is None:
        latency = round((time.perf_counter() - started) * 1000, 3)
    else:
        err = translate(error, "PING", url)
        if err is None:
            raise error
        cause = err.cause
    return Health(
        ok=error is None,
        url=url,
        error=cause,
        breaker=breaker.state,
        failures=breaker.failures,
        latency_ms=latency,
        owed=owed(ctx),
        near=ctx.near.state() if ctx.near is not None else None,
    )


def unreachable(
    exc: CacheUnavailableError, client: Any, breaker: Breaker, what: str
) -> CacheUnavailableError:
    """*exc* restated for a call with nothing to fall back on (``stats()``): Redis is
    unreachable at which URL, and why (the breaker's cause when it skipped Redis)."""
    if not exc.outage:
        return exc
    cause = (breaker.cause if isinstance(exc, CircuitOpenError) else None) or exc.cause
    message = f"Redis is unreachable at {server_url(client)}, so {what} failed: {cause}"
    return type(exc)(message, cause=cause)
