"""hitrate's exceptions: one tree, rooted at :class:`HitrateError`.

::

    HitrateError
    ├── ConfigurationError (ValueError)      bad argument to a constructor or policy
    ├── InvalidKeyError (ValueError)         a key hitrate cannot store (empty, wrong type),
    │                                        also a structure name, object id or identity
    ├── InvalidArgumentError (ValueError)    a bad argument to a data-structure verb: a
    │                                        non-numeric score, a cost over the limit
    ├── SerializationError (TypeError)       a value the codec cannot store exactly
    ├── ValueTooLargeError (ValueError)      an encoded value over ``max_value_size``
    ├── CacheUnavailableError (ConnectionError)
    │   │                                    Redis unreachable, timed out or refused a
    │   │                                    command; raised with ``strict=True``, and by
    │   │                                    leaderboards, seen sets and unique counts,
    │   │                                    which have nothing to fall back on
    │   ├── CircuitOpenError                 the breaker is open: Redis was not even tried
    │   ├── MisconfiguredError               wrong password, DB index out of range, TLS
    │   │                                    mismatch, unknown host: logged at WARNING
    │   └── CommandRefusedError              the server refused this one command (WRONGTYPE
    │                                        at the key, ...): not an outage, the breaker
    │                                        stays closed and other keys stay cached
    └── LoaderError (RuntimeError)           the loader failed in another process while
                                             this caller waited for its fill

redis-py's exceptions are translated in one place, :func:`translate`, so code using hitrate
never needs to import ``redis.exceptions``.
"""

from __future__ import annotations

import re
import socket
import ssl

import redis.exceptions as rexc

__all__ = [
    "CacheUnavailableError",
    "CircuitOpenError",
    "CommandRefusedError",
    "ConfigurationError",
    "HitrateError",
    "InvalidArgumentError",
    "InvalidKeyError",
    "LoaderError",
    "MisconfiguredError",
    "SerializationError",
    "ValueTooLargeError",
    "translate",
]


class HitrateError(Exception):
    """Root of every exception hitrate raises on purpose."""


class ConfigurationError(HitrateError, ValueError):
    """A constructor, policy or decorator was given an argument it cannot use."""


class InvalidKeyError(HitrateError, ValueError):
    """A cache key that hitrate cannot store (not a string, empty, or too long)."""


class InvalidArgumentError(HitrateError, ValueError):
    """A data-structure verb was given an argument it cannot use (a score that is not a
    number, a rate-limit cost larger than the limit, ...). Nothing was written."""


class SerializationError(HitrateError, TypeError):
    """The codec cannot store this value so that a hit returns it equal and of the same type
    (for example a ``datetime`` with the JSON codec and no ``type=``), or the value is not of
    the declared ``type=``. The message names the key, where in the value, and the fix.
    Raised before anything is written."""


class ValueTooLargeError(HitrateError, ValueError):
    """The encoded value is larger than the cache's ``max_value_size``; nothing was written."""


class CacheUnavailableError(HitrateError, ConnectionError):
    """Redis could not serve a cache operation (connection, timeout or server error).

    In the default fail-open mode this never reaches the caller: reads fall back to the
    loader and the error is counted. With ``strict=True`` it is raised.

    ``cause`` says what went wrong in words a person can act on (no operation or key in
    it, so one outage has one cause); ``outage`` is True when Redis as a whole cannot
    serve (these count toward opening the circuit breaker), False for
    :class:`CommandRefusedError`. ``refused`` is True when Redis answered and refused the
    command itself (``WRONGTYPE``, ``NOPERM``): sending it again will not help until
    something changes, so work owed since an outage is dropped (and logged), not retried.
    """

    outage: bool = True
    refused: bool = False

    def __init__(
        self, message: str = "", *, cause: str | None = None, refused: bool | None = None
    ) -> None:
        super().__init__(message)
        self.cause = cause if cause is not None else message
        if refused is not None:
            self.refused = refused


class CircuitOpenError(CacheUnavailableError):
    """Redis failed recently and the circuit breaker is open, so it was not tried."""


class LoaderError(HitrateError, RuntimeError):
    """The loader raised in the caller that held the fill lease, in another process.

    Callers in the same process as the failing loader get the original exception instead.
    """


class MisconfiguredError(CacheUnavailableError):
    """Redis cannot be used as configured, and will not be until the configuration changes:
    a wrong password, a DB index out of range, ``rediss://`` to a server without TLS, an
    unknown host, a user without the permissions hitrate needs.

    Fail-open still serves the loaders' values, but the cause is logged once at WARNING on
    the ``hitrate`` logger, and ``cache.health()`` states it with the fix.
    """


class CommandRefusedError(CacheUnavailableError):
    """The server answered, but refused this one command: ``WRONGTYPE`` (another program
    wrote a list or hash under the entry's key), a script error, a bad argument.

    Not an outage: the call fails open (strict mode raises this), the error is counted for
    the key's family, and the circuit breaker stays closed, so every other key stays cached.
    """

    outage = False
    refused = True


# Server states that refuse every command for a while, whatever the key: outages.
_SERVER_STATES = re.compile(
    r"\b(LOADING|READONLY|MASTERDOWN|OOM|BUSY|CLUSTERDOWN|TRYAGAIN|NOREPLICAS|MISCONF)\b"
)
_STATE_WORDS = {
    rexc.BusyLoadingError: "LOADING",
    rexc.ReadOnlyError: "READONLY",
    rexc.MasterDownError: "MASTERDOWN",
    rexc.OutOfMemoryError: "OOM",
    rexc.ClusterDownError: "CLUSTERDOWN",
    rexc.TryAgainError: "TRYAGAIN",
}
_STATE_ADVICE = {
    "LOADING": "is loading its dataset into memory; it answers again when that is done",
    "READONLY": "is a read-only replica (a primary demoted by a failover, or a URL naming a "
    "replica): point the URL at the primary, or use redis+sentinel:// to follow failovers",
    "MASTERDOWN": "is a replica that lost its primary",
    "OOM": "is out of memory (maxmemory reached, no key it may evict): raise maxmemory or "
    "set an eviction policy such as allkeys-lru",
    "BUSY": "is busy running a long script or function",
    "CLUSTERDOWN": "reports the cluster down (a failover under way, or slots not served)",
    "TRYAGAIN": "is migrating the slot (TRYAGAIN)",
    "NOREPLICAS": "has too few replicas to accept writes (min-replicas-to-write)",
    "MISCONF": "refuses writes because it cannot save its snapshot (MISCONF): check the "
    "server's disk and log",
}
_UNKNOWN_HOST = ("Name or service not known", "nodename nor servname", "name resolution")
# What redis-py's cluster client says (RedisClusterException, not a RedisError) when the
# command itself cannot go to one node: keys of different slots, no key. hitrate's bug, not
# an outage, like a CROSSSLOT reply.
_CLUSTER_MISUSE = (
    "same key slot",
    "Missing key",
    "Invalid args",
    "is blocked when running redis in cluster mode",
    "not implemented",
    "Too many targets",
    "deprecated in cluster mode",
)


def _chain(exc: BaseException) -> list[BaseException]:
    """*exc* and what it was raised from or during (redis-py hides the socket error there)."""
    out: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and len(out) < 5:
        out.append(cur)
        cur = cur.__cause__ or cur.__context__
    return out


def _text(exc: BaseException) -> str:
    return " ".join(str(e) for e in _chain(exc))


def _host(where: str) -> str:
    rest = where.split("://", 1)[-1].rsplit("@", 1)[-1].split("/", 1)[0]
    if "," in rest:  # the hosts of a Sentinel or Cluster URL
        return rest
    return rest.rsplit(":", 1)[0] or "?"


def _db(where: str) -> str:
    return where.rsplit("/", 1)[-1] if where.count("/") >= 3 else "?"


def _misconfiguration(exc: BaseException, where: str) -> str | None:
    """What is wrong with the configuration and how to fix it, if *exc* says so."""
    text = _text(exc)
    if isinstance(exc, rexc.AuthenticationError | rexc.AuthorizationError):
        low = text.lower()
        if "without any password configured" in low or "no password is set" in low:
            return (
                f"the URL gives a password but {where} has none set (AUTH failed): "
                "remove the password from the URL"
            )
        if "@" not in where or "authentication required" in low or "noauth" in low:
            return (
                f"{where} requires a password (NOAUTH): put it in the URL, "
                "redis://:PASSWORD@host:port/db or redis://USER:PASSWORD@host:port/db"
            )
        return f"wrong password for {where} (AUTH failed): check the URL's user name and password"
    if isinstance(exc, rexc.NoPermissionError):
        return (
            f"the Redis user of {where} lacks a permission hitrate needs (NOPERM: {exc}): "
            "grant it with ACL SETUSER (commands GET, SET, DEL, UNLINK, EVALSHA, SCAN, INFO ... "
            "on the cache's prefix)"
        )
    if isinstance(exc, rexc.ResponseError) and "DB index is out of range" in text:
        return (
            f"DB index {_db(where)} is out of range for {where} (the server has fewer databases; "
            "16 by default, numbered 0-15): fix the /DB at the end of the URL, or raise the "
            "server's `databases` setting"
        )
    if where.startswith("rediss") and any(
        isinstance(e, ssl.SSLCertVerificationError) for e in _chain(exc)
    ):
        return (
            f"the TLS certificate of {where} could not be verified ({exc}): give the CA "
            "that signed it in the URL (rediss://host:port/db?ssl_ca_certs=/path/ca.crt), "
            "or fix the certificate's host name"
        )
    if where.startswith("rediss") and any(
        isinstance(e, ssl.SSLError) or "handshake" in str(e) or "SSL" in str(e) for e in _chain(exc)
    ):
        return (
            f"TLS handshake with {where} failed (the server does not seem to speak TLS): "
            "use redis:// instead of rediss://, or enable TLS on the server"
        )
    if isinstance(exc, rexc.ConnectionError) and (
        any(isinstance(e, socket.gaierror) for e in _chain(exc))
        or any(words in text for words in _UNKNOWN_HOST)
    ):
        return f"unknown host {_host(where)!r} in {where} (DNS lookup failed): check the URL's host"
    if (
        isinstance(exc, rexc.RedisClusterException)
        and "cluster mode is not enabled" in text.lower()
    ):
        return (
            f"{where} is not a Redis Cluster (cluster mode is not enabled on its nodes): use "
            "redis://host:port/db for one server, or enable cluster-enabled on the servers"
        )
    return None


def _topology_failure(exc: BaseException, what: str, where: str) -> CacheUnavailableError | None:
    """Sentinel and Cluster failures that are not plain socket errors: a cluster that
    cannot serve a slot, sentinels that know no primary (outages), and a command the
    cluster client cannot route (hitrate's bug: refused, not an outage)."""
    if isinstance(exc, rexc.SlotNotCoveredError):
        cause = f"the Redis Cluster at {where} has no live node for a slot ({exc})"
        return CacheUnavailableError(f"{cause} during {what}", cause=cause)
    if isinstance(exc, rexc.RedisClusterException):
        text = str(exc)
        if any(words in text for words in _CLUSTER_MISUSE):
            cause = f"the Redis Cluster client at {where} cannot send {what}: {text}"
            return CommandRefusedError(cause, cause=cause)
        cause = (
            f"the Redis Cluster at {where} cannot serve ({text.splitlines()[0] if text else exc!r})"
        )
        return CacheUnavailableError(f"{cause} during {what}", cause=cause)
    if isinstance(exc, rexc.ClusterError):  # not CLUSTERDOWN (a server state, below)
        cause = f"the Redis Cluster at {where} failed ({exc})"
        return CacheUnavailableError(f"{cause} during {what}", cause=cause)
    if type(exc).__name__ in ("MasterNotFoundError", "SlaveNotFoundError"):
        cause = (
            f"the sentinels at {where} name no reachable primary ({exc}): a failover is under "
            "way, or the service name or the sentinels' addresses are wrong"
        )
        return CacheUnavailableError(f"{cause} during {what}", cause=cause)
    return None


def translate(exc: BaseException, what: str, where: str = "Redis") -> CacheUnavailableError | None:
    """Map a redis-py exception to hitrate's tree; ``None`` if it is not a Redis error.

    ``what`` names the operation and key and ``where`` the server (a URL without its
    password), so the message tells the user where it happened. The class says what kind
    of failure it is, which decides what the circuit breaker counts:

    * :class:`MisconfiguredError` (an outage that will not end by itself: wrong password,
      DB index out of range, TLS mismatch, unknown host, missing ACL permission);
    * :class:`CacheUnavailableError` with ``outage`` True: connection errors, timeouts,
      server states that refuse every key (LOADING, READONLY, MASTERDOWN, BUSY,
      CLUSTERDOWN, TRYAGAIN, NOREPLICAS, MISCONF), a Redis Cluster that cannot serve
      (redis-py's ``RedisClusterException``, ``SlotNotCoveredError``, ``ClusterError``) and
      sentinels that name no primary (``MasterNotFoundError``);
    * :class:`CommandRefusedError` (``outage`` False): an error reply about this command
      or key, such as ``WRONGTYPE``, or a command the cluster client cannot route (keys
      of two slots: CROSSSLOT); other keys are unaffected. ``OOM`` (maxmemory reached
      under ``noeviction``) is one too: writes are refused while reads go on.

    Each carries ``cause``: what went wrong, in words a person can act on.
    """
    if isinstance(exc, CacheUnavailableError):
        return exc
    cause = _misconfiguration(exc, where)
    if cause is not None:
        err = MisconfiguredError(f"{cause} (during {what})", cause=cause)
        if isinstance(exc, rexc.NoPermissionError):
            # Redis answered: this command is not allowed, others may be (a user allowed
            # GET but not EVALSHA still serves hits). Not an outage; said once; owed work
            # it refuses is dropped.
            err.outage, err.refused = False, True
        return err
    if isinstance(exc, rexc.AskError) and "+cluster" not in where:
        # A one-server client on a Cluster node: keys of its slots work, others answer
        # MOVED. Said once (the cause names no key); not an outage: Redis answered.
        cause = (
            f"{where} is a Redis Cluster node (it answered MOVED for a key of another node): "
            "connect with redis+cluster://host:port[,host2:port2...] so that every key "
            "reaches the node that holds it"
        )
        err = MisconfiguredError(f"{cause} (during {what})", cause=cause)
        err.outage, err.refused = False, True
        return err
    if not isinstance(exc, rexc.ClusterDownError | rexc.TryAgainError):
        failure = _topology_failure(exc, what, where)
        if failure is not None:
            return failure
    state = next((w for cls, w in _STATE_WORDS.items() if isinstance(exc, cls)), None)
    if state is None and isinstance(exc, rexc.ResponseError):
        found = _SERVER_STATES.search(str(exc))
        state = found.group(1) if found else None
    if state == "OOM":
        # Writes are refused, reads still work: not an outage (the breaker stays closed and
        # hits go on being served), logged once; work owed meanwhile is kept and retried.
        cause = f"{where} {_STATE_ADVICE[state]} (OOM: writes are refused, reads go on)"
        return CommandRefusedError(f"{cause} (during {what})", cause=cause, refused=False)
    if state is not None:
        cause = f"{where} {_STATE_ADVICE[state]} ({state}: {exc})"
        return CacheUnavailableError(f"{cause} (during {what})", cause=cause)
    if isinstance(exc, rexc.TimeoutError):
        cause = f"Redis at {where} timed out ({exc})"
        return CacheUnavailableError(f"{cause} during {what}", cause=cause)
    if isinstance(exc, rexc.ConnectionError):
        cause = f"Redis is unreachable at {where} ({str(exc).rstrip('.')})"
        if (
            where.startswith("redis")
            and not where.startswith("rediss")
            and any(isinstance(e, ConnectionResetError) for e in _chain(exc))
        ):  # what a TLS-only port does to a plain connection
            cause += "; if the server's port expects TLS, use rediss:// instead of redis://"
        return CacheUnavailableError(f"{cause} during {what}", cause=cause)
    if isinstance(exc, rexc.DataError | rexc.ResponseError):
        cause = f"{where} refused {what}: {exc}"
        if "WRONGTYPE" in str(exc):
            cause += (
                " (another program wrote a different type of value at the cache's key: "
                "delete that key, the cache refills it, and keep other writers off the prefix)"
            )
        return CommandRefusedError(cause, cause=cause)
    if isinstance(exc, rexc.RedisError | OSError):
        cause = f"network error talking to {where} ({exc})"
        return CacheUnavailableError(f"{cause} during {what}", cause=cause)
    if client_failure(exc):
        cause = (
            f"the Redis client failed talking to {where} ({type(exc).__name__}: {exc}, "
            "raised inside redis-py)"
        )
        return CacheUnavailableError(f"{cause} during {what}", cause=cause)
    return None


def client_failure(exc: BaseException) -> bool:
    """Did redis-py itself fail (an ``AttributeError`` on a connection another task closed
    under it, say) rather than report a Redis error? Judged by where it was raised: the
    innermost frame is redis-py's. Such a failure is an outage like a dropped connection
    (the call fails open); an error raised in hitrate's own code is not one."""
    if not isinstance(exc, Exception) or isinstance(exc, rexc.RedisError):
        return False
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    path = tb.tb_frame.f_code.co_filename.replace("\\", "/")
    return "/redis/" in path and "/hitrate/" not in path
