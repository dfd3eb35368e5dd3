"""Counting, flushing and ``stats()``: verdicts, batches that add up across processes and are
never lost or counted twice, per-family rows, on real servers."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from typing import Any

import pytest
import redis

import hitrate
from hitrate import AsyncCache, Cache
from hitrate.counting import LOAD_BUCKETS, Counters, quantile
from hitrate.errors import CacheUnavailableError
from hitrate.flush import flush_plan, minute_key, totals_key
from hitrate.ops import Batch
from hitrate.server import EmbeddedServer
from hitrate.stats import MIN_READS, FamilyStats, Stats, Verdict, verdict_for
from hitrate.testing import FakeClock


def totals(url: str, prefix: str) -> dict[str, str]:
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        return client.hgetall(totals_key(prefix))
    finally:
        client.close()


def wait_for(predicate: Any, timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.02)


# -- verdicts and arithmetic, no Redis --------------------------------------------------------


@pytest.mark.parametrize(
    ("rate", "expected"),
    [
        (0.0, Verdict.USELESS),
        (49.99, Verdict.USELESS),
        (50.0, Verdict.WORKING),
        (79.99, Verdict.WORKING),
        (80.0, Verdict.TARGET),
        (95.0, Verdict.TARGET),
        (95.01, Verdict.STALENESS),
        (100.0, Verdict.STALENESS),
    ],
)
def test_verdict_boundaries(rate: float, expected: Verdict) -> None:
    assert verdict_for(rate) is expected


def test_verdict_texts_and_no_traffic() -> None:
    assert verdict_for(0.0, reads=0) is Verdict.NO_DATA
    assert str(Verdict.USELESS) == "useless — fix the keys or TTLs"
    assert str(Verdict.STALENESS) == "check for staleness"
    # rows: 50 hits of 100 is exactly 50 %, "working"; 199 of 200 is 99.5 %, staleness
    assert FamilyStats("a", hits=50, misses=50).verdict is Verdict.WORKING
    row = FamilyStats("b", hits=199, misses=1)
    assert (row.hit_rate, row.verdict) == (99.5, Verdict.STALENESS)
    assert FamilyStats("c", hits=2, misses=1).hit_rate == 66.67  # 2 decimals


def test_verdicts_need_a_minimum_sample() -> None:
    assert str(Verdict.TOO_FEW) == "too few reads" and Verdict.TOO_FEW.level == "too_few"
    assert FamilyStats("a", hits=3, misses=1).verdict is Verdict.TOO_FEW  # 75 % of 4 reads
    assert FamilyStats("a", hits=0, misses=99).verdict is Verdict.TOO_FEW
    assert FamilyStats("a", hits=0, misses=100).verdict is Verdict.USELESS
    assert FamilyStats("a", hits=75, misses=25).verdict is Verdict.WORKING
    assert verdict_for(75.0, reads=MIN_READS - 1) is Verdict.TOO_FEW
    stats = Stats(
        prefix="app", hits=3, misses=1, memory_used="1M", memory_used_bytes=1, keys=1,
        evicted_keys=0, expired_keys=0, keyspace_hits=0, keyspace_misses=0,
    )  # fmt: skip
    assert stats.verdict is Verdict.TOO_FEW and stats.as_dict()["verdict"] == "too few reads"


def test_quantile_from_buckets() -> None:
    buckets = [0] * (len(LOAD_BUCKETS) + 1)
    assert quantile(buckets, 0.5) is None
    i = LOAD_BUCKETS.index(0.005)
    buckets[i] = 99  # 99 loads in (2.5 ms, 5 ms]
    buckets[-1] = 1  # one slower than the last bound
    p50 = quantile(buckets, 0.5)
    assert p50 is not None and 0.0025 < p50 <= 0.005
    assert quantile(buckets, 0.999) == LOAD_BUCKETS[-1]


def test_batches_stay_queued_until_delivered() -> None:
    counters = Counters()
    counters.hit("user")
    counters.hit("user")
    first = counters.outbox(100)
    assert [(seq, minute) for seq, minute, _ in first] == [(1, 100)]
    assert first[0][2]["user"].hits == 2
    counters.miss("user")  # not delivered: batch 1 again, and a batch 2 with the new miss
    second = counters.outbox(101)
    assert [(seq, minute, d["user"].hits, d["user"].misses) for seq, minute, d in second] == [
        (1, 100, 2, 0),
        (2, 101, 0, 1),
    ]
    counters.delivered(2)
    assert counters.outbox(102) == []
    assert counters.snapshot()["user"].hits == 2  # the process's own view keeps growing


def test_flush_plan_keeps_batches_when_redis_fails() -> None:
    counters = Counters()
    counters.miss("user")
    plan = flush_plan(counters, "app", clock=lambda: 6000.0)
    op = plan.send(None)
    assert isinstance(op, Batch) and len(op.ops) == 1
    assert op.ops[0].keys[1:] == [totals_key("app"), minute_key("app", 100)]
    with pytest.raises(StopIteration) as stop:
        plan.throw(CacheUnavailableError("down"))
    assert stop.value.value is False
    assert len(counters.outbox(101)) == 1  # still queued, not lost
    plan = flush_plan(counters, "app", clock=lambda: 6000.0)
    plan.send(None)
    with pytest.raises(StopIteration) as stop:
        plan.send([1])
    assert stop.value.value is True
    assert counters.outbox(101) == []


def test_stats_as_dict_is_json() -> None:
    stats = Stats(
        prefix="app", hits=75, misses=25, memory_used="1M", memory_used_bytes=1 << 20, keys=4,
        evicted_keys=0, expired_keys=0, keyspace_hits=9, keyspace_misses=1,
        families=(FamilyStats("user", hits=75, misses=25),),
    )  # fmt: skip
    doc = json.loads(json.dumps(stats.as_dict()))
    assert doc["hit_rate"] == 75.0 and doc["verdict"] == "working"
    assert doc["families"][0]["verdict_level"] == "working"
    assert stats.family("nope").hits == 0
    assert stats.server_hit_rate == 90.0


# -- on real servers ------------------------------------------------------------------------


def test_stats_per_family(cache: Cache, url: str, prefix: str) -> None:
    for i in range(3):  # user: 3 misses (loads), then 9 hits -> 75 %
        cache.get_or_fetch(f"user:{i}", lambda: time.sleep(0.003) or {"name": "x" * 200})
    for _ in range(3):
        for i in range(3):
            cache.get_or_fetch(f"user:{i}", lambda: pytest.fail("loaded a warm key"))
    cache.get_or_fetch("config:site", lambda: {"theme": "dark"})  # config: 1 miss, 19 hits
    for _ in range(19):
        cache.get("config:site")
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.hit_rate) == (28, 4, 87.5)
    assert stats.verdict is Verdict.TOO_FEW  # 32 reads
    user, config = stats.family("user"), stats.family("config")
    assert (user.hits, user.misses, user.loads, user.fills) == (9, 3, 3, 3)
    assert (user.hit_rate, config.hit_rate) == (75.0, 95.0)
    assert user.load_p50 is not None and 0.001 < user.load_p50 <= 0.025
    assert user.load_p99 is not None and user.load_p99 >= user.load_p50
    assert stats.sample is not None and stats.sample.complete  # a small database: exact
    assert (user.keys, config.keys) == (3, 1)
    assert user.memory_bytes is not None and user.memory_bytes > 3 * 200
    assert user.bytes_per_entry == round(user.memory_bytes / 3)
    assert stats.family("user").as_dict()["bytes_per_entry"] == user.bytes_per_entry
    assert stats.memory_used and stats.memory_used_bytes > 0 and stats.keys >= 4
    assert stats.keyspace_hits > 0  # the server's own, every client
    assert stats.taken_at > 0
    # reading again (nothing new) gives the same counts: the flush is not repeated
    assert cache.stats(sample=0).hits == 28
    assert int(totals(url, prefix)["user|hits"]) == 9


def test_counters_add_up_across_two_processes(url: str, prefix: str) -> None:
    with Cache.from_url(url, prefix=prefix) as setup:
        setup.set("user:1", {"id": 1})
    child = textwrap.dedent(
        """
        import asyncio, sys
        from hitrate import AsyncCache, Cache
        url, prefix, mode = sys.argv[1:]
        if mode == "sync-atexit":   # never closed: the atexit flush must send the counts
            cache = Cache.from_url(url, prefix=prefix, flush_interval=0)
            for _ in range(10):
                cache.get("user:1")
            for i in range(5):
                cache.get(f"nope:{i}")
        else:                       # asyncio, closed
            async def main():
                cache = AsyncCache.from_url(url, prefix=prefix, flush_interval=0)
                for _ in range(10):
                    await cache.get("user:1")
                for i in range(5):
                    await cache.get(f"nope:{i}")
                await cache.close()
            asyncio.run(main())
        """
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", child, url, prefix, mode])
        for mode in ("sync-atexit", "async-close")
    ]
    assert [p.wait(30) for p in procs] == [0, 0]
    with Cache.from_url(url, prefix=prefix) as reader:
        stats = reader.stats(sample=0)
    assert (stats.family("user").hits, stats.family("nope").misses) == (20, 10)
    assert (stats.hits, stats.misses, stats.hit_rate) == (20, 10, 66.67)


def test_timer_flushes_without_close(url: str, prefix: str) -> None:
    cache = Cache.from_url(url, prefix=prefix, flush_interval=0.05)
    try:
        cache.get("user:1")
        assert wait_for(lambda: totals(url, prefix).get("user|misses") == "1")
        cache.get("user:1")
        assert wait_for(lambda: totals(url, prefix).get("user|misses") == "2")
    finally:
        cache.close()
    assert totals(url, prefix)["user|misses"] == "2"  # close() added nothing twice


async def test_async_cache_timer_and_stats(url: str, prefix: str) -> None:
    cache = AsyncCache.from_url(url, prefix=prefix, flush_interval=0.05)
    try:
        await cache.get_or_fetch("report:1", lambda: 1)
        await cache.get_or_fetch("report:1", lambda: 2)
        # the timer flushes with its own sync client while this loop is busy elsewhere
        assert await asyncio.to_thread(
            wait_for, lambda: totals(url, prefix).get("report|hits") == "1"
        )
        stats = await cache.stats(minutes=5, history=5)
    finally:
        await cache.close()
    assert (stats.hits, stats.misses, stats.minutes) == (1, 1, 5)
    assert stats.history is not None and len(stats.history.minutes) == 5
    assert stats.history.series("report")[-1] == 50.0


def test_unclosed_cache_flushes_when_collected(url: str, prefix: str) -> None:
    cache = Cache.from_url(url, prefix=prefix, flush_interval=0)
    cache.get("gone:1")
    del cache
    gc.collect()
    assert wait_for(lambda: totals(url, prefix).get("gone|misses") == "1")


def test_a_batch_sent_twice_counts_once(url: str, prefix: str) -> None:
    cache = Cache.from_url(url, prefix=prefix, flush_interval=0)
    try:
        for _ in range(4):
            cache.get("user:9")
        counters = cache.counters
        delivered = counters.delivered
        counters.delivered = lambda upto: None  # type: ignore[method-assign]  # reply "lost"
        assert cache.flush_stats()
        assert cache.flush_stats()  # the same batch again, as after a timeout
        counters.delivered = delivered  # type: ignore[method-assign]
        assert cache.flush_stats()
        assert totals(url, prefix)["user|misses"] == "4"
        assert counters.outbox(0) == []
    finally:
        cache.close()


def test_flush_survives_a_frozen_server_without_loss_or_double_count() -> None:
    server = EmbeddedServer.start()
    prefix = "frozen"
    cache = Cache.from_url(server.url, prefix=prefix, flush_interval=0, timeout=0.2)
    try:
        cache.get("user:1")
        assert cache.flush_stats()  # the script is loaded now
        for _ in range(6):
            cache.get("user:1")
        server.process.send_signal(signal.SIGSTOP)
        try:
            assert not cache.flush_stats()  # timed out: maybe applied, maybe not
        finally:
            server.process.send_signal(signal.SIGCONT)
        cache.get("user:2")
        assert wait_for(cache.flush_stats)
        assert totals(server.url, prefix)["user|misses"] == "8"
    finally:
        cache.close()
        server.stop()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_flushes_only_its_own_counts(url: str, prefix: str) -> None:
    cache = Cache.from_url(url, prefix=prefix, flush_interval=0)
    for _ in range(5):
        cache.get("user:1")  # counted in the parent, not flushed yet
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            for _ in range(3):
                cache.get("user:1")
            code = 0 if cache.flush_stats() else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    cache.close()
    assert totals(url, prefix)["user|misses"] == "8"


def test_window_and_history_use_minute_buckets(url: str, prefix: str) -> None:
    clock = FakeClock(1_800_000_000.0)  # on a minute boundary
    cache = Cache.from_url(url, prefix=prefix, clock=clock, flush_interval=0)
    try:
        cache.set("user:1", 1)
        cache.get("user:1")  # minute 0: 1 hit, 1 miss
        cache.get("user:2")
        cache.flush_stats()
        clock.advance(10 * 60)
        cache.get("user:2")  # minute 10: 1 miss
        stats = cache.stats(minutes=5, history=12, sample=0)
        everything = cache.stats(sample=0)
    finally:
        cache.close()
    assert (stats.hits, stats.misses) == (0, 1)
    assert (everything.hits, everything.misses) == (1, 2)
    assert stats.history is not None
    series = stats.history.series("user")
    assert len(series) == 12 and series[1] == 50.0 and series[-1] == 0.0
    assert series.count(None) == 10


def test_stats_raise_when_redis_is_unreachable() -> None:
    cache = Cache.from_url("redis://127.0.0.1:1/0", prefix="down", flush_interval=0)
    try:
        assert cache.get_or_fetch("user:1", lambda: "from the loader") == "from the loader"
        with pytest.raises(CacheUnavailableError):
            cache.stats()
        counts = cache.counters.snapshot()["user"]
        assert counts.errors == 1 and counts.fail_open == 1  # counted per family
        assert not cache.flush_stats()
    finally:
        cache.close()


def test_count_false_counts_nothing(url: str, prefix: str) -> None:
    with Cache.from_url(url, prefix=prefix, count=False) as cache:
        cache.get("user:1")
        assert cache.counters.snapshot() == {}
    assert totals(url, prefix) == {}
    with pytest.raises(hitrate.ConfigurationError):
        Cache.from_url(url, prefix=prefix, flush_interval=-1)
