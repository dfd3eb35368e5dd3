"""What happens around the expiry of a hot key, for four ways of caching it.

Threads read one hot key for a few seconds; its TTL is short and its loader slow (50 ms),
so the key expires several times under load. For each mode the script prints the loader
calls per expiry and the p50 / p99 / max latency of the calls made within 100 ms of an
expiry (the moment a stampede happens), plus p99 over all calls:

* naive - GET, on a miss load and SET (the ten-line cache-aside)
* leases - hitrate ``get_or_fetch``: one caller loads, the others wait for its fill
* leases+early - ``Policy(ttl, early=1)``: XFetch refreshes in the background before expiry
* leases+stale - ``Policy(ttl, stale=2)``: the old value is served while one refreshes

    .venv/bin/python benchmarks/stampede.py [--url URL] [--threads 32] [--seconds 4]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import redis

from hitrate import Cache, Policy
from hitrate.server import EmbeddedServer
from hitrate.testing import delete_prefix

LOAD = 0.05
TTL = 1.0


def pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def run(mode: str, url: str, threads: int, seconds: float) -> dict[str, Any]:
    prefix = f"bench-stampede-{uuid.uuid4().hex[:8]}"
    raw = redis.Redis.from_url(url)
    cache = Cache.from_url(url, prefix=prefix, timeout=2.0)
    fills: list[float] = []  # when each load finished (the value's birth)
    lock = threading.Lock()

    def load() -> dict[str, Any]:
        time.sleep(LOAD)
        with lock:
            fills.append(time.monotonic())
        return {"top": list(range(20))}

    if mode == "naive":
        key = f"{prefix}:hot"

        def read() -> Any:
            cached = raw.get(key)
            if cached is not None:
                return json.loads(cached)
            value = load()
            raw.set(key, json.dumps(value), px=int(TTL * 1000))
            return value
    else:
        policy = {
            "leases": Policy(TTL),
            "leases+early": Policy(TTL, early=1.0),
            "leases+stale": Policy(TTL, stale=2.0),
        }[mode]

        def read() -> Any:
            return cache.get_or_fetch("report:hot", load, ttl=policy)

    read()  # warm
    calls: list[tuple[float, float]] = []
    stop = time.monotonic() + seconds

    def worker(fn: Callable[[], Any]) -> None:
        mine = []
        while time.monotonic() < stop:
            t0 = time.monotonic()
            fn()
            mine.append((t0, time.monotonic() - t0))
            time.sleep(0.002)
        with lock:
            calls.extend(mine)

    pool = [threading.Thread(target=worker, args=(read,)) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    cache.close()
    delete_prefix(url, prefix)

    expiries = [f + TTL for f in fills if f + TTL < stop]
    near = [lat for t0, lat in calls if any(abs(t0 - e) < 0.1 for e in expiries)]
    all_lat = [lat for _, lat in calls]
    # Loads per expiry: loads after warm-up grouped into bursts (one burst per expiry or
    # refresh: loads less than 200 ms apart belong to the same one).
    later = sorted(fills[1:])
    bursts = sum(1 for i, f in enumerate(later) if i == 0 or f - later[i - 1] > 0.2)
    return {
        "mode": mode,
        "calls": len(calls),
        "expiries": bursts,
        "loads_per_expiry": round(len(later) / max(1, bursts), 2),
        "near_expiry_p50_ms": round(pct(near, 0.50) * 1000, 2),
        "near_expiry_p99_ms": round(pct(near, 0.99) * 1000, 2),
        "near_expiry_max_ms": round(max(near, default=0.0) * 1000, 2),
        "all_p99_ms": round(pct(all_lat, 0.99) * 1000, 2),
        "all_median_ms": round(statistics.median(all_lat) * 1000, 3) if all_lat else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=os.environ.get("HITRATE_REDIS_URL"))
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    server = None
    url = args.url
    if not url:
        server = EmbeddedServer.start()
        url = server.url
    try:
        rows = [
            run(mode, url, args.threads, args.seconds)
            for mode in ("naive", "leases", "leases+early", "leases+stale")
        ]
    finally:
        if server:
            server.stop()
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{args.threads} threads, {args.seconds:g}s, TTL {TTL:g}s, loader {LOAD * 1000:g} ms")
    print(
        f"{'mode':14} {'expiries':>8} {'loads/expiry':>12} {'p50 near':>9} {'p99 near':>9} "
        f"{'max near':>9} {'p99 all':>8}"
    )
    for r in rows:
        print(
            f"{r['mode']:14} {r['expiries']:>8} {r['loads_per_expiry']:>12} "
            f"{r['near_expiry_p50_ms']:>7}ms "
            f"{r['near_expiry_p99_ms']:>7}ms {r['near_expiry_max_ms']:>7}ms {r['all_p99_ms']:>6}ms"
        )


if __name__ == "__main__":
    main()
