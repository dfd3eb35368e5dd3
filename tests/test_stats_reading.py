"""Reading stats (``hitrate stats``, ``hitrate watch``, the dashboard's reads) must not change
the server figures it shows: no keyspace miss is added, whatever the number of readings."""

from __future__ import annotations

import json

import redis

from hitrate import AsyncCache, Cache
from tests.test_cli import hitrate


def keyspace(url: str) -> tuple[int, int]:
    """The server's ``(keyspace_hits, keyspace_misses)``."""
    client = redis.Redis.from_url(url)
    try:
        info = client.info("stats")
        return int(info["keyspace_hits"]), int(info["keyspace_misses"])
    finally:
        client.close()


def traffic(url: str, prefix: str) -> None:
    with Cache.from_url(url, prefix=prefix) as cache:  # close() flushes the counts
        cache.get_or_fetch("user:1", lambda: {"id": 1})
        for _ in range(5):
            cache.get("user:1")
        cache.get("user:absent")


def test_stats_and_watch_add_no_keyspace_misses(url: str, prefix: str) -> None:
    traffic(url, prefix)
    _, misses = keyspace(url)
    for args in (
        ["stats", "--json"],
        ["stats", "--json", "--minutes", "60"],  # 60 minute buckets, 59 of them absent
        ["watch", "--count", "3", "--interval", "0.1", "--minutes", "30"],
        ["stats", "--json", "--minutes", "1440"],
    ):
        out = hitrate(*args, "--url", url, "--prefix", prefix)
        assert out.returncode == 0, out.stderr
        if "--json" in args:
            assert json.loads(out.stdout)["keyspace_misses"] == misses
        assert keyspace(url)[1] == misses, args


async def test_dashboard_readings_add_no_keyspace_misses(url: str, prefix: str) -> None:
    traffic(url, prefix)
    _, misses = keyspace(url)
    # the dashboard's reading: counts nothing itself, 60 minutes of history, a key sample
    reader = AsyncCache.from_url(url, prefix=prefix, count=False, strict=True)
    try:
        for _ in range(3):
            stats = await reader.stats(history=60, sample=1000)
            assert stats.keyspace_misses == misses
            assert (stats.hits, stats.misses) == (5, 2)
    finally:
        await reader.close()
    assert keyspace(url)[1] == misses
