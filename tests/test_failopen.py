"""Fail-open on real servers: Redis stopped, hung or unconnectable.

* a stopped server refuses connections at once (the common "Redis is down");
* :class:`Blackhole` accepts connections and never answers, so every command waits for the
  socket timeout (a hung or overloaded server): this is what the circuit breaker is for;
* :func:`unconnectable` is a port whose TCP handshake never completes (a dropped SYN), so
  only ``connect_timeout`` bounds the wait;
* :class:`Restartable` is a server on a fixed port that keeps its data across a restart,
  for invalidations that must be retried once Redis is back.
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

import hitrate
from hitrate import AsyncCache, Breaker, Cache
from hitrate.server import EmbeddedServer, find_servers, free_port
from hitrate.testing import FakeClock

FLAVOURS = sorted(find_servers())
FLAVOUR = os.environ.get("HITRATE_TEST_SERVER") or (FLAVOURS[0] if FLAVOURS else "")
pytestmark = pytest.mark.skipif(not FLAVOUR, reason="no redis-server or valkey-server")

TIMEOUT = 0.05  # socket timeout for the hung-server tests


def url_of(port: int) -> str:
    return f"redis://127.0.0.1:{port}/0"


def counts(cache: Cache | AsyncCache) -> Any:
    return cache.counters.total()


@pytest.fixture(scope="module")
def dead_url() -> str:
    """The URL of a server that was started and stopped: connections are refused."""
    server = EmbeddedServer.start(FLAVOUR)
    server.stop()
    return server.url


class Blackhole:
    """Accepts TCP connections and never answers; counts the connections it accepted."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=256)
        self.sock.settimeout(0.02)
        self.url = url_of(self.sock.getsockname()[1])
        self.conns: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.conns.append(conn)

    def accepted(self) -> int:
        """Connections accepted so far, once the accept loop has caught up."""
        seen = -1
        while seen != len(self.conns):
            seen = len(self.conns)
            time.sleep(0.1)
        return seen

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()
        for conn in self.conns:
            conn.close()


@pytest.fixture
def blackhole() -> Iterator[Blackhole]:
    hole = Blackhole()
    yield hole
    hole.close()


@pytest.fixture
def unconnectable() -> Iterator[str]:
    """A listening port with a full accept queue: further SYNs are dropped, so a connect
    hangs until its timeout (Linux queues backlog + 1 connections, here one)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    filler = socket.create_connection(("127.0.0.1", port), timeout=1)
    probe = socket.socket()
    probe.settimeout(0.2)
    try:
        probe.connect(("127.0.0.1", port))
    except OSError:
        pass
    else:  # pragma: no cover - a kernel that does not drop SYNs on a full queue
        pytest.skip("this kernel completes connections beyond the accept queue")
    finally:
        probe.close()
    yield url_of(port)
    filler.close()
    listener.close()


# -- Redis stopped -------------------------------------------------------------------------


def test_redis_stopped_reads_serve_the_loader_and_count_fail_open() -> None:
    server = EmbeddedServer.start(FLAVOUR)
    cache = Cache.from_url(server.url, prefix="fo")
    try:
        assert cache.get_or_fetch("user:1", lambda: "cached") == "cached"
        assert cache.get("user:1") == "cached"
        server.stop()  # the pooled connection is now dead too

        loads: list[int] = []

        def load() -> dict[str, int]:
            loads.append(1)
            return {"id": 1}

        assert cache.get_or_fetch("user:1", load) == {"id": 1}
        assert cache.get_or_fetch("user:1", load) == {"id": 1}
        assert len(loads) == 2  # nothing could be cached: every call loads
        assert cache.get("user:1", "dflt") == "dflt"
        assert cache.get("user:1") is None
        assert cache.get("user:1", hitrate.MISSING) is hitrate.MISSING
        assert cache.get_many(["user:1", "user:2"]) == {}
        assert cache.set("user:1", "x") is False
        assert cache.write_through("user:1", {"id": 2}, lambda v: None) == {"id": 2}
        assert cache.invalidate("user:1") == 0
        total = counts(cache)
        assert total.fail_open >= 6
        assert total.loads == 3  # the first fill, then two loads without caching
        with pytest.raises(KeyError):  # a loader's own error still propagates
            cache.get_or_fetch("user:9", lambda: {}["missing"])
    finally:
        cache.close()
        server.stop()


def test_strict_mode_raises_cache_unavailable(dead_url: str) -> None:
    cache = Cache.from_url(dead_url, prefix="fo", strict=True)
    loads: list[int] = []
    with pytest.raises(hitrate.CacheUnavailableError) as info:
        cache.get_or_fetch("user:1", lambda: loads.append(1))
    assert isinstance(info.value, ConnectionError)
    assert "user:1" in str(info.value)  # the message names the operation and key
    assert loads == []  # strict: the caller decides, nothing is loaded behind its back
    with pytest.raises(ConnectionError):
        cache.get("user:1")
    # Two failures opened the breaker: now Redis is not even tried.
    with pytest.raises(hitrate.CircuitOpenError):
        cache.set("user:1", 1)
    cache.close()


# -- Redis hung: the breaker stops paying timeouts -----------------------------------------


def run_calls(url: str, breaker: Breaker, n: int = 20) -> tuple[float, Cache]:
    cache = Cache.from_url(
        url, prefix="fo", timeout=TIMEOUT, connect_timeout=TIMEOUT, breaker=breaker
    )
    t0 = time.monotonic()
    for i in range(n):
        assert cache.get_or_fetch(f"user:{i}", lambda: "loaded") == "loaded"
    return time.monotonic() - t0, cache


def test_open_breaker_skips_redis(blackhole: Blackhole) -> None:
    elapsed, cache = run_calls(blackhole.url, Breaker(threshold=2, cooldown=60))
    assert counts(cache).fail_open == 20
    assert blackhole.accepted() <= 2  # only the two calls that opened the breaker
    assert elapsed < 20 * TIMEOUT / 2  # ~2 timeouts, not 20
    cache.close()


def test_without_a_breaker_every_call_pays_the_timeout(blackhole: Blackhole) -> None:
    elapsed, cache = run_calls(blackhole.url, Breaker(threshold=10**9))
    assert counts(cache).fail_open == 20
    assert blackhole.accepted() == 20  # one connection per call, each timed out
    assert elapsed >= 20 * TIMEOUT * 0.9
    cache.close()


def test_breaker_lets_one_probe_through_per_cooldown(blackhole: Blackhole) -> None:
    clock = FakeClock(0.0)
    _, cache = run_calls(blackhole.url, Breaker(threshold=1, cooldown=5, clock=clock), n=5)
    assert blackhole.accepted() == 1
    clock.advance(5)
    for _ in range(5):
        assert cache.get("user:1", "d") == "d"
    assert blackhole.accepted() == 2  # one probe, which failed and reopened the breaker
    cache.close()


# -- timeouts ------------------------------------------------------------------------------


def timed_failure(cache: Cache) -> float:
    t0 = time.monotonic()
    with pytest.raises(hitrate.CacheUnavailableError, match=r"timed out|Timeout"):
        cache.get("user:1")
    return time.monotonic() - t0


@pytest.mark.parametrize("timeout", [0.05, 0.3])
def test_socket_timeout_is_honoured(blackhole: Blackhole, timeout: float) -> None:
    cache = Cache.from_url(blackhole.url, timeout=timeout, connect_timeout=5, strict=True)
    elapsed = timed_failure(cache)
    assert timeout * 0.9 <= elapsed < timeout + 1.0
    cache.close()


def test_default_timeouts_are_short(blackhole: Blackhole) -> None:
    cache = Cache.from_url(blackhole.url, strict=True)
    assert timed_failure(cache) < 1.0
    cache.close()


@pytest.mark.parametrize("connect_timeout", [0.05, 0.3])
def test_connect_timeout_is_honoured(unconnectable: str, connect_timeout: float) -> None:
    cache = Cache.from_url(unconnectable, timeout=5, connect_timeout=connect_timeout, strict=True)
    elapsed = timed_failure(cache)
    assert connect_timeout * 0.9 <= elapsed < connect_timeout + 1.0
    cache.close()


# -- invalidations that failed are retried when Redis is back ------------------------------


class Restartable:
    """A server on a fixed port that keeps its data across stop() and start() (SAVE before
    stopping; the same --dir and RDB file when starting)."""

    def __init__(self, workdir: Path) -> None:
        self.binary = find_servers()[FLAVOUR]
        self.port = free_port()
        self.url = url_of(self.port)
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        args = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(self.workdir), "--dbfilename", "dump.rdb",
            "--daemonize", "no", "--loglevel", "warning",
        ]  # fmt: skip
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url, socket_timeout=0.5, socket_connect_timeout=0.5)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.RedisError:
                assert self.proc.poll() is None, "server exited"
                assert time.monotonic() < deadline, "server did not start"
                time.sleep(0.02)
            finally:
                client.close()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        client = redis.Redis.from_url(self.url, socket_timeout=5)
        client.save()
        client.close()
        self.proc.terminate()
        self.proc.wait(10)

    def raw_get(self, key: str) -> bytes | None:
        client = redis.Redis.from_url(self.url)
        try:
            value: bytes | None = client.get(key)
            return value
        finally:
            client.close()


@pytest.fixture
def restartable(tmp_path: Path) -> Iterator[Restartable]:
    server = Restartable(tmp_path)
    server.start()
    yield server
    if server.proc is not None and server.proc.poll() is None:
        server.proc.kill()
        server.proc.wait()


def test_invalidation_during_outage_is_applied_once_redis_is_back(
    restartable: Restartable,
) -> None:
    clock = FakeClock(start=0.0)  # the breaker's clock: time moves only when told
    cache = Cache.from_url(restartable.url, prefix="fo", breaker=Breaker(2, 60, clock=clock))
    cache.set("user:1", "old")
    rkey = cache.redis_key("user:1")
    restartable.stop()
    assert cache.invalidate("user:1") == 0  # fail-open: remembered for later
    assert cache.get("user:2", "d") == "d"  # a second failure opens the breaker
    restartable.start()
    assert restartable.raw_get(rkey) is not None  # the outage kept the old value
    assert cache.get("user:1", "d") == "d"  # breaker open: Redis not even tried
    assert restartable.raw_get(rkey) is not None
    clock.advance(60)  # the breaker's cooldown: the next call is the probe
    assert cache.get("user:3", "d") == "d"  # any operation
    assert restartable.raw_get(rkey) is None
    assert cache.get("user:1", "gone") == "gone"
    cache.close()


def test_single_failed_invalidation_is_applied_once_redis_is_back(
    restartable: Restartable,
) -> None:
    # One failure only, so the breaker (threshold 2) never opened.
    cache = Cache.from_url(restartable.url, prefix="fo")
    cache.set("user:1", "old")
    rkey = cache.redis_key("user:1")
    restartable.stop()
    assert cache.invalidate("user:1") == 0
    restartable.start()
    assert restartable.raw_get(rkey) is not None
    assert cache.get("user:3", "d") == "d"  # any operation
    assert cache.get("user:3", "d") == "d"
    assert restartable.raw_get(rkey) is None, "the failed invalidation was never retried"
    assert cache.get("user:1", "gone") == "gone"
    cache.close()


# -- asyncio -------------------------------------------------------------------------------


async def test_async_redis_stopped_serves_the_loader(dead_url: str) -> None:
    cache = AsyncCache.from_url(dead_url, prefix="fo")

    async def load() -> dict[str, int]:
        return {"id": 1}

    assert await cache.get_or_fetch("user:1", load) == {"id": 1}
    assert await cache.get_or_fetch("user:1", lambda: "sync loader") == "sync loader"
    assert await cache.get("user:1", "dflt") == "dflt"
    assert await cache.get_many(["user:1"]) == {}
    assert await cache.invalidate("user:1") == 0
    assert counts(cache).fail_open >= 4
    assert counts(cache).loads == 2
    await cache.close()

    strict = AsyncCache.from_url(dead_url, prefix="fo", strict=True)
    with pytest.raises(hitrate.CacheUnavailableError):
        await strict.get_or_fetch("user:1", load)
    await strict.close()


async def test_async_open_breaker_skips_redis(blackhole: Blackhole) -> None:
    cache = AsyncCache.from_url(
        blackhole.url,
        prefix="fo",
        timeout=TIMEOUT,
        connect_timeout=TIMEOUT,
        breaker=Breaker(threshold=2, cooldown=60),
    )
    t0 = time.monotonic()
    for i in range(20):
        assert await cache.get_or_fetch(f"user:{i}", lambda: "loaded") == "loaded"
    assert time.monotonic() - t0 < 20 * TIMEOUT / 2
    assert blackhole.accepted() <= 2
    await cache.close()


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_every_write_verb_returns_while_redis_is_unreachable(dead_url: str, kind: str) -> None:
    """``set_many`` used to read the generations again and again while Redis could not
    answer (a recursion without end); every write verb must come back, failed open."""
    import asyncio

    from hitrate import AsyncCache

    done: list[object] = []

    def run() -> None:
        if kind == "sync":
            cache = Cache.from_url(dead_url, timeout=0.2, connect_timeout=0.2, count=False)
            done.append(cache.set_many({f"k:{i}": i for i in range(5)}))
            done.append(cache.set("k:9", 9))
            done.append(cache.invalidate("k:1", "k:2"))
            return

        async def main() -> None:
            cache = AsyncCache.from_url(dead_url, timeout=0.2, connect_timeout=0.2, count=False)
            done.append(await cache.set_many({f"k:{i}": i for i in range(5)}))
            done.append(await cache.set("k:9", 9))
            done.append(await cache.invalidate("k:1", "k:2"))
            await cache.close()

        asyncio.run(main())

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(20)
    assert not worker.is_alive(), "a write verb did not return while Redis was unreachable"
    assert done == [False, False, 0]


def test_a_failure_inside_redis_py_fails_open_but_our_own_errors_do_not(
    url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """redis-py's asyncio cluster client was seen raising ``AttributeError`` from a
    connection closed under it; such a failure inside the client is an outage (the call
    fails open), while an error of the caller's (its loader) still reaches it."""
    import redis.client

    cache = Cache.from_url(url, prefix=prefix, flush_interval=0)
    cache._driver._direct = None  # through execute_command, which is replaced below
    namespace: dict[str, Any] = {}
    code = (
        "def broken(*args, **kwargs):\n    raise AttributeError(\"'NoneType' has no writelines\")\n"
    )
    exec(compile(code, redis.client.__file__, "exec"), namespace)  # raised "inside redis-py"
    monkeypatch.setattr(cache.client, "execute_command", namespace["broken"])
    assert cache.get_or_fetch("user:1", lambda: "loaded") == "loaded"
    assert cache.counters.total().fail_open >= 1

    def loader() -> str:
        raise AttributeError("the caller's own bug")

    monkeypatch.undo()
    with pytest.raises(AttributeError, match="caller's own bug"):
        cache.get_or_fetch("user:2", loader)
    cache.close()
