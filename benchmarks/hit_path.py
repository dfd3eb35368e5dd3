"""Hit-path cost of hitrate versus raw redis-py + stdlib json, in µs per call.

One process, one server, a warm key holding a user profile (14 fields, 434 bytes of JSON):

* sync baseline ``json.loads(r.get(key))`` with ``r = redis.Redis.from_url(url)``, then
  ``cache.get_or_fetch("user:42", loader)`` and a ``@cache.cached(key="user:{user_id}")``
  function on ``cache = hitrate.Cache(r, prefix=...)`` -- the very same client;
* async: the same three, awaited, with ``redis.asyncio`` and ``hitrate.AsyncCache``.

After a warm-up, each of R rounds makes N calls per case in turns of --chunk calls that
cycle through the cases (order reversed every other turn), so noise hits all cases alike.
µs/op is the median of the per-round means. ratio = µs/op / the same mode's baseline:
1.00 = no overhead, 1.10 = a hit costs 10% more than hand-written GET + json.loads, < 1 =
hitrate is faster. +µs is the difference, the library's own cost per hit. A private server
and this process share one pinned CPU (Linux; --no-pin to disable): on small VMs loopback
wake-ups across CPUs swing the round trip between ~25 and ~100 µs. The cheap round trip
this gives makes the ratios strict.

    .venv/bin/python benchmarks/hit_path.py [--url URL] [--n N] [--rounds R] [--json]

Without --url (or HITRATE_REDIS_URL) a private server is started and stopped at the end.
Keys go under a unique prefix and only they are deleted at the end; nothing is flushed.
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
    "id": USER_ID, "username": "ada.lovelace", "email": "ada.lovelace@example.com",
    "display_name": "Ada Lovelace", "created_at": "2021-03-14T09:26:53Z",
    "last_login": "2025-11-02T18:04:11Z", "is_active": True, "is_staff": False,
    "locale": "en-GB", "timezone": "Europe/London", "followers": 1843,
    "avatar_url": "https://cdn.example.com/avatars/42/7f3a9c.png",
    "roles": ["member", "editor"], "settings": {"theme": "dark", "newsletter": False},
}  # fmt: skip


def never(*_: Any) -> Any:
    raise AssertionError("loader called: the benchmark key was not warm")


def make_cases(r: Any, ar: Any, cache: Cache, acache: AsyncCache, raw_key: str) -> list[Any]:
    """(mode, name, loop): ``await loop(n)`` makes n calls (sync loops never await)."""

    @cache.cached(key="user:{user_id}")
    def get_user(user_id: int) -> Any:
        return never()

    @acache.cached(key="user:{user_id}")
    async def aget_user(user_id: int) -> Any:
        return never()

    async def sync_base(n: int) -> None:
        get, loads, k = r.get, json.loads, raw_key
        for _ in range(n):
            loads(get(k))

    async def sync_gof(n: int) -> None:
        gof, k = cache.get_or_fetch, KEY
        for _ in range(n):
            gof(k, never)

    async def sync_cached(n: int) -> None:
        for _ in range(n):
            get_user(USER_ID)

    async def async_base(n: int) -> None:
        get, loads, k = ar.get, json.loads, raw_key
        for _ in range(n):
            loads(await get(k))

    async def async_gof(n: int) -> None:
        gof, k = acache.get_or_fetch, KEY
        for _ in range(n):
            await gof(k, never)

    async def async_cached(n: int) -> None:
        for _ in range(n):
            await aget_user(USER_ID)

    return [
        ("sync", "baseline: GET + json.loads", sync_base),
        ("sync", "Cache.get_or_fetch", sync_gof),
        ("sync", "@Cache.cached", sync_cached),
        ("async", "baseline: await GET + json.loads", async_base),
        ("async", "AsyncCache.get_or_fetch", async_gof),
        ("async", "@AsyncCache.cached", async_cached),
    ]


async def bench(url: str, n: int, rounds: int, chunk: int) -> dict[str, Any]:
    prefix = f"hrbench-{uuid.uuid4().hex[:12]}"
    raw_key = f"{prefix}:raw:{KEY}"
    r, ar = redis.Redis.from_url(url), aredis.Redis.from_url(url)
    cache, acache = Cache(r, prefix=prefix), AsyncCache(ar, prefix=prefix)
    try:
        r.set(raw_key, json.dumps(PROFILE))
        cache.set(KEY, PROFILE, ttl=3600)
        assert json.loads(r.get(raw_key)) == PROFILE
        assert cache.get_or_fetch(KEY, never) == await acache.get_or_fetch(KEY, never) == PROFILE
        cases = make_cases(r, ar, cache, acache, raw_key)
        for _, _, loop in cases:  # warm-up: connections, caches, specialised bytecode
            await loop(max(n // 5, 200))
        turns = [chunk] * (n // chunk) + ([n % chunk] if n % chunk else [])
        per_round: dict[str, list[float]] = {name: [] for _, name, _ in cases}
        for i in range(rounds):
            spent = dict.fromkeys(per_round, 0.0)
            for j, calls in enumerate(turns):
                for _, name, loop in cases if (i + j) % 2 == 0 else reversed(cases):
                    t0 = perf_counter()
                    await loop(calls)
                    spent[name] += perf_counter() - t0
            for name, seconds in spent.items():
                per_round[name].append(seconds / n * 1e6)
        misses = cache.counters.total().misses + acache.counters.total().misses
        assert misses == 0, f"{misses} misses: the hit path was not measured alone"
        info = r.info("server")
    finally:
        keys = list(r.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            r.unlink(*keys)
        r.close()
        await ar.aclose()
    env = {
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "redis_py": redis.__version__,
        "hiredis": HIREDIS_AVAILABLE,
        "server": "valkey" if "valkey_version" in info else "redis",
        "server_version": info.get("valkey_version") or info.get("redis_version"),
        "hitrate": hitrate.__version__,
        "platform": platform.platform(),
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
    config = {"n": n, "rounds": rounds, "chunk": chunk, "value_bytes": len(json.dumps(PROFILE))}
    return {"environment": env, "config": config, "results": results}


def print_table(doc: dict[str, Any]) -> None:
    env, cfg = doc["environment"], doc["config"]
    hiredis = "yes" if env["hiredis"] else "no"
    print(f"{env['python']}, redis-py {env['redis_py']}, hiredis {hiredis}, ", end="")
    print(f"hitrate {env['hitrate']}")
    print(f"server: {env['server']} {env['server_version']} ({env['target']}); {env['platform']}")
    print(f"{cfg['rounds']} rounds x {cfg['n']} calls/case in turns of {cfg['chunk']}, ", end="")
    print(f"value: {cfg['value_bytes']} B of JSON\n")
    print(f"{'mode':<6} {'case':<33} {'µs/op':>7} {'ratio':>6} {'+µs':>6}  rounds min..max")
    for row in doc["results"]:
        lo, hi = min(row["rounds_us"]), max(row["rounds_us"])
        print(
            f"{row['mode']:<6} {row['case']:<33} {row['us_per_op']:>7.2f} {row['ratio']:>6.3f}"
            f" {row['overhead_us']:>+6.2f}  {lo:.2f}..{hi:.2f}"
        )
    print("\nratio: µs/op over the same mode's baseline; < 1 means hitrate is faster.")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("HITRATE_REDIS_URL"))
    parser.add_argument("--n", type=int, default=5000, help="calls per case per round")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--chunk", type=int, default=250, help="calls per case per turn")
    parser.add_argument("--no-pin", action="store_true", help="don't pin to one CPU")
    parser.add_argument("--json", action="store_true", help="print a JSON document")
    args = parser.parse_args()
    if min(args.n, args.rounds, args.chunk) < 1:
        parser.error("--n, --rounds and --chunk must be >= 1")
    server, cpu = None, None
    if not args.url:
        if not args.no_pin and hasattr(os, "sched_setaffinity"):
            cpu = max(os.sched_getaffinity(0))
            os.sched_setaffinity(0, {cpu})  # before the start, so the server inherits it
        server = EmbeddedServer.start()
    try:
        doc = asyncio.run(bench(args.url or server.url, args.n, args.rounds, args.chunk))
    finally:
        if server is not None:
            server.stop()
    pinned = f"server and client on CPU {cpu}" if cpu is not None else "not pinned"
    doc["environment"]["target"] = f"private, {pinned}" if server else "--url"
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print_table(doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
