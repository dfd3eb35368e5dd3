"""The near cache: what a near hit costs against a Redis hit, and how soon another
process's change reaches it.

1. **Hit speed.** A warm key (a 10-field dict) read by ``get_or_fetch`` on a Cache without
   near cache (one GET + decode) and on one with ``NearCache()`` (a dict lookup), sync and
   async, in interleaved rounds; prints µs per hit and the ratio (goal: near >= 20x).
2. **Invalidation latency.** Another process (a child with its own cache on the prefix)
   runs ``set`` / ``invalidate`` / ``bump`` / ``invalidate_tag`` on a key this process
   keeps; the time from the end of its call (its wall clock, same machine) until the copy
   is gone here is recorded; prints p50 / p90 / p99 / max per action (goal: within 10 ms).
   The copy is often gone before this process has read that the call ended (0 ms).
3. **On Redis Cluster** (``--cluster``): the same, on a private local cluster (3 primaries
   with a replica each; keys on every primary) beside a private server, and how long the
   near cache stays bypassed after an outage of its tracking: ``CLIENT KILL`` of one
   primary's tracking connection (``--kills`` times), then ``SIGKILL`` of a primary (down
   at once; live again once its replica is promoted and tracked).

    .venv/bin/python benchmarks/near_cache.py [--url URL] [--n 20000] [--rounds 5] [--events 200]
    .venv/bin/python benchmarks/near_cache.py --cluster [--events 200] [--kills 10]

Without --url a private server is started and stopped at the end; keys go under a unique
prefix, deleted at the end (the private cluster is stopped at the end).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import textwrap
import time
import uuid
from time import perf_counter
from typing import Any

import redis
from redis.cluster import ClusterNode, RedisCluster

from hitrate import AsyncCache, Cache, NearCache
from hitrate.server import EmbeddedServer
from hitrate.testing import delete_prefix
from hitrate.topologies import EmbeddedCluster

ROW = {f"field{i}": f"value number {i}" for i in range(10)}


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def wait_live(cache: Any) -> None:
    assert cache.near is not None
    assert cache.near.listener.wait_live(5.0)


def hit_speed(url: str, prefix: str, n: int, rounds: int) -> None:
    plain = Cache.from_url(url, prefix=prefix)
    near = Cache.from_url(url, prefix=prefix, near=NearCache())
    wait_live(near)
    plain.set("user:42", ROW)
    time.sleep(0.05)
    for _ in range(5):
        near.get_or_fetch("user:42", dict)
    assert "user:42" in near.near  # type: ignore[operator]

    def timed(cache: Cache) -> float:
        fetch = cache.get_or_fetch
        t0 = perf_counter()
        for _ in range(n):
            fetch("user:42", dict)
        return (perf_counter() - t0) / n * 1e6

    results: dict[str, list[float]] = {"redis": [], "near": []}
    for r in range(rounds):
        order = [("redis", plain), ("near", near)]
        for name, cache in order if r % 2 == 0 else order[::-1]:
            results[name].append(timed(cache))
    redis_us, near_us = statistics.median(results["redis"]), statistics.median(results["near"])
    print(f"sync   Redis hit {redis_us:7.2f} µs   near hit {near_us:6.3f} µs   "
          f"near is {redis_us / near_us:5.1f}x faster")  # fmt: skip
    plain.close()
    near.close()

    async def main() -> None:
        aplain = AsyncCache.from_url(url, prefix=prefix)
        anear = AsyncCache.from_url(url, prefix=prefix, near=NearCache())
        wait_live(anear)
        for _ in range(5):
            await anear.get_or_fetch("user:42", dict)

        async def atimed(cache: AsyncCache) -> float:
            fetch = cache.get_or_fetch
            t0 = perf_counter()
            for _ in range(n):
                await fetch("user:42", dict)
            return (perf_counter() - t0) / n * 1e6

        res: dict[str, list[float]] = {"redis": [], "near": []}
        for r in range(rounds):
            order = [("redis", aplain), ("near", anear)]
            for name, cache in order if r % 2 == 0 else order[::-1]:
                res[name].append(await atimed(cache))
        a, b = statistics.median(res["redis"]), statistics.median(res["near"])
        print(f"async  Redis hit {a:7.2f} µs   near hit {b:6.3f} µs   near is {a / b:5.1f}x faster")
        await aplain.close()
        await anear.close()

    asyncio.run(main())


CHILD = textwrap.dedent(
    """
    import sys, time
    from redis.cluster import ClusterNode, RedisCluster
    from hitrate import Cache
    if sys.argv[1].startswith("cluster:"):
        nodes = [ClusterNode("127.0.0.1", int(p)) for p in sys.argv[1][8:].split(",")]
        cache = Cache(RedisCluster(startup_nodes=nodes), prefix=sys.argv[2])
    else:
        cache = Cache.from_url(sys.argv[1], prefix=sys.argv[2])
    print("ready", flush=True)
    for line in sys.stdin:
        verb, _, arg = line.strip().partition(" ")
        getattr(cache, verb)(*([arg] if verb != "set" else [arg, time.time()]))
        print(time.time(), flush=True)
    """
)


def open_cache(target: str, prefix: str, **kwargs: Any) -> Cache:
    """A Cache on *target*: a URL, or ``cluster:port,port,...`` (a local cluster)."""
    if target.startswith("cluster:"):
        nodes = [ClusterNode("127.0.0.1", int(p)) for p in target[8:].split(",")]
        return Cache(RedisCluster(startup_nodes=nodes), prefix=prefix, **kwargs)
    return Cache.from_url(target, prefix=prefix, **kwargs)


def close_cache(cache: Cache) -> None:
    cache.close()
    cache.client.close()  # a cluster client passed in is ours to close


def latency(url: str, prefix: str, events: int, keys: list[str] | None = None) -> None:
    """*keys*: the keys to change in turn (default ``user:1``; on a cluster one per
    primary, so every node's invalidations are measured)."""
    keys = keys or ["user:1"]
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, url, prefix],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdin is not None
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ready"
    cache = open_cache(url, prefix, near=NearCache(hot_only=False))
    wait_live(cache)
    near = cache.near
    assert near is not None
    actions = {
        "set": "set {key}",
        "invalidate": "invalidate {key}",
        "bump": "bump user",
        "invalidate_tag": "invalidate_tag team",
    }
    where = "a local cluster" if url.startswith("cluster:") else "one server"
    print(f"\ninvalidation latency on {where}, another process -> this one's copy gone "
          f"({events} each, over {len(keys)} key(s)):")  # fmt: skip
    for name, command in actions.items():
        delays: list[float] = []
        for i in range(events):
            key = keys[i % len(keys)]
            cache.invalidate(key)
            while key not in near:
                cache.get_or_fetch(key, lambda: "v", tags=["team"])
            child.stdin.write(command.format(key=key) + "\n")
            child.stdin.flush()
            done = float(child.stdout.readline())
            while key in near:
                time.sleep(0.00005)
            delays.append(max(0.0, time.time() - done) * 1000)
        print(f"  {name:15s} p50 {pct(delays, 0.5):6.3f} ms  p90 {pct(delays, 0.9):6.3f} ms  "
              f"p99 {pct(delays, 0.99):6.3f} ms  max {max(delays):6.3f} ms")  # fmt: skip
    child.stdin.close()
    child.wait(10)
    close_cache(cache)


def keys_on_every_primary(cache: Cache) -> list[str]:
    """One ``user:`` key per primary of the cache's cluster."""
    client: Any = cache.client
    found: dict[int, str] = {}
    for i in range(1000):
        key = f"user:{i}"
        found.setdefault(client.get_node_from_key(cache.redis_key(key)).port, key)
        if len(found) == len(client.get_primaries()):
            break
    return list(found.values())


def outages(cluster: EmbeddedCluster, prefix: str, kills: int) -> None:
    """How long the near cache is bypassed after its tracking is lost (default backoff)."""
    target = "cluster:" + ",".join(str(p) for p in cluster.ports)
    cache = open_cache(target, prefix, near=NearCache(hot_only=False))
    wait_live(cache)
    near, listener = cache.near, cache.near.listener  # type: ignore[union-attr]
    assert near is not None
    back: list[float] = []
    for i in range(kills):
        node, client_id = list(listener.client_ids.items())[i % len(listener.client_ids)]
        admin = redis.Redis(host=node[0], port=node[1])
        t0 = perf_counter()
        admin.execute_command("CLIENT", "KILL", "ID", client_id)
        while near.live:
            time.sleep(0.0001)
        down = perf_counter() - t0
        while not near.live:
            time.sleep(0.0005)
        back.append((perf_counter() - t0) * 1000)
        admin.close()
        assert down < 1.0
    print(
        f"\nCLIENT KILL of one primary's tracking connection ({kills} times): bypassed for "
        f"p50 {pct(back, 0.5):.0f} ms, max {max(back):.0f} ms (reconnect backoff from 50 ms)"
    )
    victim = cluster.primaries()[0]
    t0 = perf_counter()
    cluster.kill(victim)
    while near.live:
        time.sleep(0.0001)
    down = perf_counter() - t0
    while not near.live:
        time.sleep(0.005)
    up = perf_counter() - t0
    healthy = cluster.wait_healthy() + up
    print(f"SIGKILL of a primary (node timeout {cluster.node_timeout} ms): near cache dropped "
          f"after {down * 1000:.1f} ms, live again after {up:.2f} s (cluster healthy again "
          f"after {healthy:.2f} s)")  # fmt: skip
    close_cache(cache)


def cluster_run(events: int, kills: int) -> None:
    server = EmbeddedServer.start()
    cluster = EmbeddedCluster.start()
    target = "cluster:" + ",".join(str(p) for p in cluster.ports)
    prefix = f"bench-near-{uuid.uuid4().hex[:8]}"
    try:
        latency(server.url, prefix, events)
        probe = open_cache(target, prefix)
        keys = keys_on_every_primary(probe)
        close_cache(probe)
        latency(target, prefix, events, keys)
        outages(cluster, prefix, kills)
    finally:
        cluster.stop()
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url")
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--cluster", action="store_true", help="on a private local cluster")
    parser.add_argument("--kills", type=int, default=10)
    args = parser.parse_args()
    if args.cluster:
        cluster_run(args.events, args.kills)
        return
    server = None if args.url else EmbeddedServer.start()
    url = args.url or server.url  # type: ignore[union-attr]
    prefix = f"bench-near-{uuid.uuid4().hex[:8]}"
    try:
        hit_speed(url, prefix, args.n, args.rounds)
        latency(url, prefix, args.events)
    finally:
        delete_prefix(url, prefix)
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
