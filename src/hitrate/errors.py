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
    │   └── CircuitOpenError                 the breaker is open: Redis was not even tried
    └── LoaderError (RuntimeError)           the loader failed in another process while
                                             this caller waited for its fill

redis-py's exceptions are translated in one place, :func:`translate`, so code using hitrate
never needs to import ``redis.exceptions``.
"""

from __future__ import annotations

import redis.exceptions as rexc

__all__ = [
    "CacheUnavailableError",
    "CircuitOpenError",
    "ConfigurationError",
    "HitrateError",
    "InvalidArgumentError",
    "InvalidKeyError",
    "LoaderError",
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
    """


class CircuitOpenError(CacheUnavailableError):
    """Redis failed recently and the circuit breaker is open, so it was not tried."""


class LoaderError(HitrateError, RuntimeError):
    """The loader raised in the caller that held the fill lease, in another process.

    Callers in the same process as the failing loader get the original exception instead.
    """


# Errors that mean "the server answered, but this command is wrong": a bug, never fail-open.
_PROGRAMMING_ERRORS = (rexc.DataError, rexc.ResponseError)


def translate(exc: BaseException, what: str) -> CacheUnavailableError | None:
    """Map a redis-py exception to hitrate's tree; ``None`` if it is not a Redis error.

    ``what`` names the operation and key, so the message tells the user where it happened.
    Server-side errors such as ``OOM`` or ``READONLY`` are availability problems; a
    ``WRONGTYPE`` reply means another program wrote a different type under our key, which is
    also treated as unavailable for that key (fail-open serves the loader's value).
    """
    if isinstance(exc, CacheUnavailableError):
        return exc
    if isinstance(exc, rexc.TimeoutError):
        return CacheUnavailableError(f"Redis timed out during {what}: {exc}")
    if isinstance(exc, rexc.ConnectionError):
        return CacheUnavailableError(f"Redis is unreachable during {what}: {exc}")
    if isinstance(exc, (*_PROGRAMMING_ERRORS, rexc.RedisError)):
        return CacheUnavailableError(f"Redis refused {what}: {exc}")
    if isinstance(exc, OSError):
        return CacheUnavailableError(f"network error during {what}: {exc}")
    return None
