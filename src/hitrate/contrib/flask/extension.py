"""``Hitrate(app)``: the native Flask extension, a :class:`hitrate.Cache` configured from
``app.config``."""

from __future__ import annotations

import atexit
from typing import Any

from flask import Flask, current_app, g

from ...cache import AsyncCache, Cache

__all__ = ["Hitrate"]

_USED_ASYNC = "_hitrate_async_used"


class Hitrate:
    """hitrate for a Flask app::

        app.config.update(HITRATE_URL="redis://localhost:6379/0", HITRATE_PREFIX="shop",
                          HITRATE_POLICIES={"user": USER, "config": REFERENCE})
        hitrate = Hitrate(app)            # or Hitrate() then hitrate.init_app(app)

        @app.get("/users/<int:user_id>")
        def user(user_id: int) -> dict[str, Any]:
            return hitrate.cache.get_or_fetch(f"user:{user_id}", lambda: load_user(user_id))

    Config: ``HITRATE_URL`` (default: ``HITRATE_REDIS_URL``, ``REDIS_URL``, localhost),
    ``HITRATE_PREFIX`` (default ``"hitrate"``), ``HITRATE_POLICIES`` (TTL policy per key
    family) and ``HITRATE_OPTIONS`` (any other :class:`hitrate.Cache` option).

    One :class:`~hitrate.Cache` per app, made on first use: :attr:`cache` (sync views) and
    :attr:`acache` (``async def`` views). Flask runs each async view in an event loop of
    its own, so the async client's connections are closed when the app context is torn
    down; the sync cache (its pool, its counters) lives with the process and is closed by
    :meth:`close` or at exit.
    """

    def __init__(self, app: Flask | None = None) -> None:
        self._caches: dict[int, Cache] = {}
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Read the config of *app* and register the teardown."""
        app.config.setdefault("HITRATE_URL", None)
        app.config.setdefault("HITRATE_PREFIX", "hitrate")
        app.config.setdefault("HITRATE_POLICIES", None)
        app.config.setdefault("HITRATE_OPTIONS", {})
        app.extensions["hitrate"] = self
        app.teardown_appcontext(self._teardown)

    def _app(self, app: Flask | None) -> Flask:
        if app is not None:
            return app
        found: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
        return found

    def cache_for(self, app: Flask | None = None) -> Cache:
        """The :class:`~hitrate.Cache` of *app* (default: the current app)."""
        app = self._app(app)
        found = self._caches.get(id(app))
        if found is None:
            config = app.config
            found = Cache.from_url(
                config["HITRATE_URL"],
                prefix=config["HITRATE_PREFIX"],
                policies=config["HITRATE_POLICIES"],
                **config["HITRATE_OPTIONS"],
            )
            self._caches[id(app)] = found
            atexit.register(found.close)
        return found

    @property
    def cache(self) -> Cache:
        """The current app's :class:`~hitrate.Cache`."""
        return self.cache_for()

    @property
    def acache(self) -> AsyncCache:
        """The current app's :class:`~hitrate.AsyncCache` (same server, prefix, policies
        and counters), for ``async def`` views; its connections are closed at teardown."""
        setattr(g, _USED_ASYNC, True)
        return self.cache.aio

    def _teardown(self, exc: BaseException | None) -> None:
        if g.pop(_USED_ASYNC, False):
            cache = self._caches.get(id(current_app._get_current_object()))  # type: ignore[attr-defined]
            if cache is not None and cache._twin is not None:
                cache._twin._close_client_sync()  # that event loop has ended

    def close(self, app: Flask | None = None) -> None:
        """Close the cache of *app* (default: the current app): flush its counters, close
        its pool. The next use makes a new one."""
        cache = self._caches.pop(id(self._app(app)), None)
        if cache is not None:
            atexit.unregister(cache.close)
            cache.close()

    def __getattr__(self, name: str) -> Any:
        """The current app's cache verbs, on the extension: ``hitrate.get_or_fetch(...)``."""
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.cache, name)
