"""The cache on a real Redis Cluster (3 primaries, a replica each): what one server does
inside one script, done per slot - and the checks that keep it exact.

The contract suite, the consistency checker and the stampede test also run on Cluster
(see conftest.py); these are the guarantees that only a cluster can break: entries spread
over every primary, multi-key verbs cut per slot in one round trip per node, pattern
invalidation over every primary, and fills checked after they are written (the fill epochs
and tag versions live in other slots than the entry).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.asyncio.cluster import ClusterNode as AsyncClusterNode
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import ClusterNode, RedisCluster

import hitrate
from hitrate import AsyncCache, Cache, scripts
from hitrate.plans import aside
from hitrate.slots import slot
from hitrate.testing import delete_prefix, unique_prefix
from hitrate.topologies import EmbeddedCluster

pytestmark = pytest.mark.ttl_audit_exempt  # the audit reads one server; see test_ttl_on_cluster


def _client(cluster: EmbeddedCluster) -> RedisCluster:
    return RedisCluster(
        startup_nodes=[ClusterNode(h, p) for h, p in cluster.startup_nodes], socket_timeout=5
    )


@pytest.fixture
def rc(cluster: EmbeddedCluster) -> Iterator[RedisCluster]:
    client = _client(cluster)
    yield client
    client.close()


@pytest.fixture
def cprefix(cluster: EmbeddedCluster) -> Iterator[str]:
    name = unique_prefix("cl")
    yield name
    delete_prefix(cluster.url, name)


def _owner(rc: RedisCluster, key: str) -> str:
    return str(rc.nodes_manager.get_node_from_slot(slot(key)).name)


def test_one_family_spreads_over_every_primary_and_pattern_invalidation_is_exact(
    rc: RedisCluster, cprefix: str
) -> None:
    cache = Cache(rc, prefix=cprefix, count=False)
    n = 100_000
    for start in range(0, n, 5_000):
        cache.set_many({f"user:{i}": i for i in range(start, start + 5_000)}, ttl=600)
    counts = {
        node.name: rc.execute_command("DBSIZE", target_nodes=node) for node in rc.get_primaries()
    }
    per_node = Counter(_owner(rc, cache.redis_key(f"user:{i}")) for i in range(0, n, 97))
    print(f"entries per primary: {counts}")
    assert len(per_node) == len(rc.get_primaries()) == 3
    assert all(c > n / 3 * 0.9 for c in counts.values())  # a third each, give or take
    # user:1* matches user:1, user:10..19, user:100..199, ... = 11,111 keys below 100,000
    expected = {f"user:{i}" for i in range(n) if str(i).startswith("1")}
    deleted = cache.invalidate_pattern("user:1*")
    assert deleted == len(expected) == 11_111
    left = cache.get_many([f"user:{i}" for i in range(n)])
    assert set(left) == {f"user:{i}" for i in range(n)} - expected


def test_get_many_is_one_round_trip_per_node(rc: RedisCluster, cprefix: str) -> None:
    cache = Cache(rc, prefix=cprefix, count=False)
    keys = [f"item:{i}" for i in range(300)]
    cache.set_many({k: k for k in keys})
    sent: Counter[int] = Counter()
    real = redis.connection.Connection.send_packed_command

    def counting(self: Any, command: Any, check_health: bool = True) -> None:
        sent[self.port] += 1
        real(self, command, check_health)

    redis.connection.Connection.send_packed_command = counting  # type: ignore[method-assign]
    try:
        found = cache.get_many(keys)
        invalidated = cache.invalidate(*keys[:150])
    finally:
        redis.connection.Connection.send_packed_command = real  # type: ignore[method-assign]
    assert found == {k: k for k in keys}
    assert invalidated == 150
    # two verbs, each one pipeline per primary (300 keys over ~300 slots)
    assert len(sent) == 3 and all(n == 2 for n in sent.values()), sent


def _slow_loader(started: threading.Event, go: threading.Event, value: Any) -> Any:
    def load() -> Any:
        started.set()
        assert go.wait(10)
        return value

    return load


def _race_pattern_invalidation(
    rc: RedisCluster, prefix: str, cache: Cache | None = None
) -> tuple[int, int]:
    """Readers load 90 keys (their loads wait); a pattern invalidation of 30,000 matching
    keys begins, and halfway through its SCAN the loads finish and fill. Returns (stale
    entries left behind, SCAN calls made)."""
    cache = cache or Cache(rc, prefix=prefix, count=False)
    for start in range(0, 30_000, 5_000):
        cache.set_many({f"row:{i}": "old" for i in range(start, start + 5_000)}, ttl=600)
    readers_keys = [f"row:{i}" for i in range(30_000, 30_090)]
    go = threading.Event()
    loading = threading.Semaphore(0)

    def load() -> str:
        loading.release()
        assert go.wait(20)
        return "old"  # read before the write that the invalidation follows

    readers = [
        threading.Thread(target=cache.get_or_fetch, args=(k, load), kwargs={"ttl": 600})
        for k in readers_keys
    ]
    for t in readers:
        t.start()
    for _ in readers:
        assert loading.acquire(timeout=20)
    driver = cache._driver
    real_scan = driver._scan
    calls = 0

    def scan(op: Any) -> Any:
        nonlocal calls
        calls += 1
        reply = real_scan(op)
        if calls == 15:  # about halfway: every reader fills now
            go.set()
            for t in readers:
                t.join(20)
        return reply

    driver._scan = scan  # type: ignore[method-assign]
    cache.invalidate_pattern("row:*")
    go.set()
    for t in readers:
        t.join(20)
    seen = Cache(rc, prefix=prefix, count=False)  # read on the primaries
    stale = sum(v == "old" for v in seen.get_many(readers_keys).values())
    return stale, calls


@pytest.mark.parametrize("naive", [False, True], ids=["checked", "naive"])
def test_a_fill_that_began_before_a_pattern_invalidation_is_taken_back(
    rc: RedisCluster, cprefix: str, naive: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The epoch check after the fill is what keeps pattern invalidation exact on Cluster,
    where SCAN can miss an entry filled while it runs (one server checks the epoch inside
    fill.lua). Without the check (``naive``) entries loaded before the invalidation stay."""
    if naive:

        def settle(ctx: Any, stores: Any) -> Any:
            return [True] * len(stores)
            yield

        monkeypatch.setattr(aside, "settle", settle)
    stale, calls = _race_pattern_invalidation(rc, cprefix)
    print(f"{'naive' if naive else 'checked'}: {stale} stale entries of 90, {calls} SCAN calls")
    assert calls > 15
    if naive:
        assert stale > 0
    else:
        assert stale == 0


@pytest.mark.parametrize("naive", [False, True], ids=["checked", "naive"])
def test_a_tagged_fill_that_began_before_the_tag_was_invalidated_is_never_served(
    rc: RedisCluster, cprefix: str, naive: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if naive:  # no check after the fill, and no version check on reads either

        def current(entry: Any, known: Any) -> bool:
            return True

        def settle(ctx: Any, stores: Any) -> Any:
            return [True] * len(stores)
            yield

        monkeypatch.setattr(aside, "settle", settle)
        monkeypatch.setattr(aside, "current", current)
    cache = Cache(rc, prefix=cprefix, count=False)
    started, go = threading.Event(), threading.Event()
    result: list[Any] = []
    reader = threading.Thread(
        target=lambda: result.append(
            cache.get_or_fetch(
                "post:1", _slow_loader(started, go, "old"), ttl=600, tags=["author:9", "feed"]
            )
        )
    )
    reader.start()
    assert started.wait(10)
    cache.invalidate_tag("author:9")
    go.set()
    reader.join(10)
    assert result == ["old"]
    again = cache.get_or_fetch("post:1", lambda: "new", ttl=600, tags=["author:9", "feed"])
    assert again == ("old" if naive else "new")


def test_tags_spanning_slots_invalidate_every_member(rc: RedisCluster, cprefix: str) -> None:
    cache = Cache(rc, prefix=cprefix, count=False)
    keys = [f"post:{i}" for i in range(60)]
    for k in keys:
        cache.get_or_fetch(k, lambda k=k: k, ttl=600, tags=["feed"])
    assert len({_owner(rc, cache.redis_key(k)) for k in keys}) == 3
    assert all(cache.get_or_fetch(k, lambda: "reloaded", tags=["feed"]) == k for k in keys)
    assert cache.invalidate_tag("feed") == 60
    assert rc.scard(f"{cprefix}:~tag:{{feed}}") == 0
    assert all(cache.get(k) is None for k in keys)


def test_bump_and_write_through_on_cluster(rc: RedisCluster, cprefix: str) -> None:
    cache = Cache(rc, prefix=cprefix, count=False)
    for i in range(20):
        cache.get_or_fetch(f"user:{i}", lambda i=i: i, ttl=600)
    assert cache.bump("user")
    assert all(cache.get_or_fetch(f"user:{i}", lambda: "new", ttl=600) == "new" for i in range(20))
    saved: list[Any] = []
    assert cache.write_through("user:3", {"v": 2}, saved.append) == {"v": 2}
    assert cache.get("user:3") == {"v": 2} and saved == [{"v": 2}]


def test_async_cache_on_cluster(cluster: EmbeddedCluster, cprefix: str) -> None:
    async def main() -> None:
        client = AsyncRedisCluster(
            startup_nodes=[AsyncClusterNode(h, p) for h, p in cluster.startup_nodes],
            socket_timeout=5,
        )
        cache = AsyncCache(client, prefix=cprefix, count=False)
        loads: list[int] = []

        async def load(i: int) -> int:
            loads.append(i)
            await asyncio.sleep(0.01)
            return i

        # 200 tasks over 20 keys: one load per key
        got = await asyncio.gather(
            *(
                cache.get_or_fetch(f"a:{i % 20}", lambda i=i: load(i % 20), ttl=600)
                for i in range(200)
            )
        )
        assert got == [i % 20 for i in range(200)] and sorted(loads) == list(range(20))
        assert await cache.get_many([f"a:{i}" for i in range(20)]) == {
            f"a:{i}": i for i in range(20)
        }
        assert await cache.invalidate_pattern("a:1*") == 11
        stats = await cache.stats()
        assert len(stats.nodes) == 3 and stats.keys == sum(n.keys for n in stats.nodes)
        await cache.close()
        await client.aclose()

    asyncio.run(main())


def test_stats_sum_every_primary(rc: RedisCluster, cprefix: str) -> None:
    cache = Cache(rc, prefix=cprefix)
    cache.set_many({f"s:{i}": i for i in range(300)})
    cache.get_many([f"s:{i}" for i in range(300)])
    stats = cache.stats()
    assert len(stats.nodes) == 3
    assert (
        stats.keys
        == sum(n.keys for n in stats.nodes)
        == sum(rc.execute_command("DBSIZE", target_nodes=n) for n in rc.get_primaries())
    )
    assert stats.memory_used_bytes == sum(n.memory_used_bytes for n in stats.nodes)
    assert stats.family("s").hits == 300
    assert stats.sample is not None and stats.sample.keys.get("s") == 300
    cache.close()


def test_demo_on_a_local_cluster(tmp_path: Path) -> None:
    """``hitrate demo --cluster``: the demo's own checks (0 stale reads, one load per hot
    key expiry, hit rates in range, ...) hold on a local cluster it starts."""
    from .test_demo import check_invariants

    hitrate = Path(sys.executable).with_name("hitrate")
    env = {k: v for k, v in os.environ.items() if k not in ("HITRATE_REDIS_URL", "REDIS_URL")}
    args = [str(hitrate), "demo", "--cluster", "--duration", "5", "--no-dashboard", "--json"]
    args += ["--database", f"sqlite:///{tmp_path / 'shop.db'}", "--scale", "0.1"]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=180, env=env, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "redis+cluster://127.0.0.1:" in proc.stderr
    report = json.loads(proc.stdout)
    check_invariants(report)
    rates = {row["family"]: row.get("hit_rate") for row in report["families"]}
    print(f"demo on a cluster: hit rates {rates}")


def _get_calls(cluster: EmbeddedCluster) -> dict[str, tuple[str, int]]:
    out = {}
    for port in cluster.ports:
        node = redis.Redis(port=port)
        calls = node.info("commandstats").get("cmdstat_get", {}).get("calls", 0)
        out[str(port)] = (node.info("replication")["role"], int(calls))
        node.close()
    return out


def test_replica_reads_are_opt_in_and_go_to_replicas(
    cluster: EmbeddedCluster, cprefix: str
) -> None:
    from .consistency import VersionedDB, run_workload, violations

    plain = Cache.from_url(cluster.url, prefix=cprefix, count=False)
    replicas = Cache.from_url(cluster.url + "?replica_reads=yes", prefix=cprefix, count=False)
    plain.set_many({f"r:{i}": i for i in range(300)})
    for cache, where in ((plain, "master"), (replicas, "slave")):
        before = _get_calls(cluster)
        assert all(cache.get(f"r:{i}") == i for i in range(300))
        after = _get_calls(cluster)
        served = {p: after[p][1] - before[p][1] for p in after if after[p][0] == where}
        print(f"GETs served by {where}s: {served}")
        assert sum(served.values()) >= 300
    with pytest.raises(hitrate.ConfigurationError, match="replica"):
        Cache.from_url(cluster.url + "?replica_reads=yes", near=hitrate.NearCache())
    # The staleness replica reads allow: reads that started after a write completed and still
    # saw an older version, and how late they were (replication lag; on loopback, none).
    keys = ["row:1", "row:2", "row:3"]
    log = run_workload(replicas, VersionedDB(keys), keys, seconds=1.5)
    stale, within = violations(log), violations(log, lag=0.05)
    print(f"replica reads: {stale} stale reads of {len(log)} operations, {within} beyond 50 ms")
    assert within == 0
    plain.close()
    replicas.close()


@pytest.mark.parametrize("naive", [False, True], ids=["checked", "naive"])
def test_a_caller_that_joins_after_an_invalidation_is_not_given_the_old_fill(
    rc: RedisCluster, cprefix: str, naive: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """L fills; the source changes and ``invalidate`` completes; then J misses and joins L's
    in-process flight while L's check after the fill is in flight. J must load the new
    value: L's check says whether its entry is still there (held.lua), as the fill
    script's reply does on one server. ``naive``: a check that does not look."""
    if naive:
        source = b"return 1"
        fake = scripts.LuaScript("held", source, hashlib.sha1(source).hexdigest())
        monkeypatch.setattr(scripts, "HELD", fake)
    cache = Cache(rc, prefix=cprefix, count=False)
    driver = cache._driver
    filled, gate = threading.Event(), threading.Event()
    real = driver.redis

    def slow_after_fill(op: Any) -> Any:
        reply = real(op)
        if getattr(getattr(op, "script", None), "name", "") == "fill_slot":
            filled.set()
            assert gate.wait(10)  # L is slow between its fill and its check
        return reply

    driver.redis = slow_after_fill  # type: ignore[method-assign]
    db = {"v": "old"}
    out: dict[str, Any] = {}

    def call(name: str) -> None:
        out[name] = cache.get_or_fetch("user:42", lambda: db["v"], ttl=60)

    leader = threading.Thread(target=call, args=("L",))
    leader.start()
    assert filled.wait(10)
    db["v"] = "new"
    assert cache.invalidate("user:42") == 1  # completed, after the source changed
    joiner = threading.Thread(target=call, args=("J",))
    joiner.start()
    time.sleep(0.2)  # J has missed and joined L's flight
    gate.set()
    leader.join(10)
    joiner.join(10)
    assert out["L"] == "old"  # L began before the invalidation
    assert out["J"] == ("old" if naive else "new")


def test_invalidations_owed_during_an_outage_are_delivered_per_slot(
    rc: RedisCluster, cprefix: str
) -> None:
    """Every primary stops answering (CLIENT PAUSE): the breaker opens, ``invalidate`` of
    keys on every node is owed instead of sent; once the cluster answers, the next call
    delivers them, one script per slot (a cross-slot script would be refused and dropped)."""
    from hitrate.breaker import Breaker

    cache = Cache(rc, prefix=cprefix, count=False, breaker=Breaker(threshold=2, cooldown=0.3))
    keys = [f"user:{i}" for i in range(30)]
    cache.set_many({k: k for k in keys}, ttl=600)
    assert len({_owner(rc, cache.redis_key(k)) for k in keys}) == 3
    slow = Cache.from_url(
        f"redis+cluster://127.0.0.1:{rc.get_primaries()[0].port}",
        prefix=cprefix,
        count=False,
        timeout=0.2,
        breaker=Breaker(threshold=2, cooldown=0.3),
    )
    assert slow.get("user:0") == "user:0"
    paused_until = time.monotonic() + 1.5
    for node in rc.get_primaries():
        rc.execute_command("CLIENT", "PAUSE", 1500, "ALL", target_nodes=node)
    assert slow.get("user:0", "MISS") == "MISS"  # times out: fails open
    assert slow.get("user:1", "MISS") == "MISS"  # the breaker opens
    assert slow.invalidate(*keys) == 0  # not sent: owed
    assert slow._ctx.owed.pending
    time.sleep(max(0.0, paused_until - time.monotonic()) + 0.4)
    assert slow.get("other:1", "MISS") == "MISS"  # delivers what is owed first
    assert not slow._ctx.owed.pending
    assert [k for k in keys if rc.exists(cache.redis_key(k))] == []
    assert all(cache.get(k) is None for k in keys)


@pytest.mark.parametrize("naive", [False, True], ids=["checked", "naive"])
def test_the_check_after_a_fill_reads_the_primary_when_reads_go_to_replicas(
    cluster: EmbeddedCluster,
    rc: RedisCluster,
    cprefix: str,
    naive: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With ``replica_reads=yes`` the fill epochs must still be read on the primary after
    a fill: replicas that lag (here: paused) would not have the epoch the pattern
    invalidation just changed. ``naive``: a plain HMGET, which goes to a replica."""
    if naive:

        def on_a_replica(keys: Any, fields: Any) -> Any:
            return ("HMGET", keys.generations(), *fields)

        monkeypatch.setattr(aside, "_epochs", on_a_replica)
    cache = Cache.from_url(cluster.url + "?replica_reads=yes", prefix=cprefix, count=False)
    replicas = [redis.Redis(port=p) for p in cluster.ports if p not in set(cluster.primaries())]
    real_invalidate = cache.invalidate_pattern

    def lagging_replicas(pattern: str) -> int:
        for replica in replicas:  # they stop applying what their primary sends them
            replica.execute_command("CLIENT", "PAUSE", 4000, "WRITE")
        return real_invalidate(pattern)

    cache.invalidate_pattern = lagging_replicas  # type: ignore[method-assign]
    try:
        stale, _ = _race_pattern_invalidation(rc, cprefix, cache)
    finally:
        for replica in replicas:
            replica.execute_command("CLIENT", "UNPAUSE")
            replica.close()
    print(f"replica reads, {'naive' if naive else 'checked'}: {stale} stale entries of 90")
    assert (stale > 0) if naive else (stale == 0)


def test_tagged_fills_stand_when_reads_go_to_lagging_replicas(
    cluster: EmbeddedCluster, rc: RedisCluster, cprefix: str
) -> None:
    """A tag's version is read (or made) on the primary before the lease: a replica that
    has not caught up would answer none, and every tagged fill would be taken back."""
    cache = Cache.from_url(cluster.url + "?replica_reads=yes", prefix=cprefix)
    on_primaries = Cache(rc, prefix=cprefix, count=False)
    replicas = [redis.Redis(port=p) for p in cluster.ports if p not in set(cluster.primaries())]
    for replica in replicas:
        replica.execute_command("CLIENT", "PAUSE", 3000, "WRITE")
    try:
        for i in range(10):
            assert cache.get_or_fetch(f"post:{i}", lambda i=i: i, tags=[f"t{i}"]) == i
        assert on_primaries.get_many([f"post:{i}" for i in range(10)]) == {
            f"post:{i}": i for i in range(10)
        }
    finally:
        for replica in replicas:
            replica.execute_command("CLIENT", "UNPAUSE")
            replica.close()
    row = cache.stats().family("post")
    assert (row.fills, row.fills_refused) == (10, 0)
    cache.close()


@pytest.mark.parametrize("naive", [False, True], ids=["pruned", "naive"])
def test_tag_sets_stay_about_as_large_as_their_live_entries(
    rc: RedisCluster, cprefix: str, naive: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tag filled without pause keeps its member set alive; entries that expired must
    leave it, or it grows without bound. One server prunes in fill.lua; on Cluster the
    members live in other slots and are checked from the client. ``naive``: no pruning."""
    if naive:
        monkeypatch.setattr(aside, "CLUSTER_PRUNE_EVERY", 10**9)
    cache = Cache(rc, prefix=cprefix, count=False)
    fills = 1500
    for i in range(fills):
        cache.get_or_fetch(f"post:{i}", lambda i=i: i, ttl=0.3, tags=["feed"])
    members = rc.scard(f"{cprefix}:~tag:{{feed}}")
    live = sum(v is not None for v in cache.get_many([f"post:{i}" for i in range(fills)]).values())
    print(f"{'naive' if naive else 'pruned'}: {members} members for {live} live entries")
    if naive:
        assert members == fills
    else:
        assert members < fills * 0.6


def test_a_read_that_redis_py_lost_under_it_is_asked_again(
    cluster: EmbeddedCluster, cprefix: str
) -> None:
    """redis-py 8.1's asyncio cluster client can lose a connection under a command when
    many tasks connect at once (AttributeError on its writer, nothing sent); a read is then
    asked once more instead of failing open (which costs a load)."""
    import redis.asyncio.connection

    async def main() -> None:
        client = AsyncRedisCluster(
            startup_nodes=[AsyncClusterNode(h, p) for h, p in cluster.startup_nodes]
        )
        cache = AsyncCache(client, prefix=cprefix, flush_interval=0)
        await cache.set("user:1", "cached")
        real = client.execute_command
        namespace: dict[str, Any] = {}
        code = "def lost(*args, **kwargs):\n    raise AttributeError('writelines')\n"
        exec(compile(code, redis.asyncio.connection.__file__, "exec"), namespace)
        failures = [1]

        async def once_lost(*args: Any, **kwargs: Any) -> Any:
            if args[0] == "GET" and failures:
                failures.pop()
                namespace["lost"]()
            return await real(*args, **kwargs)

        client.execute_command = once_lost  # type: ignore[method-assign]
        assert await cache.get_or_fetch("user:1", lambda: "loaded") == "cached"
        assert not failures and cache.counters.total().fail_open == 0
        await cache.close()
        await client.aclose()

    asyncio.run(main())
