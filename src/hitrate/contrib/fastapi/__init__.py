"""FastAPI / Starlette integration: a lifespan and a dependency for the cache, and an HTTP
response cache (pure ASGI middleware, with per-route rules).

>>> make = lambda: AsyncCache.from_url(prefix="app")           # doctest: +SKIP
>>> app = FastAPI(lifespan=cache_lifespan(make))               # doctest: +SKIP
>>> app.add_middleware(ResponseCache)                          # doctest: +SKIP

Needs ``pip install 'hitrate[fastapi]'``.
"""

from ..._extras import missing_extra

try:
    import fastapi  # noqa: F401
    import starlette  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised by tests/test_extras.py
    raise missing_extra("hitrate.contrib.fastapi", "fastapi", "fastapi", exc) from exc

from .app import CacheDep, cache_lifespan, get_cache
from .middleware import ResponseCache
from .policy import HttpRule, http_cache

__all__ = ["CacheDep", "HttpRule", "ResponseCache", "cache_lifespan", "get_cache", "http_cache"]
