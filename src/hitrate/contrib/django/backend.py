"""``HitrateCache``: a Django ``CACHES`` backend on hitrate, with Django's semantics.

Every call goes through a :class:`~hitrate.Cache` (and its asyncio twin for the ``a*``
methods), shared by every thread of the process that uses the same settings: Django makes a
backend object per thread, hitrate keeps one connection pool, one set of counters and one
stats flusher per process.
"""

from __future__ import annotations

import pickle
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final

from django.conf import settings
from django.core.cache.backends.base import DEFAULT_TIMEOUT, BaseCache
from django.core.exceptions import ImproperlyConfigured

from ... import Cache
from ...cache import AsyncCache
from ...errors import ConfigurationError
from ...keys import KeySpace
from ...plans import MISSING
from ...policy import Policy, TTLLike
from ...stats import Stats
from .._ops import FOREVER, AsyncOps, FrameworkPickleCodec, SyncOps, derive_secrets, unwrap, wrap

__all__ = ["HitrateCache", "versioned_key"]

#: OPTIONS keys, passed to :meth:`hitrate.Cache.from_url` (``secrets`` replace the ones
#: derived from ``SECRET_KEY``).
OPTION_NAMES: Final = frozenset(
    {
        "policies", "strict", "secrets", "timeout", "connect_timeout", "max_connections",
        "pool_timeout", "flush_interval", "count", "max_value_size", "generation_check",
        "write_window", "clock",
    }
)  # fmt: skip
#: Django's own option names, read by ``BaseCache`` (culling does not apply to Redis).
DJANGO_OPTIONS: Final = frozenset({"MAX_ENTRIES", "CULL_FREQUENCY"})
#: Values up to this size are cached (Django's own Redis backend has no limit; hitrate's
#: library default of 1 MiB would make ``cache_page`` fail on a large page).
MAX_VALUE_SIZE: Final = 64 * 1024 * 1024

#: Django's own keys, given a family so stats show them apart: sessions, cached pages
#: (``cache_page`` and the cache middleware) and template fragments.
_DJANGO_FAMILIES: Final = (
    ("sessions", "django.contrib.sessions.cache"),
    ("views", "views.decorators.cache.cache_"),
    ("template", "template.cache."),
)


def versioned_key(key: str, key_prefix: str, version: int | str) -> str:
    """hitrate's default ``KEY_FUNCTION``: the key, then its version (``user:42#v1``), so
    a key's family (the text before its first ``:``) is the caller's, for per-family
    policies and stats. ``KEY_PREFIX`` is not part of it: it is the hitrate prefix, the
    namespace every Redis key of this cache lives under (``KEY_PREFIX:{user:42#v1}``).

    Django's own keys get a family: ``sessions:django.contrib.sessions.cache...``,
    ``views:views.decorators.cache.cache_page...``, ``template:template.cache...``. A key
    that already starts with such a family (``sessions:django.contrib.sessions.cache...``)
    gets it once more, so no two keys ever share an entry.
    """
    key = str(key)
    for family, start in _DJANGO_FAMILIES:
        rest = key
        while rest.startswith(family + ":"):
            rest = rest[len(family) + 1 :]
        if rest.startswith(start):
            return f"{family}:{key}#v{version}"
    return f"{key}#v{version}"


class _Expired:
    """Django's ``timeout=0`` (or below): the value expires at once, nothing is kept."""


EXPIRED: Final = _Expired()

_shared: dict[bytes, Cache] = {}
_shared_lock = threading.Lock()


class HitrateCache(BaseCache):  # type: ignore[misc]  # Django has no type hints
    """A Django cache backend on hitrate::

        CACHES = {"default": {
            "BACKEND": "hitrate.contrib.django.HitrateCache",
            "LOCATION": "redis://localhost:6379/0",
            "KEY_PREFIX": "shop",                        # the Redis namespace; "django" if unset
            "OPTIONS": {"policies": {"user": USER, "config": REFERENCE}},
        }}

    Django's API and semantics: ``timeout`` (``None`` = forever, ``0`` = expire at once,
    the default = ``TIMEOUT`` or the key family's policy), ``VERSION``, ``KEY_FUNCTION``,
    ``add``/``get``/``set``/``touch``/``delete``/``incr``/``decr`` and the ``*_many``
    forms, ``clear`` (SCAN of this prefix only; never FLUSHDB) and native ``a*`` methods.
    Values are pickled and HMAC-signed with a key derived from ``SECRET_KEY`` (entries
    signed with one of ``SECRET_KEY_FALLBACKS`` are read too). Redis errors fail open
    (a miss; ``"strict": True`` raises instead). hitrate itself is at :attr:`hitrate`
    (``get_or_fetch`` with leases, tags, patterns, stats, structures).
    """

    def __init__(self, server: str | Sequence[str], params: dict[str, Any]) -> None:
        super().__init__(params)
        if isinstance(server, str):
            server = [s for s in server.split(";") if s.strip()]
        if len(server) > 1:
            raise ImproperlyConfigured(
                f"HitrateCache takes one LOCATION (a redis:// URL), got {len(server)}; "
                "for replicas or Cluster use a redis+sentinel:// or redis+cluster:// URL"
            )
        self._url: str | None = server[0] if server else None
        if params.get("KEY_FUNCTION") is None:
            self.key_func = versioned_key
        self._namespace = str(self.key_prefix).rstrip(":") or "django"
        try:
            KeySpace(self._namespace)
        except ConfigurationError as exc:
            raise ImproperlyConfigured(f"KEY_PREFIX {self.key_prefix!r}: {exc}") from None
        options = dict(params.get("OPTIONS") or {})
        unknown = set(options) - OPTION_NAMES - DJANGO_OPTIONS
        if unknown:
            raise ImproperlyConfigured(
                f"HitrateCache OPTIONS has unknown key(s) {sorted(unknown)}; known: "
                f"{sorted(OPTION_NAMES)}"
            )
        self._options = {k: v for k, v in options.items() if k in OPTION_NAMES}
        self._cache: Cache | None = None
        self._ops: SyncOps | None = None
        self._aops: AsyncOps | None = None

    # -- the hitrate caches behind it -------------------------------------------------------
    @property
    def hitrate(self) -> Cache:
        """The :class:`hitrate.Cache` this backend uses (one per process and settings):
        ``caches["default"].hitrate.leaderboard("weekly")``. Its keys are the backend's
        made keys (:meth:`make_key`)."""
        if self._cache is None:
            self._cache = self._shared_cache()
        return self._cache

    @property
    def ahitrate(self) -> AsyncCache:
        """The :class:`hitrate.AsyncCache` twin of :attr:`hitrate` (same pool settings,
        prefix, policies and counters), which the ``a*`` methods use."""
        return self.hitrate.aio

    def _shared_cache(self) -> Cache:
        options = dict(self._options)
        secrets = options.pop("secrets", None)
        if secrets is None:
            secrets = [settings.SECRET_KEY, *getattr(settings, "SECRET_KEY_FALLBACKS", [])]
        if isinstance(secrets, str | bytes):
            raise ImproperlyConfigured("OPTIONS['secrets'] is a list: [new, old, ...]")
        default = self.default_timeout
        identity = (self._url, self._namespace, default, sorted(options.items()), secrets)
        try:
            fingerprint = pickle.dumps(identity)
        except Exception:  # options that cannot be compared: a cache of its own
            fingerprint = pickle.dumps(id(self))
        with _shared_lock:
            found = _shared.get(fingerprint)
            if found is None:
                try:
                    found = Cache.from_url(
                        self._url,
                        prefix=self._namespace,
                        default_ttl=FOREVER if default is None or default <= 0 else default,
                        codec=FrameworkPickleCodec(*derive_secrets(list(secrets), "django")),
                        max_value_size=options.pop("max_value_size", MAX_VALUE_SIZE),
                        **options,
                    )
                except (ConfigurationError, TypeError) as exc:
                    raise ImproperlyConfigured(f"HitrateCache: {exc}") from exc
                _shared[fingerprint] = found
        return found

    def _sync_ops(self) -> SyncOps:
        if self._ops is None:
            cache = self.hitrate
            self._ops = SyncOps(cache._ctx, cache._driver)
        return self._ops

    def _async_ops(self) -> AsyncOps:
        if self._aops is None:
            acache = self.ahitrate
            self._aops = AsyncOps(acache._ctx, acache._driver)
        return self._aops

    # -- keys and timeouts --------------------------------------------------------------------
    def _key(self, key: Any, version: int | None) -> str:
        made = self.make_and_validate_key(key, version=version)
        if not isinstance(made, str):
            raise TypeError(f"KEY_FUNCTION must return a str, got {made!r} for key {key!r}")
        return made

    def _ttl(self, timeout: Any) -> TTLLike | _Expired:
        """Django's timeout as hitrate's ``ttl``: None (the family's policy, else TIMEOUT),
        :data:`FOREVER`, seconds, or :data:`EXPIRED`."""
        if timeout is DEFAULT_TIMEOUT:
            default = self.default_timeout
            return EXPIRED if default is not None and default <= 0 else None
        if timeout is None:
            return FOREVER
        if isinstance(timeout, Policy):
            return timeout
        seconds = float(timeout)
        return EXPIRED if seconds <= 0 else seconds

    def get_backend_timeout(self, timeout: Any = DEFAULT_TIMEOUT) -> float | None:
        """Seconds a write with *timeout* lives (None: forever; 0: not at all)."""
        ttl = self._ttl(timeout)
        if isinstance(ttl, _Expired):
            return 0
        if ttl is None:
            return None if self.default_timeout is None else float(self.default_timeout)
        if isinstance(ttl, Policy):
            return ttl.ttl
        return float(ttl)  # type: ignore[arg-type]  # seconds, as _ttl makes them

    # -- Django's API -------------------------------------------------------------------------
    def add(
        self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> bool:
        made, ttl = self._key(key, version), self._ttl(timeout)
        if isinstance(ttl, _Expired):  # as Django's Redis backend: True if it was absent
            pickle.dumps(value, pickle.HIGHEST_PROTOCOL)  # an unpicklable value still raises
            return not self._sync_ops().has(made)
        return bool(self._sync_ops().add(made, wrap(value), ttl))

    def get(self, key: Any, default: Any = None, version: int | None = None) -> Any:
        value = self.hitrate.get(self._key(key, version), MISSING)
        return default if value is MISSING else unwrap(value)

    def set(
        self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> None:
        made, ttl = self._key(key, version), self._ttl(timeout)
        if isinstance(ttl, _Expired):
            pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
            self.hitrate.invalidate(made)
        else:
            self.hitrate.set(made, wrap(value), ttl)

    def touch(self, key: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None) -> bool:
        made, ttl = self._key(key, version), self._ttl(timeout)
        if isinstance(ttl, _Expired):
            return bool(self.hitrate.invalidate(made))
        return bool(self._sync_ops().touch(made, ttl))

    def delete(self, key: Any, version: int | None = None) -> bool:
        return bool(self.hitrate.invalidate(self._key(key, version)))

    def get_many(self, keys: Iterable[Any], version: int | None = None) -> dict[Any, Any]:
        made = {self._key(key, version): key for key in keys}
        found = self.hitrate.get_many(made)
        return {made[k]: unwrap(v) for k, v in found.items()}

    def has_key(self, key: Any, version: int | None = None) -> bool:
        return bool(self._sync_ops().has(self._key(key, version)))

    def incr(self, key: Any, delta: int = 1, version: int | None = None) -> Any:
        return self._sync_ops().incr(self._key(key, version), delta)

    def set_many(
        self, data: Mapping[Any, Any], timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> list[Any]:
        if not data:
            return []
        made = {self._key(key, version): wrap(value) for key, value in data.items()}
        ttl = self._ttl(timeout)
        if isinstance(ttl, _Expired):
            pickle.dumps(data, pickle.HIGHEST_PROTOCOL)
            self.hitrate.invalidate(*made)
            return []
        return [] if self.hitrate.set_many(made, ttl) else list(data)

    def delete_many(self, keys: Iterable[Any], version: int | None = None) -> None:
        made = [self._key(key, version) for key in keys]
        if made:
            self.hitrate.invalidate(*made)

    def clear(self) -> None:
        """Delete every entry under this cache's prefix (``KEY_PREFIX``), by SCAN: other
        prefixes and other data on the server are left alone (never FLUSHDB)."""
        self.hitrate.invalidate_pattern("*")

    def close(self, **kwargs: Any) -> None:
        """Nothing to do: Django calls this at the end of every request, and the pool is
        kept for the next one (as Django's own Redis backend does). The counters are
        flushed on their timer and at exit."""

    # -- the same, native asyncio ---------------------------------------------------------------
    async def aadd(
        self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> bool:
        made, ttl = self._key(key, version), self._ttl(timeout)
        if isinstance(ttl, _Expired):
            pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
            return not await self._async_ops().has(made)
        return bool(await self._async_ops().add(made, wrap(value), ttl))

    async def aget(self, key: Any, default: Any = None, version: int | None = None) -> Any:
        value = await self.ahitrate.get(self._key(key, version), MISSING)
        return default if value is MISSING else unwrap(value)

    async def aset(
        self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> None:
        made, ttl = self._key(key, version), self._ttl(timeout)
        if isinstance(ttl, _Expired):
            pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
            await self.ahitrate.invalidate(made)
        else:
            await self.ahitrate.set(made, wrap(value), ttl)

    async def atouch(
        self, key: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> bool:
        made, ttl = self._key(key, version), self._ttl(timeout)
        if isinstance(ttl, _Expired):
            return bool(await self.ahitrate.invalidate(made))
        return bool(await self._async_ops().touch(made, ttl))

    async def adelete(self, key: Any, version: int | None = None) -> bool:
        return bool(await self.ahitrate.invalidate(self._key(key, version)))

    async def aget_many(self, keys: Iterable[Any], version: int | None = None) -> dict[Any, Any]:
        made = {self._key(key, version): key for key in keys}
        found = await self.ahitrate.get_many(made)
        return {made[k]: unwrap(v) for k, v in found.items()}

    async def ahas_key(self, key: Any, version: int | None = None) -> bool:
        return bool(await self._async_ops().has(self._key(key, version)))

    async def aincr(self, key: Any, delta: int = 1, version: int | None = None) -> Any:
        return await self._async_ops().incr(self._key(key, version), delta)

    async def aset_many(
        self, data: Mapping[Any, Any], timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> list[Any]:
        if not data:
            return []
        made = {self._key(key, version): wrap(value) for key, value in data.items()}
        ttl = self._ttl(timeout)
        if isinstance(ttl, _Expired):
            pickle.dumps(data, pickle.HIGHEST_PROTOCOL)
            await self.ahitrate.invalidate(*made)
            return []
        return [] if await self.ahitrate.set_many(made, ttl) else list(data)

    async def adelete_many(self, keys: Iterable[Any], version: int | None = None) -> None:
        made = [self._key(key, version) for key in keys]
        if made:
            await self.ahitrate.invalidate(*made)

    async def aclear(self) -> None:
        """See :meth:`clear`."""
        await self.ahitrate.invalidate_pattern("*")

    async def aclose(self, **kwargs: Any) -> None:
        """See :meth:`close`."""

    # -- hitrate's extras, with Django's keys and timeouts --------------------------------------
    def get_or_fetch(
        self,
        key: Any,
        fetch: Callable[[], Any],
        timeout: Any = DEFAULT_TIMEOUT,
        tags: Sequence[str] = (),
        version: int | None = None,
    ) -> Any:
        """Cache-aside with leases (see :meth:`hitrate.Cache.get_or_fetch`): one caller per
        key loads, across threads and processes; a fill is refused if the key was deleted
        or written while it loaded. Unlike :meth:`get_or_set`, a ``None`` from *fetch* is
        cached only for the policy's ``negative_ttl``."""
        made, ttl = self._key(key, version), self._ttl(timeout)
        if isinstance(ttl, _Expired):
            return fetch()
        return unwrap(self.hitrate.get_or_fetch(made, fetch, ttl, tags))

    async def aget_or_fetch(
        self,
        key: Any,
        fetch: Callable[[], Any],
        timeout: Any = DEFAULT_TIMEOUT,
        tags: Sequence[str] = (),
        version: int | None = None,
    ) -> Any:
        """See :meth:`get_or_fetch`; *fetch* may be sync or async."""
        made, ttl = self._key(key, version), self._ttl(timeout)
        if isinstance(ttl, _Expired):
            result = fetch()
            return await result if hasattr(result, "__await__") else result
        return unwrap(await self.ahitrate.get_or_fetch(made, fetch, ttl, tags))

    def invalidate_pattern(self, pattern: str, version: int | None = None) -> int:
        """Delete the keys matching the glob *pattern* (of this version), by SCAN, in this
        prefix only: ``cache.invalidate_pattern(f"user:{escape_glob(uid)}:*")``."""
        return self.hitrate.invalidate_pattern(self.make_key(pattern, version=version))

    async def ainvalidate_pattern(self, pattern: str, version: int | None = None) -> int:
        """See :meth:`invalidate_pattern`."""
        return await self.ahitrate.invalidate_pattern(self.make_key(pattern, version=version))

    def invalidate_tag(self, tag: str) -> int:
        """Delete every entry filled by :meth:`get_or_fetch` with *tag*."""
        return self.hitrate.invalidate_tag(tag)

    async def ainvalidate_tag(self, tag: str) -> int:
        """See :meth:`invalidate_tag`."""
        return await self.ahitrate.invalidate_tag(tag)

    def stats(self, **kwargs: Any) -> Stats:
        """Hit rate per key family from every process (see :meth:`hitrate.Cache.stats`)."""
        return self.hitrate.stats(**kwargs)
