"""Hit-path overhead of hitrate versus raw redis-py + stdlib json.

Measures µs per call, in one process against one server, of reading a warm key that holds
a user profile (a dict of 14 fields, 434 bytes of JSON):

* sync baseline: ``json.loads(r.get(key))`` with ``r = redis.Redis.from_url(url)``;
  against ``cache.get_or_fetch("user:42", loader)`` and a ``@cache.cached(key=
  "user:{user_id}")`` function, where ``cache = hitrate.Cache(r, prefix=...)``;
* async: the same three, awaited, with ``redis.asyncio`` and ``hitrate.AsyncCache``.

hitrate wraps the very client the baseline uses (hiredis parser when installed), so both
pay the same round trip and reply parsing. After a warm-up, each of R rounds runs N calls
of every case, the order reversing every other round so drift hits all cases alike. The
table shows the median of the per-round µs/op, the min..max over rounds, and ``ratio``:
µs/op over the baseline of the same mode. 1.00 = no overhead; 1.10 = a hit costs 10% more
than the hand-written GET + json.loads; below 1 = hitrate is faster. The loopback round
trip dominates both, so ``+µs`` (µs/op minus baseline) is the library's own cost per hit.

    .venv/bin/python benchmarks/hit_path.py [--url URL] [--n N] [--rounds R] [--json]

Without --url (or HITRATE_REDIS_URL) a private server is started and stopped at the end.
Keys go under a unique prefix; only those keys are deleted at the end, nothing is flushed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import uuid
from time import perf_counter
from typing import Any

import redis
import redis.asyncio as aredis
from redis.utils import HIREDIS_AVAILABLE

import hitrate
from hitrate import AsyncCache, Cache
from hitrate.server import EmbeddedServer

USER_ID = 42
KEY = f"user:{USER_ID}"
PROFILE: dict[str, Any] = {
    "id": USER_ID,
    "username": "ada.lovelace",
    "email": "ada.lovelace@example.com",
    "display_name": "Ada Lovelace",
    "created_at": "2021-03-14T09:26:53Z",
    "last_login": "2025-11-02T18:04:11Z",
    "is_active": True,
    "is_staff": False,
    "locale": "en-GB",
    "timezone": "Europe/London",
    "avatar_url": "https://cdn.example.com/avatars/42/7f3a9c.png",
    "followers": 1843,
    "roles": ["member", "editor"],
    "settings": {"theme": "dark", "newsletter": False},
}


def never(*_: Any) -> Any:
    raise AssertionError("loader called: the benchmark key was not warm")


async def anever(*_: Any) -> Any:
    never()


def make_cases(r: Any, ar: Any, cache: Cache, acache: AsyncCache, raw_key: str) -> list[Any]:
    """(mode, name, timer): ``await timer(n)`` makes n calls and returns the seconds taken.
    The sync timers are coroutines only to share one runner; their loops never await."""

    @cache.cached(key="user:{user_id}")
    def get_user(user_id: int) -> Any:
        return never()

    @acache.cached(key="user:{user_id}")
    async def aget_user(user_id: int) -> Any:
        return await anever()

    async def sync_base(n: int) -> float:
        get, loads, k = r.get, json.loads, raw_key
        t0 = perf_counter()
        for _ in range(n):
            loads(get(k))
        return perf_counter() - t0

    async def sync_gof(n: int) -> float:
        gof, k = cache.get_or_fetch, KEY
        t0 = perf_counter()
        for _ in range(n):
            gof(k, never)
        return perf_counter() - t0

    async def sync_cached(n: int) -> float:
        t0 = perf_counter()
        for _ in range(n):
            get_user(USER_ID)
        return perf_counter() - t0

    async def async_base(n: int) -> float:
        get, loads, k = ar.get, json.loads, raw_key
        t0 = perf_counter()
        for _ in range(n):
            loads(await get(k))
        return perf_counter() - t0

    async def async_gof(n: int) -> float:
        gof, k = acache.get_or_fetch, KEY
        t0 = perf_counter()
        for _ in range(n):
            await gof(k, anever)
        return perf_counter() - t0

    async def async_cached(n: int) -> float:
        t0 = perf_counter()
        for _ in range(n):
            await aget_user(USER_ID)
        return perf_counter() - t0

    return [
        ("sync", "baseline: GET + json.loads", sync_base),
        ("sync", "Cache.get_or_fetch", sync_gof),
        ("sync", "@Cache.cached", sync_cached),
        ("async", "baseline: await GET + json.loads", async_base),
        ("async", "AsyncCache.get_or_fetch", async_gof),
        ("async", "@AsyncCache.cached", async_cached),
    ]


async def bench(url: str, n: int, rounds: int) -> dict[str, Any]:
    prefix = f"hrbench-{uuid.uuid4().hex[:12]}"
    raw_key = f"{prefix}:raw:{KEY}"
    r, ar = redis.Redis.from_url(url), aredis.Redis.from_url(url)
    cache, acache = Cache(r, prefix=prefix), AsyncCache(ar, prefix=prefix)
    try:
        r.set(raw_key, json.dumps(PROFILE))
        cache.set(KEY, PROFILE, ttl=3600)
        assert json.loads(r.get(raw_key)) == PROFILE
        assert cache.get_or_fetch(KEY, never) == PROFILE
        assert await acache.get_or_fetch(KEY, anever) == PROFILE
        cases = make_cases(r, ar, cache, acache, raw_key)
        for _, _, timer in cases:  # warm-up: connections, caches, specialised bytecode
            await timer(max(n // 5, 200))
        per_round: dict[str, list[float]] = {name: [] for _, name, _ in cases}
        for i in range(rounds):
            for _, name, timer in cases if i % 2 == 0 else reversed(cases):
                per_round[name].append(await timer(n) / n * 1e6)
        misses = cache.counters.total().misses + acache.counters.total().misses
        assert misses == 0, f"{misses} misses: the hit path was not measured alone"
        info = r.info("server")
    finally:
        keys = list(r.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            r.unlink(*keys)
        r.close()
        await ar.aclose()
    valkey = "valkey_version" in info or info.get("server_name") == "valkey"
    env = {
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "hitrate": hitrate.__version__,
        "redis_py": redis.__version__,
        "hiredis": HIREDIS_AVAILABLE,
        "server": "valkey" if valkey else "redis",
        "server_version": info.get("valkey_version") or info.get("redis_version"),
    }
    base = {m: statistics.median(per_round[c]) for m, c, _ in cases if c.startswith("baseline")}
    results = []
    for mode, name, _ in cases:
        us = statistics.median(per_round[name])
        results.append(
            {
                "mode": mode,
                "case": name,
                "us_per_op": round(us, 3),
                "ratio": round(us / base[mode], 3),
                "overhead_us": round(us - base[mode], 3),
                "rounds_us": [round(x, 3) for x in per_round[name]],
            }
        )
    config = {"n": n, "rounds": rounds, "fields": len(PROFILE), "bytes": len(json.dumps(PROFILE))}
    return {"environment": env, "config": config, "results": results}


def print_table(doc: dict[str, Any]) -> None:
    env, cfg = doc["environment"], doc["config"]
    print(
        f"{env['python']}, redis-py {env['redis_py']}, hiredis {'yes' if env['hiredis'] else 'no'}"
    )
    print(f"{env['server']} {env['server_version']} ({env['target']}), hitrate {env['hitrate']}")
    print(
        f"value: {cfg['fields']} fields, {cfg['bytes']} B JSON; {cfg['rounds']} x {cfg['n']} ops\n"
    )
    print(f"{'mode':<6} {'case':<33} {'µs/op':>7} {'ratio':>6} {'+µs':>6}  rounds min..max")
    for row in doc["results"]:
        lo, hi = min(row["rounds_us"]), max(row["rounds_us"])
        print(
            f"{row['mode']:<6} {row['case']:<33} {row['us_per_op']:>7.2f} {row['ratio']:>6.3f}"
            f" {row['overhead_us']:>+6.2f}  {lo:.2f}..{hi:.2f}"
        )
    print("\nµs/op: median over rounds. ratio: vs the same mode's baseline; < 1 = hitrate faster.")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("HITRATE_REDIS_URL"))
    parser.add_argument("--n", type=int, default=5000, help="calls per case per round")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--json", action="store_true", help="print a JSON document")
    args = parser.parse_args()
    if args.n < 1 or args.rounds < 1:
        parser.error("--n and --rounds must be >= 1")
    server = None if args.url else EmbeddedServer.start()
    try:
        doc = asyncio.run(bench(args.url or server.url, args.n, args.rounds))  # type: ignore[union-attr]
    finally:
        if server is not None:
            server.stop()
    doc["environment"]["target"] = f"private, port {server.port}" if server else "--url"
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print_table(doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
