"""Connecting: URLs, client options and pools, and the options a cache takes.

``Cache.from_url`` / ``AsyncCache.from_url`` build their redis-py clients here: short
timeouts and no retries (a cache that waits seconds for Redis is worse than none), and a
bounded blocking pool, so a busy program waits briefly for a connection instead of opening
more. The URL picks the topology:

* ``redis://[user:pass@]host:port/db``, ``rediss://`` (TLS), ``unix:///path?db=0``: one
  server;
* ``redis+sentinel://[user:pass@]h1:26379,h2:26379/<service>[/db][?sentinel_password=...]``
  (``rediss+sentinel://``): the primary the sentinels name, followed through failovers;
  ``user:pass`` is the server's, ``sentinel_username`` / ``sentinel_password`` the
  sentinels';
* ``redis+cluster://[user:pass@]h1:p1,h2:p2[?opts]`` (``rediss+cluster://``): Redis
  Cluster, with every host as a startup node; redirections are followed, cluster errors
  retried once.

The parsing is :func:`parse_url`; a URL it cannot use is a
:class:`~hitrate.ConfigurationError` naming the URL (password masked) and the fix.
"""

from __future__ import annotations

import os
import random
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypedDict
from urllib.parse import parse_qsl, unquote, urlencode

import redis
import redis.asyncio as aredis
import redis.asyncio.cluster as acluster
import redis.asyncio.retry as aretry
import redis.asyncio.sentinel as asentinel
import redis.cluster as rcluster
import redis.sentinel as rsentinel
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.exceptions import RedisClusterException
from redis.retry import Retry

from .breaker import Breaker
from .codec import Codec
from .errors import ConfigurationError
from .policy import TTLLike

if TYPE_CHECKING:  # near imports plans; connect stays light
    from .near import NearCache

__all__ = [
    "DEFAULT_URL",
    "MAX_CONNECTIONS",
    "CacheOptions",
    "Target",
    "async_client",
    "cluster_url",
    "async_twin",
    "mask_url",
    "parse_url",
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


# -- URLs ---------------------------------------------------------------------------------
_SCHEMES = {
    "redis": ("server", False),
    "rediss": ("server", True),
    "unix": ("server", False),
    "redis+sentinel": ("sentinel", False),
    "rediss+sentinel": ("sentinel", True),
    "redis+cluster": ("cluster", False),
    "rediss+cluster": ("cluster", True),
}
_DEFAULT_PORT = {"sentinel": 26379, "cluster": 6379}
_SENTINEL_OPTIONS = ("sentinel_username", "sentinel_password")
_HOW = {
    "sentinel": "redis+sentinel://[user:password@]host1:26379,host2:26379/SERVICE[/DB]"
    "[?sentinel_password=...]",
    "cluster": "redis+cluster://[user:password@]host1:6379,host2:6379",
}


def cluster_url(url: str | None) -> str:
    """*url* (resolved as :func:`resolve_url` does) as a ``redis+cluster://`` URL: what
    ``from_url(url, cluster=True)`` connects to (``redis://h:p`` -> ``redis+cluster://h:p``)."""
    url = resolve_url(url)
    scheme, sep, rest = url.partition("://")
    low = scheme.lower()
    if low in ("redis+cluster", "rediss+cluster"):
        return url
    if not sep or low not in ("redis", "rediss"):
        raise _bad(url, "cluster=True takes a redis:// or rediss:// URL of any node of the "
                   "cluster (or write redis+cluster://host1:port1,host2:port2)")  # fmt: skip
    return f"{low}+cluster://{rest}"


def mask_url(url: str) -> str:
    """*url* with its password (and a ``sentinel_password=``) replaced by ``****``."""
    masked = re.sub(r"(://[^/@]*?:)[^/@]*@", r"\1****@", url)
    return re.sub(r"((?:sentinel_)?password=)[^&]*", r"\1****", masked)


@dataclass(frozen=True)
class Target:
    """What a URL names: one ``server``, a ``sentinel``-managed primary, or a ``cluster``.

    ``hosts`` are the sentinels for Sentinel, the startup nodes for Cluster (one server's
    URL is left to redis-py: ``hosts`` is empty). ``options`` are the query options other
    than the sentinel credentials, for redis-py."""

    kind: str
    url: str
    tls: bool = False
    hosts: tuple[tuple[str, int], ...] = ()
    username: str | None = None
    password: str | None = None
    service: str | None = None
    db: int = 0
    options: dict[str, str] = field(default_factory=dict)
    sentinel_username: str | None = None
    sentinel_password: str | None = None
    #: Cluster only (``?replica_reads=yes``): plain reads (GET, MGET) go to replicas.
    replica_reads: bool = False

    def node_url(self, host: str, port: int) -> str:
        """A ``redis://`` (``rediss://``) URL of one node, with this URL's credentials and
        options: what redis-py parses for each node's connections."""
        auth = ""
        if self.username or self.password:
            user = _quote(self.username or "")
            auth = f"{user}:{_quote(self.password)}@" if self.password else f"{user}@"
        query = f"?{urlencode(self.options)}" if self.options else ""
        where = f"[{host}]" if ":" in host else host
        return f"{'rediss' if self.tls else 'redis'}://{auth}{where}:{port}/{self.db}{query}"


def _quote(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="")


def _bad(url: str, what: str) -> ConfigurationError:
    return ConfigurationError(f"bad Redis URL {mask_url(url)!r}: {what}")


def _hosts(url: str, kind: str, netloc: str) -> tuple[tuple[str, int], ...]:
    how = _HOW[kind]
    out: list[tuple[str, int]] = []
    for raw in netloc.split(","):
        part = raw.strip()
        if not part:
            raise _bad(url, f"an empty host in the list; write {how}")
        if part.startswith("["):  # [::1]:6379
            host, _, rest = part[1:].partition("]")
            port_text = rest[1:] if rest.startswith(":") else ""
            if rest and not rest.startswith(":"):
                raise _bad(url, f"{part!r} is not host:port; write {how}")
        else:
            host, _, port_text = part.partition(":")
        if not host:
            raise _bad(url, f"{part!r} has no host name; write {how}")
        if not port_text:
            out.append((host, _DEFAULT_PORT[kind]))
            continue
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise _bad(
                url, f"port {port_text!r} of {host!r} is not a port number (1-65535); write {how}"
            )
        out.append((host, int(port_text)))
    return tuple(out)


def parse_url(url: str) -> Target:
    """Read *url* (see the module's docstring for the forms); raises
    :class:`~hitrate.ConfigurationError`, naming the URL with its password masked and saying
    what to write, when it cannot be used."""
    if not isinstance(url, str):
        raise ConfigurationError(f"a Redis URL must be a string, not {url!r}")
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise _bad(url, "no scheme; write redis://host:6379/0 (or redis+sentinel://, "
                   "redis+cluster://, rediss:// for TLS, unix:///path/redis.sock)")  # fmt: skip
    found = _SCHEMES.get(scheme.lower())
    if found is None:
        known = ", ".join(f"{name}://" for name in _SCHEMES)
        raise _bad(url, f"unknown scheme {scheme + '://'!r}; use one of {known}")
    kind, tls = found
    if kind == "server":
        return Target("server", url, tls)
    how = _HOW[kind]
    rest, _, query = rest.partition("?")
    rest = rest.split("#", 1)[0]
    netloc, _, path = rest.partition("/")
    username = password = None
    if "@" in netloc:
        auth, _, netloc = netloc.rpartition("@")
        user, colon, secret = auth.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    if not netloc:
        raise _bad(url, f"no host; write {how}")
    hosts = _hosts(url, kind, netloc)
    options = dict(parse_qsl(query, keep_blank_values=True))
    sentinel = {name: options.pop(name, None) for name in _SENTINEL_OPTIONS}
    parts = [unquote(p) for p in path.split("/") if p]
    service: str | None = None
    db_text = options.pop("db", None)
    if kind == "sentinel":
        if not parts:
            raise _bad(url, f"no service name (the name the sentinels monitor); write {how}")
        service = parts.pop(0)
    elif sentinel["sentinel_password"] or sentinel["sentinel_username"]:
        raise _bad(url, "sentinel_username/sentinel_password are for redis+sentinel:// URLs")
    if parts:
        db_text = parts.pop(0)
    if parts:
        raise _bad(url, f"unexpected {'/'.join(parts)!r} at the end; write {how}")
    db = 0
    if db_text is not None and db_text != "":
        if not db_text.isdigit():
            raise _bad(url, f"database {db_text!r} is not a number; write {how}")
        db = int(db_text)
    if kind == "cluster" and db != 0:
        raise _bad(url, "Redis Cluster has only database 0: remove the /DB from the URL")
    replicas = options.pop("replica_reads", "no").lower()
    if replicas not in ("yes", "no", "true", "false", "1", "0"):
        raise _bad(url, f"replica_reads={replicas!r}: write replica_reads=yes or no")
    replica_reads = replicas in ("yes", "true", "1")
    if replica_reads and kind != "cluster":
        raise _bad(url, "replica_reads is for redis+cluster:// URLs")
    return Target(
        kind, url, tls, hosts, username, password, service, db, options,
        sentinel["sentinel_username"], sentinel["sentinel_password"], replica_reads,
    )  # fmt: skip


# redis-py's Sentinel, ClusterNode and parse_url carry no annotations.
_parse_url: Any = redis.connection.parse_url
_Sentinel: Any = rsentinel.Sentinel
_AsyncSentinel: Any = asentinel.Sentinel
_Node: Any = rcluster.ClusterNode
_AsyncNode: Any = acluster.ClusterNode


def _client_options(timeout: float, connect_timeout: float) -> dict[str, Any]:
    # Short timeouts and no retries: a cache that waits seconds for Redis is worse than none.
    return {
        "socket_timeout": timeout,
        "socket_connect_timeout": connect_timeout,
        "retry": Retry(NoBackoff(), 0),
        "retry_on_timeout": False,
        "health_check_interval": 0,
    }


#: How many times a cluster client tries a command again after a connection error or
#: CLUSTERDOWN (it reloads the slot map first): once, so a failover costs one retry, not a
#: storm. MOVED and ASK redirections are followed apart from this.
CLUSTER_RETRIES = 1


def _cluster_retry(retry_class: Any) -> Any:
    return retry_class(ExponentialWithJitterBackoff(base=0.01, cap=0.1), CLUSTER_RETRIES)


def _node_kwargs(target: Target) -> dict[str, Any]:
    """The connection settings in *target*'s credentials and query options, as redis-py
    reads them from a one-node URL."""
    host, port = target.hosts[0]
    kwargs = _parse_url(target.node_url(host, port))
    for name in ("host", "port", "db"):
        kwargs.pop(name, None)
    return dict(kwargs)


def _sentinel_kwargs(target: Target, timeout: float, connect_timeout: float) -> dict[str, Any]:
    # The sentinels are asked once per (re)connect: the same short timeouts, their own
    # credentials, TLS when the URL says rediss+sentinel:// (the TLS options too).
    kwargs: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": connect_timeout}
    if target.tls:
        node = _node_kwargs(target)
        kwargs.update({k: v for k, v in node.items() if k.startswith("ssl")})
        kwargs["connection_class"] = redis.SSLConnection
    if target.sentinel_username:
        kwargs["username"] = target.sentinel_username
    if target.sentinel_password:
        kwargs["password"] = target.sentinel_password
    return kwargs


class _BlockingSentinelPool(rsentinel.SentinelConnectionPool, redis.BlockingConnectionPool):
    """A Sentinel pool that waits for a free connection (up to ``timeout``) when all are
    busy, like the one-server pool, rather than failing at once."""


class _AsyncBlockingSentinelPool(asentinel.SentinelConnectionPool, aredis.BlockingConnectionPool):
    """The asyncio :class:`_BlockingSentinelPool`."""


def sync_client(
    url: str | None,
    timeout: float,
    connect_timeout: float,
    max_connections: int,
    pool_timeout: float,
) -> Any:
    """A ``redis.Redis`` on a bounded blocking pool; for ``redis+sentinel://`` one on the
    primary the sentinels name, for ``redis+cluster://`` a ``redis.cluster.RedisCluster``
    (one bounded blocking pool per node)."""
    url = resolve_url(url)
    target = parse_url(url)
    options = _client_options(timeout, connect_timeout)
    if target.kind == "cluster":
        return _sync_cluster(target, options, max_connections, pool_timeout)
    if target.kind == "sentinel":
        kwargs = {**_node_kwargs(target), **options}
        kwargs.pop("connection_class", None)  # the sentinel pool picks its own
        manager = _Sentinel(
            target.hosts, sentinel_kwargs=_sentinel_kwargs(target, timeout, connect_timeout)
        )
        return manager.master_for(
            target.service, connection_pool_class=_BlockingSentinelPool, db=target.db,
            ssl=target.tls, max_connections=max_connections, timeout=pool_timeout, **kwargs,
        )  # fmt: skip
    pool = redis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=pool_timeout, **options
    )
    return redis.Redis.from_pool(pool)


def _balancing(target: Target) -> dict[str, Any]:
    """``replica_reads=yes``: plain reads (GET, MGET, HGETALL) go to the replicas in turn;
    scripts and writes to the primaries. A replica lags its primary, so a read there can
    return an entry an acknowledged invalidation has already deleted (see the README)."""
    if not target.replica_reads:
        return {}
    return {"load_balancing_strategy": rcluster.LoadBalancingStrategy.ROUND_ROBIN_REPLICAS}


def replica_reads(client: Any) -> bool:
    """Does this cluster client send plain reads to replicas? (Any load-balancing strategy
    does: even ``ROUND_ROBIN`` takes replicas in turn with the primary.)"""
    return bool(getattr(client, "read_from_replicas", False)) or (
        getattr(client, "load_balancing_strategy", None) is not None
    )


def _sync_cluster(
    target: Target, options: dict[str, Any], max_connections: int, pool_timeout: float
) -> rcluster.RedisCluster | PendingCluster:
    options = dict(options)
    options.pop("retry")  # the cluster client retries (once); its nodes never do
    options.pop("health_check_interval")
    first, *others = target.hosts

    def make() -> rcluster.RedisCluster:
        # Given a URL, redis-py builds each node's pool with connection_pool_class: a
        # bounded blocking one here, as for one server.
        return rcluster.RedisCluster(
            url=target.node_url(*first),
            startup_nodes=[_Node(h, p) for h, p in others],
            retry=_cluster_retry(Retry),
            require_full_coverage=False,
            connection_pool_class=redis.BlockingConnectionPool,
            max_connections=max_connections,
            timeout=pool_timeout,
            **_balancing(target),
            **options,
        )

    try:
        return make()
    except RedisClusterException as exc:
        if "not enabled" in str(exc).lower():  # a plain server: the URL is wrong
            raise ConfigurationError(
                f"Redis Cluster at {mask_url(target.url)} could not be reached or is not a "
                f"cluster ({exc}): the server there is not a cluster node; use redis://"
            ) from exc
        # No node answered (yet): the cache fails open until one does, as a one-server
        # cache made while its server is down does.
        return PendingCluster(make, mask_url(target.url), exc)


class ClusterUnreachable(redis.ConnectionError, AttributeError):
    """No node of a Redis Cluster answered when its client was made. A ConnectionError
    (calls fail open), and an AttributeError, so ``getattr(client, name, default)`` on a
    :class:`PendingCluster` gives the default."""


class PendingCluster:
    """A sync Redis Cluster client to be made on first use: redis-py's reads the slot map
    when it is made, which needs a node to answer. ``from_url`` returns this when none does
    (a cluster restarting, a network blip at start-up), so the application starts, its
    calls fail open, and the client is made by the first call after a node answers."""

    cluster_client = True

    def __init__(self, make: Callable[[], Any], url: str, error: BaseException) -> None:
        self._make = make
        self._url = url
        self._error = error
        self._made: Any = None
        self._lock = threading.Lock()

    def _client(self) -> Any:
        client = self._made
        if client is None:
            with self._lock:
                if self._made is None:
                    try:
                        self._made = self._make()
                    except RedisClusterException as exc:
                        self._error = exc
                        raise ClusterUnreachable(
                            f"no node of the Redis Cluster at {self._url} answered ({exc})"
                        ) from exc
                client = self._made
        return client

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self._client(), name)

    def close(self) -> None:
        if self._made is not None:
            self._made.close()

    def __repr__(self) -> str:
        state = "made" if self._made is not None else f"not made yet: {self._error}"
        return f"<PendingCluster {self._url} ({state})>"


def async_client(
    url: str | None,
    timeout: float,
    connect_timeout: float,
    max_connections: int,
    pool_timeout: float,
) -> Any:
    """A ``redis.asyncio.Redis`` on a bounded blocking pool, or the Sentinel and Cluster
    clients of :func:`sync_client` from ``redis.asyncio`` (a cluster node's pool is bounded,
    and a task past the bound fails open at once)."""
    url = resolve_url(url)
    target = parse_url(url)
    options = _client_options(timeout, connect_timeout)
    if target.kind == "cluster":
        return _async_cluster(
            target.hosts, _node_kwargs(target), options, max_connections, _balancing(target)
        )
    if target.kind == "sentinel":
        kwargs = {**_node_kwargs(target), **options}
        kwargs.pop("connection_class", None)
        kwargs["retry"] = aretry.Retry(NoBackoff(), 0)
        manager = _AsyncSentinel(
            target.hosts, sentinel_kwargs=_sentinel_kwargs(target, timeout, connect_timeout)
        )
        return manager.master_for(
            target.service, connection_pool_class=_AsyncBlockingSentinelPool, db=target.db,
            ssl=target.tls, max_connections=max_connections, timeout=pool_timeout, **kwargs,
        )  # fmt: skip
    pool = aredis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=pool_timeout, **options
    )
    return aredis.Redis.from_pool(pool)


_ASYNC_CLUSTER_KEYS = (
    "username", "password", "credential_provider", "client_name", "encoding",
    "encoding_errors", "decode_responses", "socket_timeout", "socket_connect_timeout",
    "socket_keepalive", "socket_keepalive_options", "protocol", "ssl_ca_certs", "ssl_ca_data",
    "ssl_cert_reqs", "ssl_certfile", "ssl_check_hostname", "ssl_keyfile", "ssl_min_version",
    "ssl_ciphers",
)  # fmt: skip


def _async_cluster(
    hosts: Sequence[tuple[str, int]],
    kwargs: Mapping[str, Any],
    options: Mapping[str, Any],
    max_connections: int,
    balancing: Mapping[str, Any] | None = None,
) -> acluster.RedisCluster:
    settings = {k: v for k, v in {**kwargs, **options}.items() if k in _ASYNC_CLUSTER_KEYS}
    connection_class = kwargs.get("connection_class", type)
    ssl = bool(kwargs.get("ssl")) or "SSL" in getattr(connection_class, "__name__", "")
    return acluster.RedisCluster(
        startup_nodes=[_AsyncNode(h, p) for h, p in hosts],
        retry=_cluster_retry(aretry.Retry),
        require_full_coverage=False,
        max_connections=max_connections,
        ssl=ssl,
        **(balancing or {}),
        **settings,
    )


# -- twins: the same server from the other side (sync <-> asyncio) -------------------------
def _cluster_nodes(client: Any) -> list[tuple[str, int]]:
    nodes = client.get_nodes() or list(client.nodes_manager.startup_nodes.values())
    return [(n.host, int(n.port)) for n in nodes]


def _sync_cluster_twin(aclient: acluster.RedisCluster) -> rcluster.RedisCluster:
    kwargs = aclient.nodes_manager.connection_kwargs
    settings = {k: v for k, v in kwargs.items() if k in _ASYNC_CLUSTER_KEYS}
    if "SSL" in getattr(kwargs.get("connection_class"), "__name__", ""):
        settings["ssl"] = True
    return rcluster.RedisCluster(
        startup_nodes=[_Node(h, p) for h, p in _cluster_nodes(aclient)],
        retry=_cluster_retry(Retry),
        require_full_coverage=False,
        max_connections=2,
        **settings,
    )


def _sentinel_twin(client: Any, to_async: bool) -> Any:
    """A client of the other kind (sync or asyncio) on the primary of the sentinel-managed
    *client*, asking the same sentinels."""
    pool = client.connection_pool
    manager = pool.sentinel_manager
    sentinels = []
    for s in manager.sentinels:
        kw = s.connection_pool.connection_kwargs
        sentinels.append((kw.get("host", "localhost"), int(kw.get("port", 26379))))
    sentinel_kwargs = {k: v for k, v in manager.sentinel_kwargs.items() if k != "retry"}
    kwargs = {
        k: v
        for k, v in pool.connection_kwargs.items()
        if k not in ("connection_pool", "connection_class", "retry")
    }
    kwargs["ssl"] = "SSL" in pool.connection_class.__name__
    if to_async:
        ssl_class = sentinel_kwargs.pop("connection_class", None)
        if ssl_class is not None and "SSL" in ssl_class.__name__:
            sentinel_kwargs["connection_class"] = aredis.SSLConnection
        amanager = _AsyncSentinel(sentinels, sentinel_kwargs=sentinel_kwargs)
        kwargs["retry"] = aretry.Retry(NoBackoff(), 0)
        return amanager.master_for(pool.service_name, **kwargs)
    ssl_class = sentinel_kwargs.pop("connection_class", None)
    if ssl_class is not None and "SSL" in ssl_class.__name__:
        sentinel_kwargs["connection_class"] = redis.SSLConnection
    smanager = _Sentinel(sentinels, sentinel_kwargs=sentinel_kwargs)
    kwargs["retry"] = Retry(NoBackoff(), 0)
    kwargs["max_connections"] = 2
    return smanager.master_for(pool.service_name, **kwargs)


def sync_twin(aclient: Any) -> Any:
    """A sync client on the same server (sentinel-managed primary, cluster) as the asyncio
    client *aclient* (for the stats timer), or None when its connection settings cannot be
    carried over."""
    if isinstance(aclient, acluster.RedisCluster):
        try:
            return _sync_cluster_twin(aclient)
        except (RedisClusterException, redis.RedisError, TypeError):
            return None
    pool = getattr(aclient, "connection_pool", None)
    if isinstance(pool, asentinel.SentinelConnectionPool):
        try:
            return _sentinel_twin(aclient, to_async=False)
        except (TypeError, AttributeError):
            return None
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


def async_twin(client: Any) -> Any:
    """An asyncio client on the same server (sentinel-managed primary, cluster) as the sync
    client *client* (``Cache.aio``)."""
    if isinstance(client, rcluster.RedisCluster):
        kwargs = dict(client.nodes_manager.connection_kwargs)
        pool_size = kwargs.get("max_connections") or MAX_CONNECTIONS
        return _async_cluster(_cluster_nodes(client), kwargs, {}, pool_size)
    pool = client.connection_pool
    if isinstance(pool, rsentinel.SentinelConnectionPool):
        return _sentinel_twin(client, to_async=True)
    return aredis.Redis(connection_pool=aredis.ConnectionPool(**pool.connection_kwargs))
