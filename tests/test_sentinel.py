"""A cache on a Sentinel-managed primary: connecting (sync, asyncio, ``aio``, a client of
one's own), and a failover under cache-aside traffic from several threads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio.sentinel as asentinel
import redis.sentinel as rsentinel

from hitrate import AsyncCache, Cache
from hitrate.breaker import Breaker
from hitrate.health import server_url
from hitrate.testing import unique_prefix
from hitrate.topologies import EmbeddedSentinel


def test_from_url_on_sentinel_sync(sentinel: EmbeddedSentinel) -> None:
    with Cache.from_url(sentinel.url, prefix=unique_prefix()) as cache:
        pool = cache.client.connection_pool
        assert isinstance(pool, rsentinel.SentinelConnectionPool)
        assert isinstance(pool, redis.BlockingConnectionPool)  # bounded, waits when busy
        cache.set("user:1", {"id": 1})
        assert cache.get("user:1") == {"id": 1}
        assert cache.get_or_fetch("user:2", lambda: "loaded") == "loaded"
        assert cache.get("user:2") == "loaded"
        # on the primary the sentinels name
        assert pool.get_master_address() == ("127.0.0.1", sentinel.primary_port())
        assert server_url(cache.client) == sentinel.url + "/0"
        assert cache.health().ok


def test_sentinel_url_with_a_db(sentinel: EmbeddedSentinel) -> None:
    prefix = unique_prefix()
    with Cache.from_url(sentinel.url + "/3", prefix=prefix) as cache:
        cache.set("user:1", 1)
        assert cache.client.connection_pool.connection_kwargs["db"] == 3
        assert cache.get("user:1") == 1
    with Cache.from_url(sentinel.url + "/4", prefix=prefix) as cache:
        assert cache.get("user:1", "MISS") == "MISS"  # another database
    masked = server_url(rsentinel.Sentinel([("h", 1)]).master_for("svc", password="pw", db=2))
    assert masked == "redis+sentinel://:****@h:1/svc/2"


def test_an_unknown_service_is_an_outage_that_names_the_sentinels(
    sentinel: EmbeddedSentinel,
) -> None:
    url = sentinel.url.rsplit("/", 1)[0] + "/nosuchservice"
    with Cache.from_url(url, prefix=unique_prefix()) as cache:
        assert cache.get_or_fetch("user:1", lambda: "db") == "db"
        health = cache.health()
        assert not health.ok
        assert "name no reachable primary" in (health.error or "")
        assert "nosuchservice" in (health.error or "")


async def test_from_url_on_sentinel_async_and_aio(sentinel: EmbeddedSentinel) -> None:
    prefix = unique_prefix()
    cache = AsyncCache.from_url(sentinel.url, prefix=prefix)
    try:
        assert isinstance(cache.client.connection_pool, asentinel.SentinelConnectionPool)
        await cache.set("user:1", "a")
        assert await cache.get("user:1") == "a"
        assert await cache.get_or_fetch("user:2", lambda: "b") == "b"
        assert cache._flusher is not None  # the stats timer has a sync twin on the primary
    finally:
        await cache.close()
    with Cache.from_url(sentinel.url, prefix=prefix) as sync:
        assert await sync.aio.get("user:1") == "a"
        await sync.aio.set("user:3", "c")
        assert sync.get("user:3") == "c"
        assert isinstance(sync.aio.client.connection_pool, asentinel.SentinelConnectionPool)


async def test_sentinel_clients_of_ones_own_are_accepted(sentinel: EmbeddedSentinel) -> None:
    client = rsentinel.Sentinel(sentinel.sentinel_addresses).master_for("hitrate")
    cache = Cache(client, prefix=unique_prefix())
    try:
        cache.set("user:1", 1)
        assert cache.get("user:1") == 1
        assert await cache.aio.get("user:1") == 1
    finally:
        cache.close()
        client.close()
    aclient = asentinel.Sentinel(sentinel.sentinel_addresses).master_for("hitrate")
    acache = AsyncCache(aclient, prefix=unique_prefix())
    try:
        await acache.set("user:1", 2)
        assert await acache.get("user:1") == 2
    finally:
        await acache.close()
        await aclient.aclose()


# -- a failover under load (a private topology: its primary is killed) ----------------------


@pytest.fixture(scope="module")
def doomed_sentinel() -> Iterator[EmbeddedSentinel]:
    from .conftest import _topology_flavour

    topology = EmbeddedSentinel.start(_topology_flavour())
    yield topology
    topology.stop()


def test_failover_under_cache_aside_from_threads(
    doomed_sentinel: EmbeddedSentinel, capsys: pytest.CaptureFixture[str]
) -> None:
    topology = doomed_sentinel
    cache = Cache.from_url(topology.url, prefix=unique_prefix(), breaker=Breaker(cooldown=0.2))
    keys = [f"user:{i}" for i in range(50)]
    loads = [0]
    lock = threading.Lock()

    def load(key: str) -> str:
        with lock:
            loads[0] += 1
        return f"value of {key}"

    for key in keys:  # warm: every key cached
        cache.get_or_fetch(key, lambda key=key: load(key))
    cache.client.execute_command("WAIT", 2, 2000)  # the replicas have every entry
    stop = threading.Event()
    leaked: list[BaseException] = []
    wrong: list[tuple[str, object]] = []

    def reader(n: int) -> None:
        i = n
        while not stop.is_set():
            key = keys[i % len(keys)]
            i += 7
            try:
                value = cache.get_or_fetch(key, lambda key=key: load(key))
            except Exception as exc:  # fail-open must never let one through
                leaked.append(exc)
                continue
            if value != f"value of {key}":
                wrong.append((key, value))
            time.sleep(0.002)

    threads = [threading.Thread(target=reader, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    misses = 0
    try:
        time.sleep(0.3)
        old = topology.kill_primary()
        killed_at = time.monotonic()
        # A plain read never loads: the first value it returns after the kill was served by
        # Redis, so by the new primary.
        resumed = None
        j = 0
        while time.monotonic() - killed_at < 60:
            try:
                value = cache.get(keys[j % len(keys)], "MISS")
            except Exception as exc:
                leaked.append(exc)
                value = "ERROR"
            if value == f"value of {keys[j % len(keys)]}":
                resumed = time.monotonic() - killed_at
                break
            misses += value == "MISS"
            j += 1
            time.sleep(0.01)
        topology.wait_failover(timeout=5)
        time.sleep(0.5)  # readers go on, on the new primary
    finally:
        stop.set()
        for t in threads:
            t.join()
    try:
        assert leaked == []
        assert wrong == []
        assert topology.primary_port() != old
        assert resumed is not None, "no hit within 60 s of the kill"
        assert misses > 0  # reads did fail (open) while there was no primary
        with capsys.disabled():
            print(
                f"\nsentinel failover: hits resumed {resumed:.2f} s after the kill "
                f"({misses} failed-open reads before); {loads[0]} loads in all"
            )
        cache.set("user:new", "after")  # writes go to the new primary
        assert cache.get("user:new") == "after"
    finally:
        cache.close()


def test_demo_on_a_local_sentinel(tmp_path: Path) -> None:
    from .test_demo import check_invariants

    hitrate = Path(sys.executable).with_name("hitrate")
    env = {k: v for k, v in os.environ.items() if k not in ("HITRATE_REDIS_URL", "REDIS_URL")}
    args = [str(hitrate), "demo", "--sentinel", "--duration", "5", "--no-dashboard", "--json"]
    args += ["--database", f"sqlite:///{tmp_path / 'shop.db'}", "--scale", "0.1"]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120, env=env, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "started a local" in proc.stderr and "redis+sentinel://127.0.0.1:" in proc.stderr
    check_invariants(json.loads(proc.stdout))
