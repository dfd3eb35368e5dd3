"""Stampedes: when a hot key expires, the loader runs once, not once per caller, across
threads, asyncio tasks and processes; with early refresh, callers never wait for it."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from hitrate import AsyncCache, Cache, Policy
from hitrate.testing import FakeClock, raw_client

LOAD_SECONDS = 0.05

# The second process: 16 threads that call get_or_fetch at the same instant as ours.
WORKER = textwrap.dedent(
    """
    import sys, threading, time, redis
    from hitrate import Cache
    from hitrate.testing import raw_client
    url, prefix, key, counter, start_at = sys.argv[1:6]
    raw = raw_client(url)
    cache = Cache.from_url(url, prefix=prefix, timeout=2.0)
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
def test_one_load_per_expiry_across_threads_and_processes(url: str, prefix: str) -> None:
    raw = raw_client(url)
    counter = f"{prefix}:test-loads"
    cache = Cache.from_url(url, prefix=prefix, timeout=2.0)

    def load() -> dict[str, bool]:
        raw.incr(counter)
        time.sleep(LOAD_SECONDS)
        return {"loaded": True}

    results: list[object] = []
    for expiry in range(3):
        cache.invalidate("hot:key")  # the key just expired
        start_at = time.time() + 0.8
        other = subprocess.Popen(
            [sys.executable, "-c", WORKER, url, prefix, "hot:key", counter, str(start_at)],
            stdout=subprocess.PIPE,
            text=True,
        )

        def call() -> None:
            time.sleep(max(0.0, start_at - time.time()))
            results.append(cache.get_or_fetch("hot:key", load))

        threads = [threading.Thread(target=call) for _ in range(64)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        out, _ = other.communicate(timeout=30)
        assert other.returncode == 0 and "ok" in out
        assert int(raw.get(counter) or 0) == expiry + 1, "the loader ran more than once"
    assert results == [{"loaded": True}] * (64 * 3)
    cache.close()


def test_naive_stampede_is_real(url: str, prefix: str) -> None:
    """The same 64 threads with a plain GET / load / SET: many loads (what we prevent)."""
    raw = raw_client(url)
    loads = []
    barrier = threading.Barrier(64)

    def call() -> None:
        barrier.wait()
        if raw.get(f"{prefix}:naive") is None:
            loads.append(1)
            time.sleep(LOAD_SECONDS)
            raw.set(f"{prefix}:naive", b"1", ex=60)

    threads = [threading.Thread(target=call) for _ in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(loads) > 10


async def test_one_load_per_expiry_async(url: str, prefix: str) -> None:
    cache = AsyncCache.from_url(url, prefix=prefix, timeout=2.0)
    loads = 0

    async def load() -> str:
        nonlocal loads
        loads += 1
        await asyncio.sleep(LOAD_SECONDS)
        return "value"

    for expiry in range(3):
        await cache.invalidate("hot:key")
        values = await asyncio.gather(*(cache.get_or_fetch("hot:key", load) for _ in range(64)))
        assert values == ["value"] * 64
        assert loads == expiry + 1
    await cache.close()


def test_loader_error_reaches_every_waiter(url: str, prefix: str) -> None:
    cache = Cache.from_url(url, prefix=prefix, timeout=2.0)
    calls = []
    barrier = threading.Barrier(16)
    errors: list[BaseException] = []

    def load() -> None:
        calls.append(1)
        time.sleep(LOAD_SECONDS)
        raise LookupError("database said no")

    def call() -> None:
        barrier.wait()
        try:
            cache.get_or_fetch("broken:1", load)
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert len(errors) == 16 and all(isinstance(e, LookupError) for e in errors)
    # The lease was released: the next caller loads at once instead of waiting it out.
    t0 = time.monotonic()
    assert cache.get_or_fetch("broken:1", lambda: "fixed") == "fixed"
    assert time.monotonic() - t0 < 1.0
    cache.close()


def test_loader_error_in_another_process_is_a_loader_error(url: str, prefix: str) -> None:
    from hitrate import LoaderError

    script = textwrap.dedent(
        """
        import sys, time
        from hitrate import Cache
        cache = Cache.from_url(sys.argv[1], prefix=sys.argv[2], timeout=2.0)
        def load():
            time.sleep(0.5)
            raise ValueError("row 7 is corrupt")
        try:
            cache.get_or_fetch("broken:2", load)
        except ValueError:
            print("raised")
        """
    )
    other = subprocess.Popen(
        [sys.executable, "-c", script, url, prefix], stdout=subprocess.PIPE, text=True
    )
    cache = Cache.from_url(url, prefix=prefix, timeout=2.0)
    lease = cache.redis_key("broken:2") + ":lease"
    raw = raw_client(url)
    deadline = time.monotonic() + 10
    while not raw.exists(lease) and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        cache.get_or_fetch("broken:2", lambda: "should not load")
    except LoaderError as exc:
        assert "row 7 is corrupt" in str(exc) and "broken:2" in str(exc)
    else:
        raise AssertionError("expected LoaderError")
    out, _ = other.communicate(timeout=30)
    assert "raised" in out
    cache.close()


def test_early_refresh_means_nobody_waits(url: str, prefix: str) -> None:
    """XFetch: under steady load the entry is refreshed in the background before it
    expires, so after warm-up no caller misses or waits for a load."""
    cache = Cache.from_url(url, prefix=prefix, timeout=2.0)
    policy = Policy(1.0, early=2.0)  # beta 2: refresh well ahead, even on a busy machine
    loads = []

    def load() -> int:
        loads.append(time.monotonic())
        time.sleep(LOAD_SECONDS)
        return len(loads)

    cache.get_or_fetch("report:top", load, ttl=policy)  # warm-up
    before = cache.counters.snapshot()["report"]
    stop = time.monotonic() + 3.5

    def steady() -> None:
        while time.monotonic() < stop:
            cache.get_or_fetch("report:top", load, ttl=policy)
            time.sleep(0.001)

    threads = [threading.Thread(target=steady) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = cache.counters.snapshot()["report"]
    assert len(loads) >= 3, "the entry should have been refreshed several times"
    assert after.misses - before.misses == 0
    assert after.waits - before.waits == 0
    cache.close()


def test_stale_window_serves_old_value_while_one_refreshes(url: str, prefix: str) -> None:
    clock = FakeClock()  # logical expiry moves only when told; Redis keeps ttl + stale
    cache = Cache.from_url(url, prefix=prefix, timeout=2.0, clock=clock)
    policy = Policy(0.3, stale=5)
    loads = []
    served = threading.Event()  # the refresh finishes only once every caller was served

    def load() -> int:
        loads.append(1)
        if len(loads) > 1:
            served.wait(10)
        time.sleep(LOAD_SECONDS)
        return len(loads)

    assert cache.get_or_fetch("agg:x", load, ttl=policy) == 1
    clock.advance(0.35)  # logically expired, still inside the stale window
    barrier = threading.Barrier(32)
    seen: list[int] = []

    def call() -> None:
        barrier.wait()
        seen.append(cache.get_or_fetch("agg:x", load, ttl=policy))

    threads = [threading.Thread(target=call) for _ in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    served.set()
    assert seen == [1] * 32  # everyone got the old value at once, none waited for the load
    cache.close()  # waits for the background refresh
    assert len(loads) == 2  # exactly one refresh
    cache2 = Cache.from_url(url, prefix=prefix, clock=clock)
    assert cache2.get("agg:x") == 2
    cache2.close()
