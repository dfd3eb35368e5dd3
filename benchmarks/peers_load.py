"""The two load parts of ``peers.py``: loads per expiry across processes, and throughput.

**Expiry.** 10 processes x 5 callers (threads, or asyncio tasks for async-only libraries)
ask for one hot key at the same moment, right after it is gone (deleted with the
library's own delete, which for a miss is the same as an expiry); the loader takes 50 ms
and counts its calls in Redis. Per library: loads per expiry, and the latency of the
*waiters* (callers whose own thread or task did not run the loader) against the loader
time. The processes are not pinned (the server stays where it is).

**Throughput.** Warm hits per second for hitrate and raw redis-py (``GET`` +
``json.loads``) with 1, 8 and 64 threads sharing one client, and 200 asyncio tasks
sharing one async client, against ``redis-benchmark -t get`` on the same server, the
physical limit of one connection-per-client server at this size.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import os
import shutil
import statistics
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

import redis
import redis.asyncio as aredis
from peers_libs import PAYLOAD, UID, never

PROCESSES, CALLERS, LOAD = 10, 5, 0.05
STAMPEDE_LIBS = ["naive", "hitrate", "dogpile.cache", "cashews", "aiocache", "cachekit",
                 "cachekit async"]  # fmt: skip
HOT = "hot:1"


def _caller(lib: str, url: str, run: str) -> tuple[str, Any, Any, Callable[[], Any]]:
    """(kind, call, delete, loaded): ``call()`` reads the hot key through the library."""
    counter = redis.Redis.from_url(url)
    count_key = f"{run}:st:{lib}:loads"
    loaders: set[int] = set()  # thread ids or task ids that ran the loader

    def load(*_: Any) -> dict[str, Any]:
        time.sleep(LOAD)
        counter.incr(count_key)
        loaders.add(threading.get_ident())
        return PAYLOAD

    async def aload(*_: Any) -> dict[str, Any]:
        await asyncio.sleep(LOAD)
        counter.incr(count_key)
        loaders.add(id(asyncio.current_task()))
        return PAYLOAD

    ns = f"{run}-st-{lib}"
    if lib == "naive":
        r = redis.Redis.from_url(url)

        def naive() -> Any:
            raw = r.get(f"{ns}:{HOT}")
            if raw is not None:
                return json.loads(raw)
            value = load()
            r.set(f"{ns}:{HOT}", json.dumps(value), ex=60)
            return value

        return "sync", naive, lambda: r.delete(f"{ns}:{HOT}"), loaders
    if lib == "hitrate":
        from hitrate import Cache

        cache = Cache.from_url(url, prefix=ns, default_ttl=60)
        return "sync", lambda: cache.get_or_fetch(HOT, load), lambda: cache.invalidate(HOT), loaders
    if lib == "dogpile.cache":
        import orjson
        from dogpile.cache import make_region

        region = make_region(serializer=orjson.dumps, deserializer=orjson.loads).configure(
            "dogpile.cache.redis",
            expiration_time=60,
            arguments={"url": url, "distributed_lock": True, "thread_local_lock": False},
        )
        key = f"{ns}:{HOT}"
        return "sync", lambda: region.get_or_create(key, load), lambda: region.delete(key), loaders
    if lib == "cashews":
        from cashews import Cache as CwCache

        cw = CwCache()
        cw.setup(url)

        @cw(ttl=60, key=ns + ":hot:{uid}", lock=True)
        async def hot(uid: int) -> Any:
            return await aload()

        return "async", lambda: hot(UID), lambda: cw.delete(f"{ns}:hot:{UID}"), loaders
    if lib == "aiocache":
        from aiocache import RedisCache, cached_stampede
        from peers_libs import Aiocache

        host, port = url.split("//")[1].split("/", maxsplit=1)[0].split(":")
        ser = Aiocache.serializer()

        @cached_stampede(lease=2, ttl=60, key=HOT, cache=RedisCache, serializer=ser,
                         namespace=ns, endpoint=host, port=int(port), timeout=None)  # fmt: skip
        async def ahot() -> Any:
            return await aload()

        async def delete() -> None:
            await ahot.cache.delete(HOT)

        return "async", ahot, delete, loaders
    if lib.startswith("cachekit"):  # its fill lock is on the async miss path only
        from cachekit import cache as ck
        from cachekit.backends.redis import RedisBackend
        from cachekit.config.nested import L1CacheConfig
        from cachekit.serializers import OrjsonSerializer

        deco = ck.minimal(backend=RedisBackend(url), namespace=ns, ttl=60,
                          l1=L1CacheConfig(enabled=False),
                          serializer=OrjsonSerializer(enable_integrity_checking=False))  # fmt: skip
        if lib.endswith("async"):

            @deco
            async def ackhot(uid: int) -> Any:
                return await aload()

            return "async", lambda: ackhot(UID), lambda: ackhot.ainvalidate_cache(UID), loaders

        @deco
        def ckhot(uid: int) -> Any:
            return load()

        return "sync", lambda: ckhot(UID), lambda: ckhot.invalidate_cache(UID), loaders
    raise ValueError(lib)


def _timed_sync(call: Callable[[], Any], out: list[tuple[float, int]]) -> None:
    t0 = time.perf_counter()
    value = call()
    out.append((time.perf_counter() - t0, threading.get_ident()))
    assert value == PAYLOAD


async def _timed_async(call: Callable[[], Any], out: list[tuple[float, int]]) -> None:
    t0 = time.perf_counter()
    value = await call()
    out.append((time.perf_counter() - t0, id(asyncio.current_task())))
    assert value == PAYLOAD


def worker(index: int, url: str, run: str, expiries: int, barrier: Any, queue: Any) -> None:
    """One of the 10 processes: for each library, ``expiries`` rounds of 5 concurrent callers."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, range(os.cpu_count() or 1))
    for lib in STAMPEDE_LIBS:
        kind, call, delete, loaders = _caller(lib, url, run)
        results: list[tuple[float, bool]] = []
        loop = asyncio.new_event_loop() if kind == "async" else None
        for _ in range(expiries):
            if index == 0:
                done = delete()
                if loop is not None and asyncio.iscoroutine(done):
                    loop.run_until_complete(done)
            barrier.wait()
            out: list[tuple[float, int]] = []
            if loop is None:
                threads = [
                    threading.Thread(target=_timed_sync, args=(call, out)) for _ in range(CALLERS)
                ]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
            else:

                async def burst(call: Any = call, out: list[tuple[float, int]] = out) -> None:
                    await asyncio.gather(*(_timed_async(call, out) for _ in range(CALLERS)))

                loop.run_until_complete(burst())
            results += [(seconds, ident in loaders) for seconds, ident in out]
            loaders.clear()
            barrier.wait()
        queue.put((lib, index, results))
        if loop is not None:
            loop.close()


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else 0.0


def expiry(url: str, run: str, quick: bool = False) -> list[dict[str, Any]]:
    expiries = 3 if quick else 10
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(PROCESSES), ctx.Queue()
    procs = [ctx.Process(target=worker, args=(i, url, run, expiries, barrier, queue))
             for i in range(PROCESSES)]  # fmt: skip
    for p in procs:
        p.start()
    got: dict[str, list[tuple[float, bool]]] = {lib: [] for lib in STAMPEDE_LIBS}
    for _ in range(PROCESSES * len(STAMPEDE_LIBS)):
        lib, _, results = queue.get(timeout=300)
        got[lib] += results
    for p in procs:
        p.join(timeout=30)
    r = redis.Redis.from_url(url)
    rows = []
    for lib in STAMPEDE_LIBS:
        loads = int(r.get(f"{run}:st:{lib}:loads") or 0)
        waiters = [s * 1000 for s, loaded in got[lib] if not loaded]
        rows.append({
            "lib": lib, "expiries": expiries, "callers": PROCESSES * CALLERS,
            "loads_per_expiry": loads / expiries, "load_ms": LOAD * 1000,
            "waiters": len(waiters), "p50_ms": pct(waiters, 0.5), "p99_ms": pct(waiters, 0.99),
            "max_ms": max(waiters, default=0.0),
        })  # fmt: skip
    r.close()
    return rows


def _threads(fn: Callable[[], Any], threads: int, seconds: float) -> float:
    stop, counts = threading.Event(), [0] * threads

    def spin(i: int) -> None:
        n = 0
        while not stop.is_set():
            for _ in range(20):
                fn()
            n += 20
        counts[i] = n

    pool = [threading.Thread(target=spin, args=(i,)) for i in range(threads)]
    t0 = time.perf_counter()
    for t in pool:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in pool:
        t.join()
    return sum(counts) / (time.perf_counter() - t0)


async def _tasks(fn: Callable[[], Any], tasks: int, seconds: float) -> float:
    end, counts = time.perf_counter() + seconds, [0] * tasks

    async def spin(i: int) -> None:
        n = 0
        while time.perf_counter() < end:
            for _ in range(20):
                await fn()
            n += 20
        counts[i] = n

    t0 = time.perf_counter()
    await asyncio.gather(*(spin(i) for i in range(tasks)))
    return sum(counts) / (time.perf_counter() - t0)


def redis_benchmark(url: str, n: int, size: int | None) -> float | None:
    exe = shutil.which("redis-benchmark") or shutil.which("valkey-benchmark")
    if exe is None:
        return None
    host, port = url.split("//")[1].split("/", maxsplit=1)[0].split(":")
    cmd = [exe, "-h", host, "-p", port, "-t", "get", "-n", str(n), "-c", "50", "-P", "1", "-q"]
    if size:
        cmd += ["-d", str(size)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True).stdout
    for part in out.replace("\r", "\n").splitlines():
        if part.startswith("GET:") and "requests per second" in part:
            return float(part.split()[1])
    return None


def throughput(url: str, run: str, quick: bool = False) -> dict[str, Any]:
    from hitrate import AsyncCache, Cache

    seconds, repeats = (0.5, 1) if quick else (1.0, 3)
    pinned = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    if pinned is not None:
        os.sched_setaffinity(0, range(os.cpu_count() or 1))
    r = redis.Redis.from_url(url, max_connections=128)
    cache = Cache(r, prefix=f"{run}-tp")
    raw_key = f"{run}:tp:raw"
    r.set(raw_key, json.dumps(PAYLOAD))
    cache.set("user:42", PAYLOAD, ttl=3600)
    sync = {
        "redis-py": lambda: json.loads(r.get(raw_key)),
        "hitrate": lambda: cache.get_or_fetch("user:42", never),
    }
    runs: dict[str, dict[str, list[float]]] = {name: {} for name in sync}
    try:
        for i in range(repeats):  # alternating, median of the repeats
            for threads in (1, 8, 64):
                for name, fn in sync.items() if i % 2 == 0 else reversed(sync.items()):
                    got = _threads(fn, threads, seconds)
                    runs[name].setdefault(
                        f"{threads} thread{'s' if threads > 1 else ''}", []
                    ).append(got)

        async def run_tasks() -> None:
            ar = aredis.Redis.from_url(url, max_connections=256)
            acache = AsyncCache(ar, prefix=f"{run}-tp")

            async def araw() -> Any:
                return json.loads(await ar.get(raw_key))

            afns = {"redis-py": araw, "hitrate": lambda: acache.get_or_fetch("user:42", never)}
            for i in range(repeats):
                for name, fn in afns.items() if i % 2 == 0 else reversed(afns.items()):
                    got = await _tasks(fn, 200, seconds)
                    runs[name].setdefault("200 tasks", []).append(got)
            await ar.aclose()

        asyncio.run(run_tasks())
        n = 50_000 if quick else 200_000
        limit = {"3 B": redis_benchmark(url, n, None), "324 B": redis_benchmark(url, n, 324)}
    finally:
        r.close()
        if pinned is not None:
            os.sched_setaffinity(0, pinned)
    rows = {name: {k: statistics.median(v) for k, v in cols.items()} for name, cols in runs.items()}
    return {"seconds": seconds, "repeats": repeats, "rows": rows, "redis_benchmark": limit,
            "median_ratio": statistics.median(rows["hitrate"][k] / rows["redis-py"][k]
                                              for k in rows["hitrate"])}  # fmt: skip
