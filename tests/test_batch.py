"""get_or_fetch_many: one read, one loader call for every miss, one fill - with the
guarantees of get_or_fetch for each key (one load at a time, no stale fills)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest
import redis

import hitrate
from hitrate import AsyncCache, Cache, Policy


@pytest.fixture
def raw(url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(url)
    yield client
    client.close()


class Rows:
    """A loader of many rows that records each call's keys."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.lock = threading.Lock()

    def __call__(self, keys: list[str]) -> dict[str, object]:
        with self.lock:
            self.calls.append(sorted(keys))
        return {k: {"row": k} for k in keys if not k.endswith(":gone")}

    @property
    def loaded(self) -> list[str]:
        return sorted(k for call in self.calls for k in call)


def _leases(raw: redis.Redis, prefix: str) -> list[bytes]:
    return list(raw.scan_iter(match=f"{prefix}:*:lease"))


def test_one_loader_call_for_every_miss_then_one_round_trip(
    url: str, prefix: str, raw: redis.Redis
) -> None:
    cache = Cache.from_url(url, prefix=prefix)
    rows = Rows()
    keys = [f"user:{i}" for i in range(50)]
    got = cache.get_or_fetch_many(keys, rows)
    assert got == {k: {"row": k} for k in keys}
    assert rows.calls == [sorted(keys)]
    # The family has been missing, so the next batch leases first: the lease scripts
    # of all 50 keys in one round trip (each returns the entry it finds)...
    before = raw.info("commandstats")
    assert cache.get_or_fetch_many(keys, rows) == got
    after = raw.info("commandstats")
    assert after["cmdstat_evalsha"]["calls"] - before["cmdstat_evalsha"]["calls"] == 50
    # ...and once hits prevail, a batch is one MGET.
    before = raw.info("commandstats")
    assert cache.get_or_fetch_many(keys, rows) == got
    after = raw.info("commandstats")
    assert after["cmdstat_mget"]["calls"] - before.get("cmdstat_mget", {}).get("calls", 0) == 1
    assert after["cmdstat_evalsha"]["calls"] == before["cmdstat_evalsha"]["calls"]
    assert len(rows.calls) == 1  # every key a hit
    assert _leases(raw, prefix) == []
    cache.close()


def test_only_the_misses_are_loaded_and_absent_rows_are_none(url: str, prefix: str) -> None:
    cache = Cache.from_url(url, prefix=prefix, policies={"user": Policy(600, negative_ttl=60)})
    rows = Rows()
    cache.set("user:1", {"row": "cached"})
    got = cache.get_or_fetch_many(["user:1", "user:2", "user:3:gone"], rows)
    assert got == {"user:1": {"row": "cached"}, "user:2": {"row": "user:2"}, "user:3:gone": None}
    assert rows.calls == [["user:2", "user:3:gone"]]
    assert cache.get_or_fetch_many(["user:3:gone"], rows) == {"user:3:gone": None}
    assert len(rows.calls) == 1  # "not found" was cached (negative_ttl)
    assert cache.get_or_fetch_many([], rows) == {}
    cache.close()


def test_a_write_during_the_load_refuses_the_fill(url: str, prefix: str) -> None:
    cache = Cache.from_url(url, prefix=prefix)
    writer = Cache.from_url(url, prefix=prefix)

    def load(keys: list[str]) -> dict[str, str]:
        writer.invalidate("user:2")  # user 2 changed while we read the rows
        return {k: f"old {k}" for k in keys}

    got = cache.get_or_fetch_many(["user:1", "user:2"], load)
    assert got == {"user:1": "old user:1", "user:2": "old user:2"}
    assert writer.get("user:1") == "old user:1"
    assert writer.get("user:2") is None  # not cached: loaded before the write
    writer.close()
    cache.close()


def test_a_failing_loader_gives_every_lease_back(url: str, prefix: str, raw: redis.Redis) -> None:
    cache = Cache.from_url(url, prefix=prefix)

    def load(keys: list[str]) -> dict[str, str]:
        raise LookupError("database said no")

    with pytest.raises(LookupError):
        cache.get_or_fetch_many([f"user:{i}" for i in range(10)], load)
    assert _leases(raw, prefix) == []
    cache.close()


def test_each_key_is_loaded_once_across_concurrent_batches(url: str, prefix: str) -> None:
    """Eight threads ask for overlapping batches at once: every key is loaded exactly once
    (a key leased by another batch is waited for, not loaded again)."""
    caches = [Cache.from_url(url, prefix=prefix, timeout=2.0) for _ in range(2)]
    rows = Rows()
    barrier = threading.Barrier(8)
    results: list[dict[str, object]] = []

    def slow(keys: list[str]) -> dict[str, object]:
        threading.Event().wait(0.05)
        return rows(keys)

    def call(i: int) -> None:
        keys = [f"item:{j}" for j in range(i * 5, i * 5 + 20)]
        barrier.wait()
        results.append(caches[i % 2].get_or_fetch_many(keys, slow))

    threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = sorted({f"item:{j}" for j in range(55)})
    assert rows.loaded == every, "a key was loaded more than once"
    for got in results:
        assert all(v == {"row": k} for k, v in got.items()) and len(got) == 20
    for c in caches:
        c.close()


def test_redis_down_loads_once_and_caches_nothing() -> None:
    cache = Cache.from_url("redis://127.0.0.1:1/0", prefix="down")
    rows = Rows()
    keys = ["user:1", "user:2"]
    assert cache.get_or_fetch_many(keys, rows) == {k: {"row": k} for k in keys}
    assert rows.calls == [keys]
    cache.close()


def test_tags_and_a_bad_loader(url: str, prefix: str) -> None:
    cache = Cache.from_url(url, prefix=prefix)
    rows = Rows()
    cache.get_or_fetch_many(["post:1", "post:2"], rows, tags=["feed"])
    assert cache.invalidate_tag("feed") == 2
    cache.get_or_fetch_many(["post:1", "post:2"], rows, tags=["feed"])
    assert len(rows.calls) == 2
    with pytest.raises(TypeError, match="mapping"):
        cache.get_or_fetch_many(["post:9"], lambda keys: ["not", "a", "mapping"])
    cache.close()


async def test_async_batch(url: str, prefix: str) -> None:
    cache = AsyncCache.from_url(url, prefix=prefix)
    calls: list[list[str]] = []

    async def load(keys: list[str]) -> dict[str, int]:
        calls.append(sorted(keys))
        await asyncio.sleep(0.02)
        return {k: int(k.split(":")[1]) for k in keys}

    keys = [f"n:{i}" for i in range(20)]
    first, second = await asyncio.gather(
        cache.get_or_fetch_many(keys, load), cache.get_or_fetch_many(keys[5:], load)
    )
    assert first == {k: int(k.split(":")[1]) for k in keys}
    assert second == {k: first[k] for k in keys[5:]}
    assert sorted(k for c in calls for k in c) == sorted(keys)  # each loaded once
    assert await cache.get_or_fetch_many(keys, load) == first
    await cache.close()


def test_cached_many_calls_the_function_once_with_the_missing_ids(url: str, prefix: str) -> None:
    cache = Cache.from_url(url, prefix=prefix)
    asked: list[list[object]] = []

    @cache.cached_many(key="user:{id}")
    def load_users(ids: list[object]) -> dict[object, dict[str, object]]:
        asked.append(list(ids))
        return {i: {"id": str(i)} for i in ids if i != "ghost"}

    assert load_users([1, 2]) == {1: {"id": "1"}, 2: {"id": "2"}}
    assert load_users([2, 3, "a:b", "ghost"]) == {
        2: {"id": "2"},
        3: {"id": "3"},
        "a:b": {"id": "a:b"},
        "ghost": None,
    }
    assert asked == [[1, 2], [3, "a:b", "ghost"]]
    assert cache.get("user:a%3Ab") == {"id": "a:b"}  # ids are encoded like hitrate.key parts
    assert load_users.invalidate(2) == 1
    load_users([2])
    assert asked[-1] == [2]
    with pytest.raises(hitrate.InvalidKeyError):
        load_users("12")  # one string is not a list of ids
    with pytest.raises(hitrate.ConfigurationError, match="exactly one"):
        cache.cached_many(key="user:{user_id}")
    cache.close()


async def test_cached_many_async(url: str, prefix: str) -> None:
    cache = AsyncCache.from_url(url, prefix=prefix)

    @cache.cached_many(key="n:{id}")
    async def squares(ids: list[int]) -> dict[int, int]:
        return {i: i * i for i in ids}

    assert await squares([1, 2, 3]) == {1: 1, 2: 4, 3: 9}
    assert await cache.get("n:2") == 4
    assert await squares.invalidate(1, 2) == 2
    await cache.close()


def test_a_value_that_cannot_be_stored_gives_every_lease_back(
    url: str, prefix: str, raw: redis.Redis
) -> None:
    cache = Cache.from_url(url, prefix=prefix)

    def load(keys: list[str]) -> dict[str, object]:
        return {k: (1, 2) if k == "u:3" else k for k in keys}  # JSON cannot keep a tuple

    with pytest.raises(hitrate.SerializationError):
        cache.get_or_fetch_many([f"u:{i}" for i in range(5)], load)
    assert _leases(raw, prefix) == []  # no key is held up for the lease time
    cache.close()


def test_stale_entries_are_refilled_when_leasing_first(url: str, prefix: str) -> None:
    from hitrate.plans.context import LEAN_CAP
    from hitrate.testing import FakeClock

    clock = FakeClock()
    cache = Cache.from_url(url, prefix=prefix, clock=clock)
    policy = Policy(10, stale=600)
    rows = Rows()
    keys = [f"agg:{i}" for i in range(3)]
    cache.get_or_fetch_many(keys, rows, ttl=policy)
    clock.advance(20)  # logically expired, still in Redis (the stale window)
    cache._ctx.lean["agg"] = LEAN_CAP
    cache.get_or_fetch_many(keys, rows, ttl=policy)  # reloaded, and filled this time
    cache.get_or_fetch_many(keys, rows, ttl=policy)
    assert len(rows.calls) == 2
    cache.close()


def test_cached_many_answers_every_id_even_two_with_one_key(url: str, prefix: str) -> None:
    cache = Cache.from_url(url, prefix=prefix)
    asked: list[list[object]] = []

    @cache.cached_many(key="n:{id}")
    def load(ids: list[object]) -> dict[object, str]:
        asked.append(list(ids))
        return {i: f"row {i}" for i in ids}

    assert load([1, "1", 2]) == {1: "row 1", "1": "row 1", 2: "row 2"}
    assert asked == [[1, 2]]
    cache.close()
