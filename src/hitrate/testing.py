"""Test helpers for hitrate and for code that uses it: real servers, a fake clock.

Installed as a pytest plugin (entry point ``hitrate``); it only defines fixtures, so it
changes nothing unless a test asks for one:

* ``hitrate_server`` (session) - a private server on a free loopback port, started once:
  ``redis-server`` from PATH, else the ``valkey-server`` of ``hitrate[server]``.
  Set ``HITRATE_TEST_SERVER=redis|valkey`` to choose.
* ``hitrate_cache`` / ``hitrate_async_cache`` - a cache on that server with a prefix unique
  to the test; the test's keys are deleted afterwards (by SCAN on that prefix only, never
  FLUSHDB, so it is safe even against a shared server).
* :class:`FakeClock` - a clock to pass as ``clock=`` so tests tick time instead of sleeping.

Servers are never flushed unless this module started them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .cache import AsyncCache, Cache
    from .server import EmbeddedServer, find_servers

# Nothing else is imported until a fixture or helper is used: pytest loads this plugin in
# every test run of a project that has hitrate installed.

__all__ = ["EmbeddedServer", "FakeClock", "delete_prefix", "find_servers", "unique_prefix"]


def __getattr__(name: str) -> Any:
    if name in ("EmbeddedServer", "find_servers"):
        from . import server

        return getattr(server, name)
    raise AttributeError(f"module 'hitrate.testing' has no attribute {name!r}")


class FakeClock:
    """A wall clock that only moves when told: ``clock.advance(301)``."""

    def __init__(self, start: float = 1_750_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def unique_prefix(name: str = "test") -> str:
    return f"{name}-{uuid.uuid4().hex[:10]}"


def raw_client(url: str) -> Any:
    """A plain redis-py client for any URL ``Cache.from_url`` takes (one server,
    ``redis+sentinel://``, ``redis+cluster://``), with generous timeouts: for tests that
    look at Redis beside the cache."""
    from .connect import sync_client

    return sync_client(url, 5.0, 5.0, 16, 5.0)


def delete_prefix(url: str, prefix: str) -> int:
    """Delete every key of the cache with *prefix* (``prefix:{...`` and ``prefix:~...``,
    not another cache's under a longer prefix) by SCAN + UNLINK; returns how many."""
    client = raw_client(url)
    deleted = 0
    try:
        batch = [
            key
            for pattern in (f"{prefix}:{{*", f"{prefix}:~*")
            for key in client.scan_iter(match=pattern, count=1000)
        ]
        for i in range(0, len(batch), 500):
            deleted += client.unlink(*batch[i : i + 500])
    finally:
        client.close()
    return deleted


@pytest.fixture(scope="session")
def hitrate_server() -> Iterator[EmbeddedServer]:
    """A private Redis/Valkey server for the whole test session."""
    from .server import EmbeddedServer, find_servers

    flavour = os.environ.get("HITRATE_TEST_SERVER") or None
    if not find_servers():
        pytest.skip("no redis-server on PATH and hitrate[server] (valkey) not installed")
    server = EmbeddedServer.start(flavour)
    yield server
    server.stop()


@pytest.fixture
def hitrate_cache(hitrate_server: EmbeddedServer) -> Iterator[Cache]:
    """A :class:`Cache` with a prefix of its own on ``hitrate_server``."""
    from .cache import Cache

    prefix = unique_prefix()
    cache = Cache.from_url(hitrate_server.url, prefix=prefix)
    yield cache
    cache.close()
    delete_prefix(hitrate_server.url, prefix)


async def _async_cache(server: EmbeddedServer) -> AsyncIterator[AsyncCache]:
    from .cache import AsyncCache

    prefix = unique_prefix()
    cache = AsyncCache.from_url(server.url, prefix=prefix)
    yield cache
    await cache.close()
    delete_prefix(server.url, prefix)


try:  # the async fixture needs pytest-asyncio; without it, only the sync ones exist
    import pytest_asyncio
except ImportError:  # pragma: no cover
    pass
else:

    @pytest_asyncio.fixture
    async def hitrate_async_cache(hitrate_server: EmbeddedServer) -> AsyncIterator[AsyncCache]:
        """An :class:`AsyncCache` with a prefix of its own on ``hitrate_server``."""
        async for cache in _async_cache(hitrate_server):
            yield cache
