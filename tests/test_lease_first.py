"""A miss in two round trips: when a family's recent get_or_fetch calls missed more than
they hit, a call starts with the lease script (which returns the entry if there is one)
instead of GET - with single flight, no stale sets and serve-stale intact."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator

import pytest
import redis

from hitrate import AsyncCache, Cache, Policy
from hitrate.plans.context import LEAN_AT, LEAN_CAP
from hitrate.testing import FakeClock

# INFO commandstats counts the commands a script runs too: a lease-first miss is two
# EVALSHA (lease.lua's GET and SET NX, fill.lua's GET and SET); a GET-first miss would show
# a third GET (and three round trips).
ROUND_TRIPS = ("get", "mget", "evalsha", "eval", "set")


@pytest.fixture
def raw(url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(url)
    yield client
    client.close()


def calls(raw: redis.Redis) -> dict[str, int]:
    stats = raw.info("commandstats")
    return {c: stats.get(f"cmdstat_{c}", {}).get("calls", 0) for c in ROUND_TRIPS}


def spent(raw: redis.Redis, before: dict[str, int]) -> dict[str, int]:
    after = calls(raw)
    return {c: after[c] - before[c] for c in ROUND_TRIPS if after[c] != before[c]}


def test_misses_take_two_round_trips_and_hits_come_back_to_get(
    url: str, prefix: str, raw: redis.Redis
) -> None:
    cache = Cache.from_url(url, prefix=prefix)
    for i in range(LEAN_AT):  # the first misses of a family: GET, lease, fill
        cache.get_or_fetch(f"row:{i}", lambda: "v")
    before = calls(raw)
    assert cache.get_or_fetch("row:new", lambda: "v") == "v"
    assert spent(raw, before) == {"evalsha": 2, "get": 2, "set": 2}  # lease, fill
    before = calls(raw)
    assert cache.get_or_fetch("row:new", lambda: "unused") == "v"
    assert spent(raw, before) == {"evalsha": 1, "get": 1}  # a hit while leasing first
    for _ in range(LEAN_CAP):
        cache.get_or_fetch("row:new", lambda: "unused")
    before = calls(raw)
    assert cache.get_or_fetch("row:new", lambda: "unused") == "v"
    assert spent(raw, before) == {"get": 1}  # hits again outnumber misses: plain GET
    cache.close()


async def test_async_misses_take_two_round_trips(url: str, prefix: str, raw: redis.Redis) -> None:
    cache = AsyncCache.from_url(url, prefix=prefix)
    for i in range(LEAN_AT):
        await cache.get_or_fetch(f"row:{i}", lambda: "v")
    before = calls(raw)
    assert await cache.get_or_fetch("row:new", lambda: "v") == "v"
    assert spent(raw, before) == {"evalsha": 2, "get": 2, "set": 2}
    await cache.close()


WORKER = textwrap.dedent(
    """
    import sys, threading, time, redis
    from hitrate import Cache
    url, prefix, key, counter, start_at = sys.argv[1:6]
    raw = redis.Redis.from_url(url)
    cache = Cache.from_url(url, prefix=prefix, timeout=2.0)
    cache._ctx.lean["hot"] = 8  # this process leases first too
    def load():
        raw.incr(counter)
        time.sleep(0.05)
        return {"loaded": True}
    def call():
        time.sleep(max(0.0, float(start_at) - time.time()))
        assert cache.get_or_fetch(key, load) == {"loaded": True}
    threads = [threading.Thread(target=call) for _ in range(16)]
    for t in threads: t.start()
    for t in threads: t.join()
    print("ok")
    """
)


@pytest.mark.ttl_audit_exempt  # the test's own load counter
def test_one_load_per_expiry_when_leasing_first(url: str, prefix: str, raw: redis.Redis) -> None:
    counter = f"{prefix}:test-loads"
    cache = Cache.from_url(url, prefix=prefix, timeout=2.0)

    def load() -> dict[str, bool]:
        raw.incr(counter)
        time.sleep(0.05)
        return {"loaded": True}

    results: list[object] = []
    for expiry in range(2):
        cache.invalidate("hot:key")
        cache._ctx.lean["hot"] = LEAN_CAP
        start_at = time.time() + 0.8
        other = subprocess.Popen(
            [sys.executable, "-c", WORKER, url, prefix, "hot:key", counter, str(start_at)],
            stdout=subprocess.PIPE,
            text=True,
        )

        def call() -> None:
            time.sleep(max(0.0, start_at - time.time()))
            results.append(cache.get_or_fetch("hot:key", load))

        threads = [threading.Thread(target=call) for _ in range(32)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        out, _ = other.communicate(timeout=30)
        assert other.returncode == 0 and "ok" in out
        assert int(raw.get(counter) or 0) == expiry + 1, "the loader ran more than once"
    assert results == [{"loaded": True}] * 64
    cache.close()


async def test_one_load_per_expiry_when_leasing_first_async(url: str, prefix: str) -> None:
    cache = AsyncCache.from_url(url, prefix=prefix, timeout=2.0)
    loads = 0

    async def load() -> str:
        nonlocal loads
        loads += 1
        await asyncio.sleep(0.05)
        return "value"

    for expiry in range(2):
        await cache.invalidate("hot:key")
        cache._ctx.lean["hot"] = LEAN_CAP
        values = await asyncio.gather(*(cache.get_or_fetch("hot:key", load) for _ in range(64)))
        assert values == ["value"] * 64
        assert loads == expiry + 1
    await cache.close()


def test_no_stale_set_when_leasing_first(url: str, prefix: str) -> None:
    cache = Cache.from_url(url, prefix=prefix)
    writer = Cache.from_url(url, prefix=prefix)
    cache._ctx.lean["user"] = LEAN_CAP

    def load() -> str:
        writer.invalidate("user:1")  # the row changed while we loaded it
        return "old row"

    assert cache.get_or_fetch("user:1", load) == "old row"
    assert writer.get("user:1") is None  # the fill was refused
    writer.close()
    cache.close()


def test_serve_stale_when_leasing_first(url: str, prefix: str) -> None:
    clock = FakeClock()
    cache = Cache.from_url(url, prefix=prefix, clock=clock)
    policy = Policy(10, stale=600)
    assert cache.get_or_fetch("agg:1", lambda: "old", ttl=policy) == "old"
    clock.advance(20)  # logically expired, inside the stale window
    cache._ctx.lean["agg"] = LEAN_CAP
    refreshed = threading.Event()

    def load() -> str:
        refreshed.set()
        return "new"

    assert cache.get_or_fetch("agg:1", load, ttl=policy) == "old"  # served at once...
    assert refreshed.wait(5)  # ...while it is refreshed in the background
    cache.close()  # waits for the refresh
    again = Cache.from_url(url, prefix=prefix, clock=clock)
    assert again.get("agg:1") == "new"
    again.close()
