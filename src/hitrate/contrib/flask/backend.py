"""``HitrateCache``: a Flask-Caching backend on hitrate (``CACHE_TYPE =
"hitrate.contrib.flask.HitrateCache"``), with cachelib's semantics, so ``@cache.cached``
and ``@cache.memoize`` code keeps working."""

from __future__ import annotations

import datetime as dt
import math
import pickle
from collections.abc import Mapping
from typing import Any, Final

from flask import Flask
from flask_caching.backends.base import BaseCache

from ...cache import Cache
from ...errors import ConfigurationError
from ...plans import MISSING
from ...policy import TTLLike
from ...stats import Stats
from .._ops import FOREVER, ROUNDS, FrameworkPickleCodec, SyncOps, derive_secrets, unwrap, wrap

__all__ = ["HitrateCache"]

#: CACHE_OPTIONS keys passed on to :meth:`hitrate.Cache.from_url`.
OPTION_NAMES: Final = frozenset(
    {
        "policies", "strict", "secrets", "timeout", "connect_timeout", "max_connections",
        "pool_timeout", "flush_interval", "count", "max_value_size", "generation_check",
        "write_window", "clock",
    }
)  # fmt: skip


class _Expired:
    """A negative timeout: the value expires at once."""


EXPIRED: Final = _Expired()


class HitrateCache(BaseCache):
    """A Flask-Caching backend on hitrate::

        app.config.update(
            CACHE_TYPE="hitrate.contrib.flask.HitrateCache",
            CACHE_REDIS_URL="redis://localhost:6379/0",   # or HITRATE_URL
            CACHE_KEY_PREFIX="shop",                       # the hitrate prefix (namespace)
            CACHE_OPTIONS={"policies": {"user": USER}},    # hitrate.Cache options
        )

    cachelib's semantics: ``timeout=None`` is ``CACHE_DEFAULT_TIMEOUT`` (or the key
    family's policy), ``0`` never expires; ``get`` returns ``None`` for a miss. Values are
    pickled and HMAC-signed with a key derived from ``SECRET_KEY`` (and
    ``SECRET_KEY_FALLBACKS`` for reading). Redis errors fail open: reads miss, writes
    return False. The :class:`hitrate.Cache` is at :attr:`hitrate`.
    """

    def __init__(
        self,
        cache: Cache,
        default_timeout: int | dt.timedelta = 300,
        ignore_delete_many_errors: bool = False,
    ) -> None:
        super().__init__(
            default_timeout=self._to_seconds(default_timeout),
            ignore_delete_many_errors=ignore_delete_many_errors,
        )
        self.hitrate = cache
        self._ops = SyncOps(cache._ctx, cache._driver)

    @classmethod
    def factory(
        cls, app: Flask, config: dict[str, Any], args: list[Any], kwargs: dict[str, Any]
    ) -> HitrateCache:
        """What Flask-Caching calls: a backend for *app* from its ``CACHE_*`` config."""
        options = dict(kwargs)
        default_timeout = options.pop("default_timeout", 300)
        ignore = options.pop("ignore_delete_many_errors", False)
        unknown = set(options) - OPTION_NAMES
        if unknown:
            raise ConfigurationError(
                f"hitrate.contrib.flask.HitrateCache: unknown CACHE_OPTIONS {sorted(unknown)}; "
                f"known: {sorted(OPTION_NAMES)}"
            )
        secrets = options.pop("secrets", None)
        if secrets is None:
            secrets = [s for s in [app.config.get("SECRET_KEY")] if s]
            secrets += list(app.config.get("SECRET_KEY_FALLBACKS") or ())
        if not secrets:
            raise ConfigurationError(
                "hitrate.contrib.flask.HitrateCache pickles values and signs them so that "
                "nothing but this app's entries is ever unpickled: set app.config"
                "['SECRET_KEY'], or CACHE_OPTIONS={'secrets': [<16+ random bytes>]}"
            )
        url = config.get("CACHE_REDIS_URL") or app.config.get("HITRATE_URL")
        prefix = str(config.get("CACHE_KEY_PREFIX") or "flask_cache").rstrip(":")
        seconds = cls._to_seconds(default_timeout)
        cache = Cache.from_url(
            url,
            prefix=prefix,
            default_ttl=FOREVER if seconds <= 0 else seconds,
            codec=FrameworkPickleCodec(*derive_secrets(list(secrets), "flask")),
            **options,
        )
        return cls(cache, default_timeout=default_timeout, ignore_delete_many_errors=ignore)

    def _ttl(self, timeout: int | dt.timedelta | None) -> TTLLike | _Expired:
        """cachelib's timeout as hitrate's ``ttl`` (None: the family's policy or default)."""
        if timeout is None:
            return None
        seconds = timeout.total_seconds() if isinstance(timeout, dt.timedelta) else timeout
        if seconds == 0:
            return FOREVER
        if seconds < 0:
            return EXPIRED
        return float(math.ceil(seconds))

    def get(self, key: str) -> Any:
        value = self.hitrate.get(key, MISSING)
        return None if value is MISSING else unwrap(value)

    def get_many(self, *keys: str) -> list[Any]:
        found = self.hitrate.get_many(keys)
        return [unwrap(found.get(key)) for key in keys]

    def set(self, key: str, value: Any, timeout: int | dt.timedelta | None = None) -> bool:
        ttl = self._ttl(timeout)
        if isinstance(ttl, _Expired):
            pickle.dumps(value, pickle.HIGHEST_PROTOCOL)  # an unpicklable value still raises
            self.hitrate.invalidate(key)
            return True
        return bool(self.hitrate.set(key, wrap(value), ttl))

    def add(self, key: str, value: Any, timeout: int | dt.timedelta | None = None) -> bool:
        ttl = self._ttl(timeout)
        if isinstance(ttl, _Expired):
            return not self._ops.has(key)
        return bool(self._ops.add(key, wrap(value), ttl))

    def set_many(
        self, mapping: Mapping[str, Any], timeout: int | dt.timedelta | None = None
    ) -> list[Any]:
        if not mapping:
            return []
        ttl = self._ttl(timeout)
        if isinstance(ttl, _Expired):
            self.hitrate.invalidate(*mapping)
            return list(mapping)
        data = {key: wrap(value) for key, value in mapping.items()}
        return list(mapping) if self.hitrate.set_many(data, ttl) else []

    def delete(self, key: str) -> bool:
        return bool(self.hitrate.invalidate(key))

    def delete_many(self, *keys: str) -> list[Any]:
        if keys:
            self.hitrate.invalidate(*keys)  # a key absent afterwards counts as deleted
        return list(keys)

    def has(self, key: str) -> bool:
        return bool(self._ops.has(key))

    def clear(self) -> bool:
        """Delete every entry under this cache's prefix, by SCAN (never FLUSHDB)."""
        self.hitrate.invalidate_pattern("*")
        return True

    def inc(self, key: str, delta: int = 1) -> Any:
        """Add *delta* atomically (compare-and-set), keeping the expiry; a missing key
        starts at *delta* (with the default timeout), as cachelib's backends do."""
        for _ in range(ROUNDS):
            try:
                return self._ops.incr(key, delta)
            except ValueError:
                if self._ops.add(key, delta, None):
                    return delta
        return None  # the key kept appearing and vanishing: cachelib's "backend error"

    def dec(self, key: str, delta: int = 1) -> Any:
        return self.inc(key, -delta)

    def stats(self, **kwargs: Any) -> Stats:
        """Hit rate per key family from every process (:meth:`hitrate.Cache.stats`)."""
        return self.hitrate.stats(**kwargs)
