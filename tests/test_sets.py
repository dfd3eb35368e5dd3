"""Dedup sets (``cache.seen``) and HyperLogLog counts (``cache.unique``) on real servers,
sync and async."""

from __future__ import annotations

import datetime as dt
import math
import threading
import time

import pytest
import redis

import hitrate
from hitrate import Cache
from hitrate.testing import FakeClock

from .structs import Caches, calls, delta, keys_under

pytest_plugins = ["tests.structs_plugin"]  # fixtures: c (sync and async), raw, dead_url


# -- seen ----------------------------------------------------------------------------------


async def test_add_is_true_only_the_first_time(c: Caches, raw: redis.Redis) -> None:
    sent = c.seen("sent:welcome")
    assert await sent.add("u1") is True
    assert await sent.add("u1") is False
    assert await sent.add(2) is True
    assert await sent.add("2") is False  # compared by text
    assert await sent.add(b"\xff") is True
    assert await sent.contains("u1") is True
    assert await sent.contains("u9") is False
    assert await sent.count() == 3
    assert raw.smembers(sent.redis_key()) == {b"u1", b"2", b"\xff"}


async def test_add_is_one_round_trip(c: Caches, raw: redis.Redis) -> None:
    sent = c.seen("rt", ttl=60)
    await sent.add("warm")  # load the script first
    watched = ("evalsha", "eval", "sadd", "sismember", "pexpire")
    before = calls(raw, *watched)
    assert await sent.add("x") is True
    # one EVALSHA; SADD and PEXPIRE ran inside it, atomically
    assert delta(before, calls(raw, *watched)) == {
        "evalsha": 1,
        "eval": 0,
        "sadd": 1,
        "sismember": 0,
        "pexpire": 1,
    }


async def test_add_many_remove_clear(c: Caches) -> None:
    seen = c.seen("batch")
    assert await seen.add_many([]) == 0
    assert await seen.add_many(["a", "b", "a", 1]) == 3
    assert await seen.add_many(f"item-{i}" for i in range(25_000)) == 25_000
    assert await seen.add_many(["a", "new"]) == 1
    assert await seen.count() == 25_004
    assert await seen.remove("a", "absent") == 1
    assert await seen.add("a") is True
    assert await seen.clear() is True
    assert await seen.count() == 0


def test_in_operator_on_sync_and_a_clear_error_on_async(cache: Cache) -> None:
    seen = cache.seen("in")
    seen.add("x")
    assert "x" in seen
    assert "y" not in seen
    with pytest.raises(TypeError, match=r"await seen\.contains"):
        _ = "x" in cache.aio.seen("in")


async def test_ttl_is_renewed_by_every_add(c: Caches, raw: redis.Redis) -> None:
    seen = c.seen("fresh", ttl=60)
    await seen.add("a")
    raw.pexpire(seen.redis_key(), 1000)
    await seen.add("a")  # not new, still renews
    assert 58_000 <= raw.pttl(seen.redis_key()) <= 60_000
    plain = c.seen("forever")
    await plain.add("a")
    assert raw.pttl(plain.redis_key()) == -1


def test_concurrent_adders_see_each_item_new_exactly_once(cache: Cache, url: str) -> None:
    """Two caches (as two processes would) x 8 threads add the same 300 items."""
    other = Cache.from_url(url, prefix=cache.prefix)
    news: list[bool] = []
    lock = threading.Lock()
    gate = threading.Barrier(16)

    def adder(seen: hitrate.structures.Seen) -> None:
        gate.wait()
        mine = [seen.add(f"msg-{i}") for i in range(300)]
        with lock:
            news.extend(mine)

    threads = [threading.Thread(target=adder, args=(cache.seen("msgs"),)) for _ in range(8)]
    threads += [threading.Thread(target=adder, args=(other.seen("msgs"),)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    other.close()
    assert len(news) == 16 * 300
    assert sum(news) == 300


async def test_windowed_seen_counts_per_window(c: Caches, raw: redis.Redis) -> None:
    now = math.floor(time.time() / 60) * 60 + 5  # 5 s into a real minute
    clock = FakeClock(now)
    minute = c.on(c.make(clock=clock)).seen("visitors", window=60)
    assert await minute.add("ada") is True
    assert await minute.add("bob") is True
    assert await minute.add("ada") is False
    first = minute.redis_key()
    assert first == f"{c.prefix}:~seen:{{visitors}}:w{(now - 5) * 1000}"
    # expires one window after its window ends (the default), to the millisecond
    assert raw.execute_command("PEXPIRETIME", first) == (now - 5 + 120) * 1000
    clock.advance(60)  # the next minute
    assert await minute.count() == 0
    assert await minute.add("ada") is True
    assert await minute.contains("bob") is False
    assert await minute.count() == 1
    assert await minute.count(at=now) == 2  # the previous window, while it is kept
    assert await minute.count(at=dt.datetime.fromtimestamp(now, dt.UTC)) == 2
    assert minute.redis_key() != first


async def test_windowed_seen_with_ttl_keeps_windows_that_long(c: Caches, raw: redis.Redis) -> None:
    day = c.seen("daily", ttl=3600, window=dt.timedelta(days=1))
    await day.add("x")
    start = math.floor(time.time() / 86400) * 86400
    assert day.redis_key().endswith(f":w{start * 1000}")
    ends_in = start + 86400 + 3600 - time.time()
    assert ends_in * 1000 - 5000 <= raw.pttl(day.redis_key()) <= ends_in * 1000 + 5000


async def test_seen_bad_input(c: Caches, raw: redis.Redis) -> None:
    seen = c.seen("bad")
    for item in [None, 1.5, True, ["a"]]:
        with pytest.raises(hitrate.InvalidArgumentError, match="items are strings"):
            await seen.add(item)
    with pytest.raises(hitrate.InvalidArgumentError):
        await seen.add_many(["ok", None])
    for window in [0, -1, "day"]:
        with pytest.raises(hitrate.ConfigurationError, match="window"):
            c.seen("bad", window=window)
    with pytest.raises(hitrate.InvalidKeyError):
        c.seen("")
    assert keys_under(raw, c.prefix) == []


async def test_seen_redis_down_raises(c: Caches, dead_url: str) -> None:
    seen = c.on(c.make(url=dead_url)).seen("down")
    with pytest.raises(hitrate.CacheUnavailableError):
        await seen.add("x")


# -- unique --------------------------------------------------------------------------------


async def test_unique_add_count_merge(c: Caches, raw: redis.Redis) -> None:
    monday, tuesday = c.unique("visitors:mon"), c.unique("visitors:tue")
    assert await monday.add() is False
    assert await monday.add("ada", "bob", 7) is True
    assert await monday.add("ada") is False
    assert await monday.count() == 3
    await tuesday.add("bob", "cy")
    week = c.unique("visitors:week", ttl=600)
    assert await week.merge("visitors:mon", tuesday.inner, "visitors:absent") == 4
    assert await week.count() == 4
    assert await monday.count() == 3  # sources unchanged
    assert 598_000 <= raw.pttl(week.redis_key) <= 600_000
    assert await week.merge() == 4
    # no scratch keys left behind
    assert sorted(keys_under(raw, c.prefix)) == sorted(
        [monday.redis_key, tuesday.redis_key, week.redis_key]
    )
    assert await monday.clear() is True
    assert await monday.count() == 0


async def test_merge_refuses_a_value_that_is_not_a_hyperloglog(c: Caches, raw: redis.Redis) -> None:
    good, bad = c.unique("good"), c.unique("bad")
    await good.add("a")
    raw.set(bad.redis_key, b"not a hyperloglog")
    with pytest.raises(hitrate.CacheUnavailableError, match="HyperLogLog"):
        await c.on(c.make(strict=True)).unique("dest").merge("good", "bad")
    assert [k for k in keys_under(raw, c.prefix) if ":merge:" in k] == []
    with pytest.raises(hitrate.InvalidArgumentError):
        await good.merge(42)


def test_a_million_adds_stay_within_the_documented_error_and_size(
    cache: Cache, raw: redis.Redis
) -> None:
    """HyperLogLog: standard error 0.81 %, at most 12 KB. Redis's HLL hash is fixed, so the
    estimate for these items is deterministic (-0.71 % on Redis 7 and Valkey 8)."""
    visitors = cache.unique("visitors:big")
    assert visitors.add(*(f"visitor-{i}" for i in range(1_000_000))) is True
    estimate = visitors.count()
    error = abs(estimate - 1_000_000) / 1_000_000
    assert error <= 0.0081, f"estimate {estimate}: error {error:.3%}"
    assert raw.strlen(visitors.redis_key) <= 12 * 1024 + 16  # 16-byte header + registers


async def test_unique_async_and_sync_share_a_counter(c: Caches) -> None:
    counter = c.unique("shared")
    await counter.add(*range(10_000))
    assert abs(await counter.count() - 10_000) <= 0.0081 * 3 * 10_000  # 3 standard errors


async def test_unique_bad_input(c: Caches, raw: redis.Redis) -> None:
    counter = c.unique("bad")
    with pytest.raises(hitrate.InvalidArgumentError):
        await counter.add("a", None)
    with pytest.raises(hitrate.InvalidKeyError):
        c.unique("")
    assert keys_under(raw, c.prefix) == []
