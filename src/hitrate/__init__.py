"""hitrate: Redis caching done right, in a few lines.

>>> from hitrate import Cache, USER                                       # doctest: +SKIP
>>> cache = Cache.from_url(prefix="app", policies={"user": USER})        # doctest: +SKIP
>>> cache.get_or_fetch("user:42", lambda: db.load_user(42))              # doctest: +SKIP
"""

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
from .plans import MISSING
from .policy import AGGREGATE, COUNTER, REFERENCE, USER, Policy
from .structures import Decision, Ranked

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
    "PickleCodec",
    "Policy",
    "Ranked",
    "SerializationError",
    "ValueTooLargeError",
    "__version__",
    "escape_glob",
    "key",
]
