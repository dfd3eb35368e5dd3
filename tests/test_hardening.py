"""Consistency under cancellation and outages, on real servers (issue 9: items 1-4, 6, 7,
9, 12, 13). Each test failed on the code before these guarantees existed."""

from __future__ import annotations

import asyncio
import contextvars
import random
import secrets
import threading
import time
from typing import Any

import pytest
import redis

from hitrate import AsyncCache, Cache, Policy
from hitrate.testing import FakeClock

DEAD = "redis://127.0.0.1:1/0"  # nothing listens there: every connect is refused


def raw_client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url)


# -- 1. cancelled writes ------------------------------------------------------------------
def test_interrupted_write_through_leaves_no_old_row_cached(url: str, prefix: str) -> None:
    cache = Cache.from_url(url, prefix=prefix)
    reader = Cache.from_url(url, prefix=prefix)  # another process, as far as Redis knows
    db = {"row": "old"}

    def save(value: Any) -> None:
        # A reader during the save must not fill the row as it was before the save.
        got = reader.get_or_fetch("user:1", lambda: db["row"], ttl=Policy(60, lease=0.2))
        assert got == "old"
        db["row"] = value  # committed ...
        raise KeyboardInterrupt  # ... then the caller is interrupted

    with pytest.raises(KeyboardInterrupt):
        cache.write_through("user:1", "new", save)
    assert cache.get("user:1") is None  # the old row was never cached
    assert raw_client(url).exists(cache.redis_key("user:1") + ":w") == 0  # window closed
    assert cache.get_or_fetch("user:1", lambda: db["row"]) == "new"
    cache.close()
    reader.close()


async def test_cancelled_write_through_leaves_no_old_row_cached(url: str, prefix: str) -> None:
    cache = AsyncCache.from_url(url, prefix=prefix)
    db = {"row": "old"}
    readers: list[asyncio.Task[Any]] = []

    async def reader() -> Any:
        return await cache.get_or_fetch("user:1", lambda: db["row"], ttl=Policy(60, lease=2))

    async def save(value: Any) -> None:
        readers.append(asyncio.create_task(reader()))  # a read while the write is in flight
        await asyncio.sleep(0.05)
        db["row"] = value
        await asyncio.sleep(5)  # committed; the deadline cancels us here

    with pytest.raises(TimeoutError):
        await asyncio.wait_for(cache.write_through("user:1", "new", save), 0.3)
    assert await readers[0] == "new"  # it waited for the write instead of filling the old row
    assert await cache.get("user:1") in (None, "new")
    assert await cache.get_or_fetch("user:1", lambda: db["row"]) == "new"
    await cache.close()


# -- 2. pattern invalidation against fills in flight --------------------------------------
def test_no_value_loaded_before_invalidate_pattern_survives_it(url: str, prefix: str) -> None:
    cache = Cache.from_url(url, prefix=prefix)
    raw = raw_client(url)
    violations = 0
    for trial in range(12):
        version = {"v": 1}
        keys = [f"item:{trial}:{i}" for i in range(40)]

        def load(k: str) -> Any:
            seen = version["v"]
            time.sleep(random.random() * 0.004)
            return seen

        def fill(ks: list[str]) -> None:
            for k in ks:
                cache.get_or_fetch(k, lambda k=k: load(k))

        threads = [threading.Thread(target=fill, args=(keys[i::4],)) for i in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.01)
        version["v"] = 2  # the write; then invalidate everything it touched
        cache.invalidate_pattern(f"item:{trial}:*")
        for t in threads:
            t.join()
        values = [cache.get(k) for k in keys]
        violations += sum(1 for v in values if v == 1)
    assert violations == 0
    raw.close()
    cache.close()


# -- 3. owed invalidations are delivered before the next read -----------------------------
def test_first_read_after_an_outage_does_not_serve_what_was_invalidated(
    url: str, prefix: str
) -> None:
    cache = Cache.from_url(url, prefix=prefix, timeout=0.1)
    cache.set("user:1", "old")
    admin = raw_client(url)
    admin.execute_command("CLIENT", "PAUSE", 600, "ALL")
    assert cache.invalidate("user:1") == 0  # timed out: owed
    assert cache.health().owed == 1
    time.sleep(0.8)  # Redis is back
    assert cache.get("user:1", "gone") == "gone"  # delivered first, then read
    assert cache.health().owed == 0
    assert admin.exists(cache.redis_key("user:1")) == 0
    cache.close()
    admin.close()


# -- 4. single flight while Redis is down -------------------------------------------------
def test_one_load_per_key_while_redis_is_down_threads() -> None:
    cache = Cache.from_url(DEAD, prefix="down")
    calls = []
    gate = threading.Barrier(32)

    def load() -> str:
        calls.append(1)
        time.sleep(0.2)
        return "v"

    results = []

    def call() -> None:
        gate.wait()
        results.append(cache.get_or_fetch("user:1", load))

    threads = [threading.Thread(target=call) for _ in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == ["v"] * 32
    assert len(calls) <= 2
    cache.close()


async def test_one_load_per_key_while_redis_is_down_tasks() -> None:
    cache = AsyncCache.from_url(DEAD, prefix="down")
    calls = []

    async def load() -> str:
        calls.append(1)
        await asyncio.sleep(0.2)
        return "v"

    results = await asyncio.gather(*(cache.get_or_fetch("user:1", load) for _ in range(32)))
    assert results == ["v"] * 32
    assert len(calls) <= 2
    await cache.close()


# -- 6. versioned writes: the older never deletes the newer -------------------------------
def test_older_versioned_write_keeps_the_newer_cached_row(url: str, prefix: str) -> None:
    cache = Cache.from_url(url, prefix=prefix)
    version = lambda row: row["v"]  # noqa: E731
    cache.write_through("user:1", {"v": 0}, lambda row: None, version=version)
    in_save, release = threading.Event(), threading.Event()

    def slow_save(row: Any) -> Any:
        in_save.set()
        release.wait(5)
        return row

    older = threading.Thread(
        target=cache.write_through,
        args=("user:1", {"v": 1}, slow_save),
        kwargs={"version": version},
    )
    older.start()
    assert in_save.wait(5)
    cache.write_through("user:1", {"v": 2}, lambda row: None, version=version)
    assert cache.get("user:1") == {"v": 2}
    release.set()
    older.join()
    assert cache.get("user:1") == {"v": 2}  # not deleted by the older write
    cache.close()


# -- 7. background refresh: contextvars, once per key --------------------------------------
REQUEST: contextvars.ContextVar[str] = contextvars.ContextVar("request", default="none")


def test_background_refresh_runs_with_the_callers_context_once(url: str, prefix: str) -> None:
    clock = FakeClock()
    cache = Cache.from_url(url, prefix=prefix, clock=clock)
    policy = Policy(10, stale=600)
    seen: list[str] = []
    all_served = threading.Event()

    def load() -> str:
        seen.append(REQUEST.get())
        if len(seen) > 1:  # the refresh lasts until every caller was served
            all_served.wait(10)
        return f"v{len(seen)}"

    assert cache.get_or_fetch("user:1", load, ttl=policy) == "v1"
    clock.advance(20)  # stale: served old while one caller refreshes
    results = []

    def request(i: int) -> None:
        REQUEST.set(f"req-{i}")  # each thread is one request with its own context
        results.append(cache.get_or_fetch("user:1", load, policy))

    threads = [threading.Thread(target=request, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    all_served.set()
    cache.close()  # waits for the background refresh
    assert results == ["v1"] * 16
    assert len(seen) == 2  # one load, then one refresh for 16 stale reads
    assert seen[1].startswith("req-")  # run with the context of the caller that spawned it


# -- 9. bounded everything ----------------------------------------------------------------
def test_tag_sets_drop_members_whose_entries_are_gone(url: str, prefix: str) -> None:
    cache = Cache.from_url(url, prefix=prefix)
    raw = raw_client(url)
    for i in range(300):
        cache.get_or_fetch(f"post:{i}", lambda: 1, ttl=1, tags=["feed"])
    tag_key = cache._ctx.keys.tag("feed")
    assert raw.scard(tag_key) == 300
    time.sleep(1.2)  # they expire
    for _ in range(300):
        cache.invalidate("post:live")
        cache.get_or_fetch("post:live", lambda: 1, ttl=60, tags=["feed"])
    assert raw.scard(tag_key) <= 20
    assert cache.invalidate_tag("feed") == 1
    raw.close()
    cache.close()


def test_multi_key_verbs_are_chunked_and_pools_bounded(url: str, prefix: str) -> None:
    cache = Cache.from_url(url, prefix=prefix)
    assert cache.client.connection_pool.max_connections == 64
    mapping = {f"user:{i}": i for i in range(2500)}
    assert cache.set_many(mapping)
    assert cache.get_many(mapping) == mapping
    assert cache.invalidate(*mapping) == 2500
    assert cache.get_many(mapping) == {}
    cache.close()


async def test_more_tasks_than_the_pool_is_not_an_outage(url: str, prefix: str) -> None:
    cache = AsyncCache.from_url(url, prefix=prefix, max_connections=8)
    await cache.set("user:1", "v")
    results = await asyncio.gather(*(cache.get("user:1") for _ in range(200)))
    assert results == ["v"] * 200
    assert cache.breaker.failures == 0
    assert cache.counters.snapshot()["user"].fail_open == 0
    await cache.close()


# -- 12. event loops ----------------------------------------------------------------------
def test_async_cache_survives_several_event_loops(url: str, prefix: str) -> None:
    cache = AsyncCache.from_url(url, prefix=prefix, max_connections=8)

    async def burst(n: int) -> list[Any]:
        return await asyncio.gather(
            *(cache.get_or_fetch(f"user:{i % 20}", lambda: n) for i in range(100))
        )

    for n in range(3):
        assert len(asyncio.run(burst(n))) == 100  # more tasks than the pool: it waits
    assert asyncio.run(cache.get("user:1")) == 0
    asyncio.run(cache.close())


def test_sync_cache_decorating_async_def_across_loops(url: str, prefix: str) -> None:
    cache = Cache.from_url(url, prefix=prefix)

    @cache.cached(key="user:{n}")
    async def user(n: int) -> int:
        return n * 2

    assert asyncio.run(user(1)) == 2
    assert asyncio.run(user(1)) == 2
    assert asyncio.run(user(2)) == 4
    cache.close()


# -- 13. namespace generations ------------------------------------------------------------
def test_bump_makes_a_family_or_the_prefix_unreachable(url: str, prefix: str) -> None:
    cache = Cache.from_url(url, prefix=prefix)
    other = Cache.from_url(url, prefix=prefix, generation_check=0.1)
    cache.set_many({"user:1": 1, "user:2": 2, "post:1": 3})
    assert other.get("user:1") == 1
    assert cache.bump("user")
    assert cache.get("user:1") is None and cache.get("user:2") is None
    assert cache.get("post:1") == 3
    time.sleep(0.15)
    assert other.get("user:1") is None  # another cache sees it within generation_check
    assert cache.get_or_fetch("user:1", lambda: 10) == 10
    assert cache.get("user:1") == 10  # filled under the new generation
    assert cache.bump()
    assert cache.get("post:1") is None and cache.get("user:1") is None
    cache.close()
    other.close()


def test_bump_refuses_a_fill_in_flight(url: str, prefix: str) -> None:
    cache = Cache.from_url(url, prefix=prefix)
    started, go = threading.Event(), threading.Event()

    def slow() -> str:
        started.set()
        go.wait(5)
        return "loaded-before-bump"

    t = threading.Thread(target=cache.get_or_fetch, args=("user:1", slow))
    t.start()
    assert started.wait(5)
    cache.bump("user")
    go.set()
    t.join()
    assert cache.get("user:1") is None
    cache.close()


def test_families_are_bounded(url: str, prefix: str, caplog: pytest.LogCaptureFixture) -> None:
    from hitrate.counting import MAX_FAMILIES, OTHER

    cache = Cache.from_url(url, prefix=prefix)
    for i in range(MAX_FAMILIES + 50):  # one family per id: a key scheme gone wrong
        cache.get(f"{i}:profile")
    names = set(cache.counters.snapshot())
    assert len(names) == MAX_FAMILIES + 1 and OTHER in names
    assert cache.counters.snapshot()[OTHER].misses == 50
    assert "key families" in caplog.text
    cache.close()


def test_waits_and_refused_fills_reach_stats(url: str, prefix: str) -> None:
    cache = Cache.from_url(url, prefix=prefix)
    started, go = threading.Event(), threading.Event()

    def slow() -> int:
        started.set()
        go.wait(5)
        return 1

    loader = threading.Thread(target=cache.get_or_fetch, args=("user:1", slow))
    loader.start()
    assert started.wait(5)
    other = Cache.from_url(url, prefix=prefix)  # waits across processes, by the lease
    waiter = threading.Thread(target=other.get_or_fetch, args=("user:1", lambda: 2))
    waiter.start()
    time.sleep(0.1)
    cache.invalidate("user:1")  # the loader's fill is refused
    go.set()
    loader.join()
    waiter.join()
    other.close()
    row = cache.stats().family("user")
    assert row.fills_refused >= 1
    assert row.waits >= 1
    assert row.as_dict()["fills_refused"] == row.fills_refused
    cache.close()


# -- 8. the object cache shares the lease plan --------------------------------------------
async def test_cancelled_object_load_gives_its_lease_back(url: str, prefix: str) -> None:
    cache = AsyncCache.from_url(url, prefix=prefix)
    users = cache.objects("user")

    async def slow() -> dict[str, int]:
        await asyncio.sleep(5)
        return {"a": 1}

    with pytest.raises(TimeoutError):
        await asyncio.wait_for(users.get_or_fetch(7, slow), 0.2)
    raw = raw_client(url)
    assert raw.exists(users.redis_key(7) + ":lease") == 0  # nobody waits out the lease
    raw.close()
    t0 = time.monotonic()
    assert await users.get_or_fetch(7, lambda: {"a": 2}) == {"a": 2}
    assert time.monotonic() - t0 < 1.0
    await cache.close()


def test_write_through_whose_begin_timed_out_does_not_block_readers(url: str, prefix: str) -> None:
    """The begin ran but its reply was lost (Redis paused past the timeout): the write still
    closes its window, so readers of the key fill at once instead of waiting out the lease."""
    cache = Cache.from_url(url, prefix=prefix, timeout=0.1)
    admin = raw_client(url)

    def save(row: Any) -> None:
        time.sleep(0.5)  # the pause ends while we save

    cache.get("user:0")  # the generations are read (one timeout only, below the breaker's 2)
    admin.execute_command("CLIENT", "PAUSE", 300, "WRITE")
    cache.write_through("user:1", {"v": 1}, save)
    time.sleep(0.2)
    assert admin.exists(cache.redis_key("user:1") + ":w") == 0
    t0 = time.monotonic()
    assert cache.get_or_fetch("user:1", lambda: {"v": 1}) == {"v": 1}
    assert cache.get("user:1") == {"v": 1}  # filled
    assert time.monotonic() - t0 < 1.0
    cache.close()
    admin.close()


def test_while_redis_is_down_a_load_begun_before_a_write_is_not_shared(
    url: str, prefix: str
) -> None:
    """Single flight while Redis is down keeps read-your-writes: a caller that starts after
    this process's write_through returned never gets a load that began before it."""
    cache = Cache.from_url(DEAD, prefix="down")
    db = {"row": "old"}
    loading = threading.Event()

    def slow_load() -> str:
        seen = db["row"]
        loading.set()
        time.sleep(0.3)
        return seen

    first = threading.Thread(target=cache.get_or_fetch, args=("user:1", slow_load))
    first.start()
    assert loading.wait(5)
    cache.write_through("user:1", "new", lambda row: db.update(row=row))
    assert cache.get_or_fetch("user:1", lambda: db["row"]) == "new"
    first.join()
    cache.close()


def test_a_lost_generations_hash_never_brings_retired_entries_back(url: str, prefix: str) -> None:
    """Under allkeys-* eviction the generations hash can be evicted like any key: a new one
    gets a new id, which retires every entry, instead of reviving those a bump retired."""
    cache = Cache.from_url(url, prefix=prefix, generation_check=0.05)
    cache.set("user:1", "before-bump")
    cache.bump("user")
    assert cache.get("user:1") is None
    raw = raw_client(url)
    raw.delete(f"{prefix}:~gen")  # evicted
    fresh = Cache.from_url(url, prefix=prefix)
    assert fresh.get("user:1") is None
    time.sleep(0.1)
    assert cache.get("user:1") is None
    assert fresh.get_or_fetch("user:1", lambda: "after") == "after"
    assert cache.get("user:1") == "after"  # both see the new hash
    raw.close()
    fresh.close()
    cache.close()


def test_background_refreshes_are_bounded(url: str, prefix: str) -> None:
    """Stale reads of many keys at once start at most MAX_BACKGROUND refreshes; the rest
    are served stale and give their lease back, so a later read can refresh them."""
    from hitrate.drivers import MAX_BACKGROUND

    clock = FakeClock()
    cache = Cache.from_url(url, prefix=prefix, clock=clock)
    policy = Policy(10, stale=600)
    n = MAX_BACKGROUND + 36
    for i in range(n):
        cache.get_or_fetch(f"agg:{i}", lambda: 0, ttl=policy)
    clock.advance(20)
    running, peak = [0], [0]
    lock, release = threading.Lock(), threading.Event()

    def slow() -> int:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        release.wait(5)
        with lock:
            running[0] -= 1
        return 1

    started = time.monotonic()
    served = [cache.get_or_fetch(f"agg:{i}", slow, ttl=policy) for i in range(n)]
    assert served == [0] * n  # all stale, served at once
    assert time.monotonic() - started < 2.0
    release.set()
    cache.close()  # waits for what was queued
    assert peak[0] <= 4  # the worker threads
    raw = raw_client(url)
    leases = list(raw.scan_iter(f"{prefix}:{{agg:*}}:lease"))
    assert leases == []  # refused refreshes gave their lease back
    reader = Cache.from_url(url, prefix=prefix, clock=clock)
    fresh = sum(1 for i in range(n) if reader.get(f"agg:{i}") == 1)
    assert fresh == MAX_BACKGROUND  # exactly the accepted refreshes landed
    reader.close()
    raw.close()


def test_lease_waits_run_on_an_injected_clock(url: str, prefix: str) -> None:
    """The drivers' clock and sleep are injectable: a caller waiting out another process's
    5 s lease does it on a fake clock, in no real time, then loads without filling."""
    holder = Cache.from_url(url, prefix=prefix)
    started, go = threading.Event(), threading.Event()

    def slow() -> str:
        started.set()
        go.wait(5)
        return "holder's"

    t = threading.Thread(target=holder.get_or_fetch, args=("user:1", slow))
    t.start()
    assert started.wait(5)
    clock = FakeClock(start=0.0)
    slept: list[float] = []

    def fake_sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.advance(seconds)

    waiter = Cache.from_url(url, prefix=prefix, monotonic=clock, sleep=fake_sleep)
    t0 = time.monotonic()
    assert waiter.get_or_fetch("user:1", lambda: "waiter's") == "waiter's"
    assert time.monotonic() - t0 < 2.0  # 5 s of lease waited on the fake clock
    assert sum(slept) >= 4.9  # it did wait the whole lease time, politely
    go.set()
    t.join()
    assert holder.get("user:1") == "holder's"  # the waiter did not fill over the holder
    holder.close()
    waiter.close()


def test_an_oversized_loader_result_is_served_not_cached(
    url: str, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Fail-open covers values the cache cannot hold: every caller gets what the loader
    returned (16 threads, one load), nothing is cached, it is counted and logged once."""
    cache = Cache.from_url(url, prefix=prefix, max_value_size=64 * 1024)
    big = secrets.token_urlsafe(200 * 1024)  # compression cannot bring it under 64 KiB
    loads: list[int] = []
    gate = threading.Barrier(16)

    def load() -> str:
        loads.append(1)
        time.sleep(0.1)
        return big

    results: list[str] = []
    errors: list[BaseException] = []

    def call() -> None:
        gate.wait()
        try:
            results.append(cache.get_or_fetch("blob:1", load))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert results == [big] * 16
    assert cache.get("blob:1") is None  # not cached
    assert cache.counters.snapshot()["blob"].fail_open >= 1
    assert "served without caching" in caplog.text and "blob:1" in caplog.text
    raw = raw_client(url)
    assert raw.exists(cache.redis_key("blob:1") + ":lease") == 0
    raw.close()
    cache.close()
    objects = Cache.from_url(url, prefix=prefix, max_value_size=64 * 1024).objects("doc")
    assert objects.get_or_fetch(1, lambda: {"body": big}) == {"body": big}
    assert objects.get(1) is None
