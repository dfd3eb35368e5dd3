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

    .venv/bin/python benchmarks/near_cache.py [--url URL] [--n 20000] [--rounds 5] [--events 200]

Without --url a private server is started and stopped at the end; keys go under a unique
prefix, deleted at the end.
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

from hitrate import AsyncCache, Cache, NearCache
from hitrate.server import EmbeddedServer
from hitrate.testing import delete_prefix

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
    from hitrate import Cache
    cache = Cache.from_url(sys.argv[1], prefix=sys.argv[2])
    print("ready", flush=True)
    for line in sys.stdin:
        verb, _, arg = line.strip().partition(" ")
        getattr(cache, verb)(*([arg] if verb != "set" else [arg, time.time()]))
        print(time.time(), flush=True)
    """
)


def latency(url: str, prefix: str, events: int) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, url, prefix],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdin is not None
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ready"
    cache = Cache.from_url(url, prefix=prefix, near=NearCache(hot_only=False))
    wait_live(cache)
    near = cache.near
    assert near is not None
    actions = {
        "set": "set user:1",
        "invalidate": "invalidate user:1",
        "bump": "bump user",
        "invalidate_tag": "invalidate_tag team",
    }
    print(f"\ninvalidation latency, another process -> this one's copy gone ({events} each):")
    for name, command in actions.items():
        delays: list[float] = []
        for _ in range(events):
            cache.invalidate("user:1")
            while "user:1" not in near:
                cache.get_or_fetch("user:1", lambda: "v", tags=["team"])
            child.stdin.write(command + "\n")
            child.stdin.flush()
            done = float(child.stdout.readline())
            while "user:1" in near:
                time.sleep(0.00005)
            delays.append(max(0.0, time.time() - done) * 1000)
        print(f"  {name:15s} p50 {pct(delays, 0.5):6.3f} ms  p90 {pct(delays, 0.9):6.3f} ms  "
              f"p99 {pct(delays, 0.99):6.3f} ms  max {max(delays):6.3f} ms")  # fmt: skip
    child.stdin.close()
    child.wait(10)
    cache.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url")
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--events", type=int, default=200)
    args = parser.parse_args()
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
