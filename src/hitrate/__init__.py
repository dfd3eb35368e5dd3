"""hitrate: Redis caching done right, in a few lines.

>>> from hitrate import Cache, USER                                       # doctest: +SKIP
>>> cache = Cache.from_url(prefix="app", policies={"user": USER})        # doctest: +SKIP
>>> cache.get_or_fetch("user:42", lambda: db.load_user(42))              # doctest: +SKIP
"""

import importlib as _importlib
from typing import TYPE_CHECKING as _TYPE_CHECKING
from typing import Any as _Any

if _TYPE_CHECKING:  # the names below, imported on first use (see __getattr__)
    from .breaker import Breaker
    from .cache import AsyncCache, Cache
    from .codec import JsonCodec, MsgpackCodec, PickleCodec
    from .errors import (
        CacheUnavailableError,
        CircuitOpenError,
        CommandRefusedError,
        ConfigurationError,
        HitrateError,
        InvalidArgumentError,
        InvalidKeyError,
        LoaderError,
        MisconfiguredError,
        SerializationError,
        ValueTooLargeError,
    )
    from .health import Health
    from .keys import escape_glob, key
    from .near import NearCache
    from .plans import MISSING
    from .policy import AGGREGATE, COUNTER, REFERENCE, USER, Policy
    from .structures import Decision, Ranked

#: Where each public name lives. Importing ``hitrate`` imports none of them (redis-py,
#: the codecs...): a name is imported when first used, so ``import hitrate.testing`` (the
#: pytest plugin every test run of a project with hitrate installed loads) costs nothing.
_WHERE = {
    "Breaker": ".breaker",
    "AsyncCache": ".cache",
    "Cache": ".cache",
    "JsonCodec": ".codec",
    "MsgpackCodec": ".codec",
    "PickleCodec": ".codec",
    "Health": ".health",
    "escape_glob": ".keys",
    "key": ".keys",
    "NearCache": ".near",
    "MISSING": ".plans",
    "AGGREGATE": ".policy",
    "COUNTER": ".policy",
    "REFERENCE": ".policy",
    "USER": ".policy",
    "Policy": ".policy",
    "Decision": ".structures",
    "Ranked": ".structures",
    **dict.fromkeys(
        (
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
        ),
        ".errors",
    ),
}


def __getattr__(name: str) -> _Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module 'hitrate' has no attribute {name!r}")
    value = getattr(_importlib.import_module(where, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__version__ = "0.1.0.dev0"

__all__ = [
    "AGGREGATE",
    "COUNTER",
    "MISSING",
    "REFERENCE",
    "USER",
    "AsyncCache",
    "Breaker",
    "Cache",
    "CacheUnavailableError",
    "CircuitOpenError",
    "CommandRefusedError",
    "ConfigurationError",
    "Decision",
    "Health",
    "HitrateError",
    "InvalidArgumentError",
    "InvalidKeyError",
    "JsonCodec",
    "LoaderError",
    "MisconfiguredError",
    "MsgpackCodec",
    "NearCache",
    "PickleCodec",
    "Policy",
    "Ranked",
    "SerializationError",
    "ValueTooLargeError",
    "__version__",
    "escape_glob",
    "key",
]
