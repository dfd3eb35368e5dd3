"""What per-family counting costs on the hit path, in µs per call and percent.

Two caches on the very same client and warm key: ``Cache(r, prefix=...)`` (counting on,
the stats flush timer running at its default 5 s) and ``Cache(r, prefix=..., count=False)``
(no counting, no flushing). Each makes ``get_or_fetch`` hits; the async pair does the same
with ``redis.asyncio`` and ``AsyncCache``. As in ``hit_path.py``, but one mode at a time
(switching between sync and async code costs the case that follows the switch): after a
warm-up, each of R rounds makes N calls per case in turns of --chunk calls that alternate
between on and off (order reversed every other turn); µs/op is the median of the
per-round means; server and client share one pinned CPU (Linux; --no-pin to disable).

    overhead % = (µs/op counting on / µs/op counting off - 1) * 100

    .venv/bin/python benchmarks/counting_overhead.py [--url URL] [--n N] [--rounds R] [--json]

Without --url (or HITRATE_REDIS_URL) a private server is started and stopped at the end.
Keys go under unique prefixes and only they are deleted; nothing is flushed.
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

import hitrate
from hitrate import AsyncCache, Cache
from hitrate.server import EmbeddedServer

KEY = "user:42"
PROFILE = {"id": 42, "username": "ada.lovelace", "email": "ada@example.com", "followers": 1843,
           "roles": ["member", "editor"], "settings": {"theme": "dark"}}  # fmt: skip


def never() -> Any:
    raise AssertionError("loader called: the benchmark key was not warm")


async def bench(url: str, n: int, rounds: int, chunk: int) -> dict[str, Any]:
    prefix = f"hrbench-{uuid.uuid4().hex[:12]}"
    r, ar = redis.Redis.from_url(url), aredis.Redis.from_url(url)
    on, off = Cache(r, prefix=prefix), Cache(r, prefix=prefix, count=False)
    aon, aoff = AsyncCache(ar, prefix=prefix), AsyncCache(ar, prefix=prefix, count=False)
    try:
        on.set(KEY, PROFILE, ttl=3600)

        def sync_loop(cache: Cache) -> Any:
            async def loop(calls: int) -> None:
                gof = cache.get_or_fetch
                for _ in range(calls):
                    gof(KEY, never)

            return loop

        def async_loop(cache: AsyncCache) -> Any:
            async def loop(calls: int) -> None:
                gof = cache.get_or_fetch
                for _ in range(calls):
                    await gof(KEY, never)

            return loop

        cases = [
            ("sync", "counting off", sync_loop(off)),
            ("sync", "counting on", sync_loop(on)),
            ("async", "counting off", async_loop(aoff)),
            ("async", "counting on", async_loop(aon)),
        ]
        turns = [chunk] * (n // chunk) + ([n % chunk] if n % chunk else [])
        per_round: dict[tuple[str, str], list[float]] = {(m, c): [] for m, c, _ in cases}
        for mode in ("sync", "async"):  # one mode at a time: the two cases take turns
            pair = [case for case in cases if case[0] == mode]
            for _, _, loop in pair:
                await loop(max(n // 5, 200))
            for i in range(rounds):
                spent = dict.fromkeys(per_round, 0.0)
                for j, calls in enumerate(turns):
                    for _, name, loop in pair if (i + j) % 2 == 0 else reversed(pair):
                        t0 = perf_counter()
                        await loop(calls)
                        spent[mode, name] += perf_counter() - t0
                for (m, name), seconds in spent.items():
                    if m == mode:
                        per_round[m, name].append(seconds / n * 1e6)
        counted = on.counters.total().hits + aon.counters.total().hits
        assert counted > 0
        assert off.counters.snapshot() == {} == aoff.counters.snapshot()
        info = r.info("server")
    finally:
        on.close()
        off.close()
        await aon.close()
        await aoff.close()
        r2 = redis.Redis.from_url(url)
        keys = list(r2.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            r2.unlink(*keys)
        r2.close()
    results = []
    for mode in ("sync", "async"):
        off_us = statistics.median(per_round[mode, "counting off"])
        on_us = statistics.median(per_round[mode, "counting on"])
        results.append(
            {
                "mode": mode,
                "off_us": round(off_us, 3),
                "on_us": round(on_us, 3),
                "ratio": round(on_us / off_us, 4),
                "overhead_pct": round((on_us / off_us - 1) * 100, 2),
                "off_rounds": [round(x, 2) for x in per_round[mode, "counting off"]],
                "on_rounds": [round(x, 2) for x in per_round[mode, "counting on"]],
            }
        )
    env = {
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "redis_py": redis.__version__,
        "server": "valkey" if "valkey_version" in info else "redis",
        "server_version": info.get("valkey_version") or info.get("redis_version"),
        "hitrate": hitrate.__version__,
    }
    return {"environment": env, "config": {"n": n, "rounds": rounds, "chunk": chunk},
            "results": results}  # fmt: skip


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
    server = None
    if not args.url:
        if not args.no_pin and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})
        server = EmbeddedServer.start()
    try:
        doc = asyncio.run(bench(args.url or server.url, args.n, args.rounds, args.chunk))
    finally:
        if server is not None:
            server.stop()
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    env, cfg = doc["environment"], doc["config"]
    print(f"{env['python']}, redis-py {env['redis_py']}, hitrate {env['hitrate']}, ", end="")
    print(f"{env['server']} {env['server_version']}")
    print(f"{cfg['rounds']} rounds x {cfg['n']} get_or_fetch hits per case\n")
    print(f"{'mode':<6} {'off µs/op':>10} {'on µs/op':>9} {'ratio':>7} {'overhead':>9}")
    for row in doc["results"]:
        print(
            f"{row['mode']:<6} {row['off_us']:>10.2f} {row['on_us']:>9.2f} "
            f"{row['ratio']:>7.4f} {row['overhead_pct']:>+8.2f}%"
        )
    print("\noverhead: what counting adds to a cache hit (budget: 3 %).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
