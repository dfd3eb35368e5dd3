"""The cache's place in a FastAPI (or Starlette) app: a lifespan that opens and closes it,
and a dependency that hands it to routes."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Annotated, Any

from fastapi import Depends
from starlette.requests import Request

from ...cache import AsyncCache
from ...errors import ConfigurationError
from .middleware import STATE_KEY

__all__ = ["CacheDep", "cache_lifespan", "get_cache"]

Lifespan = Callable[[Any], contextlib.AbstractAsyncContextManager[Mapping[str, Any] | None]]


def cache_lifespan(
    cache: AsyncCache | Callable[[], AsyncCache], inner: Lifespan | None = None
) -> Callable[[Any], contextlib.AbstractAsyncContextManager[dict[str, Any]]]:
    """A lifespan that opens the cache at startup and closes it at shutdown (its counts
    flushed), around the app's own lifespan *inner* if any, whose state it keeps::

        app = FastAPI(lifespan=cache_lifespan(lambda: AsyncCache.from_url(prefix="app")))

    *cache* is a factory (a new cache each time the app starts: tests start it often) or
    an ``AsyncCache``. Routes get it with :data:`CacheDep`; :class:`ResponseCache` finds
    it in the lifespan state."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[dict[str, Any]]:
        made = cache() if callable(cache) and not isinstance(cache, AsyncCache) else cache
        if not isinstance(made, AsyncCache):
            raise ConfigurationError(
                f"cache_lifespan needs an AsyncCache or a function making one, got {made!r}"
            )
        try:
            if inner is None:
                yield {STATE_KEY: made}
            else:
                async with inner(app) as state:
                    yield {**(state or {}), STATE_KEY: made}
        finally:
            await made.close()

    return lifespan


def get_cache(request: Request) -> AsyncCache:
    """The app's :class:`~hitrate.AsyncCache` (from :func:`cache_lifespan`'s state, or
    ``app.state.hitrate_cache``). Tests replace it with
    ``app.dependency_overrides[get_cache] = lambda: other_cache``."""
    cache = getattr(request.state, STATE_KEY, None) or getattr(request.app.state, STATE_KEY, None)
    if not isinstance(cache, AsyncCache):
        raise ConfigurationError(
            "no hitrate cache in this app: give it lifespan=cache_lifespan(...) "
            "(or set app.state.hitrate_cache)"
        )
    return cache


CacheDep = Annotated[AsyncCache, Depends(get_cache)]
"""A route parameter ``cache: CacheDep`` receives the app's cache."""
