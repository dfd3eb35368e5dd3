"""Waiters woken by the fill versus polling: 50 callers in 10 processes, loader 50 ms.

Each round the hot key is invalidated, then every caller (10 processes x 5 threads) calls
``get_or_fetch`` on it at the same instant: one loads (50 ms), the 49 others wait - the
4 in its process on its in-process flight, the 45 in other processes on its fill in Redis.
Printed per mode: loads per round (must be 1) and the waiters' wait p50 / p99 / max,
against the loader time (goal: p99 <= loader + 10 ms).

* polling - ``Cache(wake=False)``: waiters poll at 2, 6, 14, 30, 62, 112 ms...
* woken   - ``Cache()`` (the default): the fill publishes the key and wakes them

    .venv/bin/python benchmarks/wake.py [--url URL] [--rounds 10] [--processes 10] [--threads 5]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import threading
import time
import uuid
from typing import Any

import redis

from hitrate import Cache
from hitrate.server import EmbeddedServer
from hitrate.testing import delete_prefix

LOAD = 0.05


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else 0.0


def worker(url: str, prefix: str, wake: bool, threads: int, rounds: int, first: bool,
           ready: Any, base: Any, out: Any) -> None:  # fmt: skip
    cache = Cache.from_url(url, prefix=prefix, timeout=2.0, wake=wake)
    raw = redis.Redis.from_url(url)
    if wake:  # the listener is started by the first wait; start it now, as a warm process has
        assert cache._listener is not None
        assert cache._listener.wait_live(5.0)

    def load() -> str:
        raw.incr(prefix + ":loads")
        time.sleep(LOAD)
        return "v"

    waits: list[tuple[int, float]] = []
    lock = threading.Lock()
    ready.wait()  # every process is up: then the parent sets the first round's start
    ready.wait()
    for k in range(rounds):
        start = base.value + 0.6 * k
        if first:
            time.sleep(max(0.0, start - 0.2 - time.time()))
            cache.invalidate("hot:1")
        time.sleep(max(0.0, start - time.time()))

        def call(k: int = k) -> None:
            t0 = time.perf_counter()
            cache.get_or_fetch("hot:1", load, ttl=60)
            with lock:
                waits.append((k, time.perf_counter() - t0))

        ts = [threading.Thread(target=call) for _ in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    out.put(waits)
    cache.close()


def run(url: str, wake: bool, rounds: int, processes: int, threads: int) -> None:
    prefix = f"bench-wake-{uuid.uuid4().hex[:8]}"
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    ready = ctx.Barrier(processes + 1)
    base = ctx.Value("d", 0.0)
    procs = [
        ctx.Process(
            target=worker, args=(url, prefix, wake, threads, rounds, i == 0, ready, base, out)
        )
        for i in range(processes)
    ]
    for p in procs:
        p.start()
    ready.wait()
    base.value = time.time() + 0.5
    ready.wait()
    waits = [w for _ in procs for w in out.get()]
    for p in procs:
        p.join()
    loads = int(redis.Redis.from_url(url).get(prefix + ":loads") or 0)
    # The caller that loaded took about LOAD; the others are waiters.
    per_round: dict[int, list[float]] = {}
    for k, w in waits:
        per_round.setdefault(k, []).append(w)
    waiting = [w for ws in per_round.values() for w in sorted(ws)[1:]]
    ms = [w * 1000 for w in waiting]
    name = "woken" if wake else "polling"
    print(f"{name:8s} loads per round {loads / rounds:.2f}   waiters' wait "
          f"p50 {pct(ms, 0.5):6.1f} ms  p90 {pct(ms, 0.9):6.1f} ms  p99 {pct(ms, 0.99):6.1f} ms  "
          f"max {max(ms):6.1f} ms  (loader {LOAD * 1000:.0f} ms; "
          f"p99 - loader = {pct(ms, 0.99) - LOAD * 1000:+.1f} ms)")  # fmt: skip
    delete_prefix(url, prefix)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--processes", type=int, default=10)
    parser.add_argument("--threads", type=int, default=5)
    args = parser.parse_args()
    server = None if args.url else EmbeddedServer.start()
    url = args.url or server.url  # type: ignore[union-attr]
    try:
        for wake in (False, True):
            run(url, wake, args.rounds, args.processes, args.threads)
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
