"""Connecting (from_url and the environment), the hitrate.testing fixtures, and the
embedded server."""

from __future__ import annotations

import pytest
import redis

from hitrate import AsyncCache, Cache, ConfigurationError, Policy
from hitrate.connect import resolve_url
from hitrate.server import EmbeddedServer, find_servers
from hitrate.testing import FakeClock


def test_url_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HITRATE_REDIS_URL", raising=False)
    monkeypatch.delenv("REDIS_URL", raising=False)
    assert resolve_url(None) == "redis://localhost:6379/0"
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/2")
    assert resolve_url(None) == "redis://127.0.0.1:1/2"
    monkeypatch.setenv("HITRATE_REDIS_URL", "redis://127.0.0.1:3/4")
    assert resolve_url(None) == "redis://127.0.0.1:3/4"
    assert resolve_url("redis://x:5/0") == "redis://x:5/0"


def test_from_url_reads_the_environment(
    url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HITRATE_REDIS_URL", url)
    cache = Cache.from_url(prefix=prefix)
    assert cache.set("user:1", {"ok": True})
    assert redis.Redis.from_url(url).exists(cache.redis_key("user:1")) == 1
    cache.close()


def test_decode_responses_client_is_refused(url: str) -> None:
    with pytest.raises(ConfigurationError, match="decode_responses"):
        Cache(redis.Redis.from_url(url, decode_responses=True), prefix="x")


@pytest.mark.parametrize("prefix", ["", "a b", "a*", "a{b}"])
def test_bad_prefix(url: str, prefix: str) -> None:
    with pytest.raises(ConfigurationError):
        Cache.from_url(url, prefix=prefix)


def test_plugin_fixtures(hitrate_cache: Cache, hitrate_server: EmbeddedServer) -> None:
    assert hitrate_server.flavour in find_servers()
    assert hitrate_cache.get_or_fetch("user:1", lambda: 41) == 41
    assert hitrate_cache.get("user:1") == 41


async def test_plugin_async_fixture(hitrate_async_cache: AsyncCache) -> None:
    assert await hitrate_async_cache.get_or_fetch("user:1", lambda: 7) == 7


def test_fake_clock_drives_logical_expiry(url: str, prefix: str) -> None:
    clock = FakeClock()
    cache = Cache.from_url(url, prefix=prefix, clock=clock)
    loads = []
    cache.get_or_fetch("user:1", lambda: loads.append(1) or len(loads), ttl=Policy(300))
    clock.advance(299)
    assert cache.get_or_fetch("user:1", lambda: loads.append(1) or len(loads)) == 1
    clock.advance(2)  # logically expired, though Redis still holds the key
    assert cache.get("user:1", default="miss") == "miss"
    assert cache.get_or_fetch("user:1", lambda: loads.append(1) or len(loads)) == 2
    cache.close()


@pytest.mark.parametrize("flavour", sorted(find_servers()))
def test_embedded_server_starts_and_stops(flavour: str) -> None:
    with EmbeddedServer.start(flavour) as server:
        client = redis.Redis.from_url(server.url)
        assert client.ping()
        info = client.info("server")
        assert ("valkey_version" in info) == (flavour == "valkey")
    assert server.process.poll() is not None


def test_uncached_none_gives_the_lease_back(url: str, prefix: str) -> None:
    cache = Cache.from_url(url, prefix=prefix, strict=True)
    policy = Policy(10, negative_ttl=0)
    assert cache.get_or_fetch("user:1", lambda: None, ttl=policy) is None
    assert cache.get_or_fetch("user:1", lambda: 5, ttl=policy) == 5  # loaded again at once
    raw = redis.Redis.from_url(url)
    assert raw.exists(cache.redis_key("user:1") + ":lease") == 0
    assert cache.counters.snapshot()["user"].errors == 0
    cache.close()


def test_the_pytest_plugin_imports_nothing_heavy() -> None:
    """pytest loads hitrate.testing in every test run of a project with hitrate installed:
    until a fixture is used, it must not import redis-py, the codecs or the cache."""
    import subprocess
    import sys

    code = (
        "import sys, hitrate.testing\n"
        "heavy = [m for m in ('redis', 'orjson', 'msgspec', 'hitrate.cache') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_close_closes_only_the_clients_the_cache_made(url: str) -> None:
    client = redis.Redis.from_url(url)
    mine = Cache(client, prefix="mine")
    mine.get("user:1")
    mine.close()
    # the caller's client was not closed: its connection is still open
    assert [c._sock is not None for c in client.connection_pool._available_connections] == [True]
    client.close()

    made = Cache.from_url(url, prefix="made")
    made.get("user:1")
    made.aio
    pool = made.client.connection_pool
    made.close()
    assert all(c._sock is None for c in pool._connections)  # ours: closed


def test_verbs_are_ordinary_methods_and_async_ones_coroutine_functions(url: str) -> None:
    """Verbs are written once, but to Python they are plain methods on Cache and
    ``async def`` methods on AsyncCache: unbound calls, signatures, autospec mocks and
    frameworks that dispatch on ``iscoroutinefunction`` all work."""
    import asyncio
    import inspect
    from unittest import mock

    cache = Cache.from_url(url, prefix="verbs")
    assert Cache.get(cache, "user:1", "d") == "d"
    assert list(inspect.signature(cache.get).parameters) == ["key", "default", "type"]
    assert inspect.signature(Cache.invalidate).return_annotation == "int"
    assert isinstance(mock.create_autospec(Cache, instance=True).get("k"), mock.MagicMock)
    acache = AsyncCache.from_url(url, prefix="verbs")
    for verb in (acache.get, acache.set, acache.invalidate, acache.write_through, acache.bump):
        assert inspect.iscoroutinefunction(verb), verb
    assert inspect.iscoroutinefunction(acache.leaderboard("b").top)
    assert not inspect.iscoroutinefunction(cache.get)
    spec = mock.create_autospec(AsyncCache, instance=True)
    assert asyncio.run(spec.get("k")) is not None  # an AsyncMock: awaitable
    assert asyncio.run(acache.get("user:1", "d")) == "d"
    cache.close()
    asyncio.run(acache.close())
