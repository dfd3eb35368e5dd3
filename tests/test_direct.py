"""The direct path (:mod:`hitrate.drivers.direct`): ``GET``/``MGET`` on a pooled connection
past redis-py's per-command layers, attacked where a hand-rolled path goes wrong.

* it is used for plain clients only, never for subclasses, single-connection clients,
  Sentinel pools or client-side caching;
* its replies are redis-py's, error replies included, and a clean connection goes back;
* a connection the server closed while idle is reconnected, not counted as an outage
  (a naive direct path fails that call open);
* a timeout fails open at once, without a second attempt, and leaves no half-read socket;
* asyncio cancellation mid-read (``asyncio.wait_for``) never hands a later call another
  key's reply, and the pool is whole afterwards (a naive path that gives the connection
  back without closing it is caught by the same check);
* more threads or tasks than the pool: every call is answered, every connection comes back.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import redis.asyncio as aredis
from redis.backoff import NoBackoff
from redis.retry import Retry

from hitrate import AsyncCache, Cache
from hitrate.drivers.direct import AsyncDirect, SyncDirect, _pack, async_direct, sync_direct

from .faultproxy import FaultProxy
from .faultservers import FLAVOUR, Managed

pytestmark = pytest.mark.skipif(not FLAVOUR, reason="no redis-server or valkey-server")

KEYS = [f"item:{n}" for n in range(40)]


@pytest.fixture(scope="module")
def managed() -> Iterator[Managed]:
    server = Managed.start()
    yield server
    server.stop()


@pytest.fixture
def proxied() -> Iterator[tuple[Managed, FaultProxy]]:
    server = Managed.start()
    with FaultProxy(server.port) as proxy:
        yield server, proxy
    server.stop()


def _plain(port: int, **kwargs: Any) -> redis.Redis:
    """A plain client on a non-blocking pool, without retries (as hitrate's own)."""
    return redis.Redis(port=port, socket_timeout=1, retry=Retry(NoBackoff(), 0), **kwargs)


# -- where it applies ---------------------------------------------------------------------


def test_direct_path_only_for_plain_clients(managed: Managed) -> None:
    class Custom(redis.Redis):
        pass

    assert isinstance(sync_direct(_plain(managed.port)), SyncDirect)
    with Cache.from_url(managed.url, prefix="direct") as cache:  # a BlockingConnectionPool
        assert isinstance(cache._driver._direct, SyncDirect)
    assert isinstance(async_direct(aredis.Redis(port=managed.port)), AsyncDirect)
    assert sync_direct(Custom(port=managed.port)) is None
    assert sync_direct(redis.Redis(port=managed.port, single_connection_client=True)) is None
    sentinel = redis.sentinel.Sentinel([("127.0.0.1", managed.port)])
    assert sync_direct(sentinel.master_for("mymaster")) is None
    cached = redis.Redis(port=managed.port, protocol=3, cache_config=redis.cache.CacheConfig())
    assert sync_direct(cached) is None


def test_direct_replies_are_redis_pys(managed: Managed) -> None:
    client = _plain(managed.port)
    direct = sync_direct(client)
    assert direct is not None
    client.set("direct:a", b"1")
    client.hset("direct:h", "f", "v")
    client.get("direct:a")  # one idle connection in the pool
    for args in [("GET", "direct:a"), ("GET", "direct:none"), ("MGET", "direct:a", "direct:none")]:
        assert direct.call(args) == client.execute_command(*args)
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        direct.call(("GET", "direct:h"))
    pool = client.connection_pool
    # The error reply was read in full: the connection went back, open and clean.
    assert not pool._in_use_connections  # type: ignore[attr-defined]
    [conn] = pool._available_connections  # type: ignore[attr-defined]
    assert conn._sock is not None and not conn.can_read()
    assert direct.call(("GET", "direct:a")) == b"1"
    client.delete("direct:a", "direct:h")
    client.close()


# -- a server that closed the connection while it sat in the pool --------------------------


class NaiveSyncDirect(SyncDirect):
    """What the direct path would be without its retry: the error is the caller's."""

    def call(self, args: tuple[Any, ...]) -> Any:
        conn = self._take()
        if conn is None:
            return self.client.execute_command(*args)
        try:
            conn.send_packed_command(_pack(args))
            return conn.read_response()
        finally:
            self._give(conn)


def _restart_then_read(pool: str, naive: bool, script: bool = False) -> tuple[Any, int, str]:
    server = Managed.start()
    try:
        if pool == "blocking":
            cache = Cache.from_url(server.url, prefix="direct", flush_interval=0)
        else:
            cache = Cache(_plain(server.port), prefix="direct", flush_interval=0)
        if naive:
            direct = cache._driver._direct
            cache._driver._direct = NaiveSyncDirect(direct.client, direct.pool, direct.blocking)
        cache.set("user:1", {"v": 1})
        assert cache.get("user:1") == {"v": 1}  # its connection now idles in the pool
        server.restart(keep_data=True)  # the idle connection's socket is closed
        if script:  # set.lua by EVALSHA: polled at checkout, never sent twice
            cache.set("user:1", {"v": 2})
            with Cache.from_url(server.url, prefix="direct", flush_interval=0) as reader:
                value = reader.get("user:1")
        else:
            with Cache.from_url(server.url, prefix="direct", flush_interval=0) as writer:
                writer.set("user:1", {"v": 2})
            value = cache.get("user:1")
        errors = cache.counters.total().errors
        state = cache.breaker.state
        cache.close()
        return value, errors, state
    finally:
        server.stop()


@pytest.mark.parametrize("pool", ["blocking", "plain"])
def test_a_connection_closed_while_idle_is_reconnected_not_failed_open(pool: str) -> None:
    assert _restart_then_read(pool, naive=False) == ({"v": 2}, 0, "closed")


def test_a_script_on_a_connection_closed_while_idle_is_sent_on_a_new_one() -> None:
    assert _restart_then_read("plain", naive=False, script=True) == ({"v": 2}, 0, "closed")


def test_the_restart_check_catches_a_direct_path_without_the_retry() -> None:
    value, errors, _ = _restart_then_read("plain", naive=True)
    assert value is None and errors == 1  # served as a miss: Redis was fine
    value, errors, _ = _restart_then_read("plain", naive=True, script=True)
    assert value == {"v": 1} and errors == 1  # the write was lost


# -- a timeout -----------------------------------------------------------------------------


def test_a_timeout_fails_open_once_and_leaves_no_half_read_socket(
    proxied: tuple[Managed, FaultProxy],
) -> None:
    _, proxy = proxied
    cache = Cache.from_url(proxy.url, prefix="direct", timeout=0.3, flush_interval=0)
    cache.set("user:1", {"v": 1})
    assert cache.get("user:1") == {"v": 1}
    accepted = proxy.accepted
    proxy.stall()
    assert cache.get("user:1", "down") == "down"  # failed open
    assert cache.counters.total().errors == 1
    assert proxy.accepted == accepted  # not sent again on a new connection
    pool = cache.client.connection_pool
    assert all(c is None or c._sock is None for c in pool.pool.queue)  # type: ignore[attr-defined]
    proxy.heal()  # one failure: the breaker (threshold 2) is still closed
    assert cache.get("user:1") == {"v": 1}  # the late reply was never read as this one's
    cache.close()


# -- asyncio cancellation mid-read ---------------------------------------------------------


class NaiveAsyncDirect(AsyncDirect):
    """What the direct path would be if it gave a connection back as it found it: a
    cancelled read leaves its reply on the socket for the next caller."""

    async def call(self, args: tuple[Any, ...]) -> Any:
        pool = self.client.connection_pool
        if not pool._available_connections:
            return await self.client.execute_command(*args)
        conn = pool._available_connections.pop()
        pool._in_use_connections.add(conn)
        try:
            await conn.send_packed_command(_pack(args))
            return await conn.read_response(disconnect_on_error=False)
        finally:
            pool._in_use_connections.discard(conn)
            pool._available_connections.append(conn)


async def _cancel_storm(url: str, naive: bool, proxy: FaultProxy) -> tuple[int, int, int]:
    """400 reads in waves of 8 over 4 pooled connections behind a 4 ms link, each given
    a random 0-50 ms by ``asyncio.wait_for``; then every key read once more. Returns
    (answered, wrong answers or errors, connections still marked in use)."""
    cache = AsyncCache.from_url(
        url, prefix="direct", timeout=1.0, max_connections=4, pool_timeout=5, flush_interval=0
    )
    for key in KEYS:
        await cache.set(key, {"key": key})
    await cache.get(KEYS[0])  # the driver has followed the loop: its direct path is set
    if naive:
        cache._driver._direct = NaiveAsyncDirect(cache.client)
    rng = random.Random(7)
    proxy.delay(0.004)

    async def one(key: str) -> bool:
        value = await asyncio.wait_for(cache.get(key), rng.uniform(0, 0.05))
        return value is None or value["key"] == key  # None: failed open (pool busy)

    results: list[Any] = []
    for _ in range(50):  # waves of 8, so most reads get a connection within their time
        wave = [one(rng.choice(KEYS)) for _ in range(8)]
        results += await asyncio.gather(*wave, return_exceptions=True)
    # A timeout is the only exception a caller may see; any other counts as wrong.
    answers = [
        r if isinstance(r, bool) else False for r in results if not isinstance(r, TimeoutError)
    ]
    proxy.heal()
    await asyncio.sleep(0.1)  # late replies have arrived on the sockets they were sent on
    after = await asyncio.gather(*(cache.get(k) for k in KEYS))
    wrong = answers.count(False) + sum(v is None or v["key"] != k for k, v in zip(KEYS, after))
    in_use = len(cache.client.connection_pool._in_use_connections)
    await cache.close()
    return len(answers), wrong, in_use


async def test_cancelled_reads_never_answer_another_key_and_the_pool_is_whole(
    proxied: tuple[Managed, FaultProxy],
) -> None:
    _, proxy = proxied
    answered, wrong, in_use = await _cancel_storm(proxy.url, naive=False, proxy=proxy)
    print(f"\n[direct] cancel storm: {answered} of 400 answered, {wrong} wrong")
    assert answered > 0 and wrong == 0 and in_use == 0


async def test_the_cancel_check_catches_a_direct_path_that_keeps_half_read_sockets(
    proxied: tuple[Managed, FaultProxy],
) -> None:
    _, proxy = proxied
    answered, wrong, _ = await _cancel_storm(proxy.url, naive=True, proxy=proxy)
    print(f"\n[direct] naive cancel storm: {answered} of 400 answered, {wrong} wrong")
    assert wrong > 0


# -- more callers than connections -----------------------------------------------------------


def test_more_threads_than_the_pool(managed: Managed) -> None:
    cache = Cache.from_url(managed.url, prefix="direct", max_connections=2, flush_interval=0)
    for key in KEYS:
        cache.set(key, {"key": key})
    wrong: list[str] = []

    def reader(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(150):
            key = rng.choice(KEYS)
            value = cache.get(key)
            if value is None or value["key"] != key:
                wrong.append(key)
            found = cache.get_many(KEYS[:5])
            if [found[k]["key"] for k in KEYS[:5]] != KEYS[:5]:
                wrong.append("get_many")

    threads = [threading.Thread(target=reader, args=(n,)) for n in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == []
    assert cache.counters.total().fail_open == 0
    pool = cache.client.connection_pool
    assert pool.pool.qsize() == 2  # type: ignore[attr-defined]  # every slot is back
    cache.close()


async def test_more_tasks_than_the_pool_wake_the_waiting_ones(managed: Managed) -> None:
    """Tasks that found no idle connection wait in redis-py's blocking pool; a direct call
    that gives its connection back must wake one, or they wait out ``pool_timeout`` and
    fail open."""
    cache = AsyncCache.from_url(
        managed.url, prefix="direct", max_connections=2, pool_timeout=2, flush_interval=0
    )
    for key in KEYS:
        await cache.set(key, {"key": key})
    await asyncio.gather(cache.get(KEYS[0]), cache.get(KEYS[1]))  # both connections idle
    pool = cache.client.connection_pool
    assert len(pool._available_connections) == 2
    # The first two calls take them directly; the others wait in the pool for them.
    values = await asyncio.gather(*(cache.get(k) for _ in range(10) for k in KEYS))
    assert [v["key"] for v in values] == KEYS * 10
    assert cache.counters.total().fail_open == 0
    assert not pool._in_use_connections and len(pool._available_connections) == 2
    await cache.close()
