"""Soak: hitrate under a long mixed workload, with Redis killed and paused in the middle.

    python benchmarks/soak.py                 # 10 minutes (make soak)
    python benchmarks/soak.py --minutes 2     # a short run

Two processes of 16 threads (``Cache``) and one asyncio process of 300 tasks
(``AsyncCache``) share one private Redis and one "database" (a second private server
that is never faulted: versioned rows, ``INCR`` per write). The mix: reads through
``get_or_fetch`` (with tags), writes by ``write_through``, by save + ``invalidate``, by
save + ``invalidate_pattern`` and save + ``invalidate_tag`` (a whole group of 50 keys),
and the structures (leaderboard, dedup set, HyperLogLog, rate limiter; the first three
raise ``CacheUnavailableError`` while Redis is down, as documented: counted apart).

At 40 % of the run the cache's Redis is killed (SIGKILL) and restarted empty 2 s later;
at 70 % it is paused (SIGSTOP) for 3 s. Reported at the end:

* errors leaked: exceptions that reached the workload from a cache call (fail-open: 0);
* stale reads: a read that started after a write's invalidation returned, yet got an
  older version (each writer records the committed version in the database after its
  invalidation returned; each reader reads it before its call: the consistency checker's
  property, across processes);
* RSS of each worker at the start (after a warm-up) and the end;
* the cache's Redis key count every 10 s (bounded by the TTLs).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import redis
import redis.asyncio as aredis

from hitrate import AsyncCache, Cache, CacheUnavailableError
from hitrate.server import find_servers, free_port

GROUPS, PER_GROUP = 10, 50
# "item" keys are written by write_through, invalidate and invalidate_pattern; "tagged"
# keys are filled with their group's tag and written by invalidate and invalidate_tag (an
# entry that write_through replaced carries no tags, so a tag would not reach it).
ITEMS = [f"item:{g}:{n}" for g in range(GROUPS) for n in range(PER_GROUP)]
TAGGED = [f"tagged:{g}:{n}" for g in range(GROUPS) for n in range(PER_GROUP)]
COMMIT = """
local cur = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if tonumber(ARGV[2]) > cur then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
return 1
"""


def rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Server:
    """A private server on a fixed port that can be killed, restarted and paused."""

    def __init__(self) -> None:
        self.binary = next(iter(find_servers().values()))
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="hitrate-soak-")
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", self.dir, "--loglevel", "warning"]  # fmt: skip
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(500):
            try:
                with redis.Redis(port=self.port, socket_timeout=0.5) as r:
                    r.ping()
                return
            except redis.RedisError:
                time.sleep(0.02)
        raise RuntimeError("server did not start")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        if sig == signal.SIGKILL:
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait()


# -- the workload (in the worker processes) -------------------------------------------------


class Workload:
    """One worker's database clients (sync, and asyncio for the async worker) and tallies.

    A writer records the version it committed once its invalidation returned: as
    *confirmed* when this process owes Redis nothing afterwards, else as *owed* (Redis
    was unusable: other processes may serve the old value until this process delivers
    the invalidation - the documented outage window). A read that started after a
    confirmed write and returned an older version is **stale**; one older than an owed
    write only is counted apart (``stale_owed``) as the measure of that window.
    """

    def __init__(self, db_url: str) -> None:
        self.db = redis.Redis.from_url(db_url)
        pool = aredis.BlockingConnectionPool.from_url(db_url, max_connections=64, timeout=30)
        self.adb = aredis.Redis.from_pool(pool)  # 300 tasks share 64 connections
        self.lock = threading.Lock()
        self.tally: dict[str, int] = dict.fromkeys(
            ("reads", "writes", "structures", "errors", "stale", "stale_owed", "wrong", "raised"),
            0,
        )
        self.samples: list[str] = []

    def count(self, what: str, n: int = 1) -> None:
        with self.lock:
            self.tally[what] += n

    def error(self, exc: BaseException) -> None:
        self.count("errors")
        with self.lock:
            if len(self.samples) < 5:
                self.samples.append(f"{type(exc).__name__}: {exc}"[:300])

    @staticmethod
    def owes(cache: Cache | AsyncCache) -> bool:
        return bool(len(cache._ctx.owed))  # the owed queue (benchmark-only peek)

    # -- sync ---------------------------------------------------------------------------
    def load(self, key: str) -> dict[str, Any]:
        return {"key": key, "v": int(self.db.get(key) or 0)}

    def committed(self, key: str) -> tuple[int, int]:
        confirmed, owed = self.db.hmget("committed", key, key + "~owed")
        return int(confirmed or 0), int(owed or 0)

    def save(self, key: str) -> int:
        return int(self.db.incr(key))

    def save_row(self, key: str) -> dict[str, Any]:
        """``write_through``'s save: commit a new version, return the stored row."""
        return {"key": key, "v": self.save(key)}

    def record(self, versions: dict[str, int], owed: bool) -> None:
        for key, v in versions.items():
            self.db.eval(COMMIT, 1, "committed", key + ("~owed" if owed else ""), v)

    # -- asyncio ------------------------------------------------------------------------
    async def aload(self, key: str) -> dict[str, Any]:
        return {"key": key, "v": int(await self.adb.get(key) or 0)}

    async def acommitted(self, key: str) -> tuple[int, int]:
        confirmed, owed = await self.adb.hmget("committed", key, key + "~owed")
        return int(confirmed or 0), int(owed or 0)

    async def asave(self, key: str) -> int:
        return int(await self.adb.incr(key))

    async def asave_row(self, key: str) -> dict[str, Any]:
        return {"key": key, "v": await self.asave(key)}

    async def arecord(self, versions: dict[str, int], owed: bool) -> None:
        for key, v in versions.items():
            await self.adb.eval(COMMIT, 1, "committed", key + ("~owed" if owed else ""), v)

    def check(self, key: str, before: tuple[int, int], got: Any) -> None:
        if got["key"] != key:
            self.count("wrong")
        elif got["v"] < before[0]:
            self.count("stale")
        elif got["v"] < before[1]:
            self.count("stale_owed")


def _group(key: str) -> str:
    return key.split(":")[1]


def sync_op(cache: Cache, w: Workload, rng: random.Random) -> None:
    roll = rng.random()
    item, tagged = rng.choice(ITEMS), rng.choice(TAGGED)
    if roll < 0.40:
        before = w.committed(item)
        w.check(item, before, cache.get_or_fetch(item, lambda: w.load(item)))
        w.count("reads")
    elif roll < 0.80:
        before = w.committed(tagged)
        tags = [f"grp{_group(tagged)}"]
        w.check(tagged, before, cache.get_or_fetch(tagged, lambda: w.load(tagged), tags=tags))
        w.count("reads")
    elif roll < 0.90:
        key = item if roll < 0.85 else tagged
        v = w.save(key)
        cache.invalidate(key)
        w.record({key: v}, w.owes(cache))
        w.count("writes")
    elif roll < 0.95:
        stored = cache.write_through(item, None, lambda _: w.save_row(item))
        w.record({item: stored["v"]}, w.owes(cache))
        w.count("writes")
    elif roll < 0.955:
        group = _group(item)
        versions = {k: w.save(k) for k in ITEMS if _group(k) == group}
        cache.invalidate_pattern(f"item:{group}:*")
        w.record(versions, w.owes(cache))
        w.count("writes")
    elif roll < 0.96:
        group = _group(tagged)
        versions = {k: w.save(k) for k in TAGGED if _group(k) == group}
        cache.invalidate_tag(f"grp{group}")
        w.record(versions, w.owes(cache))
        w.count("writes")
    else:
        n = rng.randrange(1000)
        cache.rate_limiter("soak", 1000, 1).hit(f"u{n % 20}")  # fails open
        w.count("structures")
        try:  # these have nothing to fall back on: they raise CacheUnavailableError
            cache.leaderboard("soak").incr(f"p{n % 50}", 1)
            cache.seen("soak", ttl=120).add(str(n))
            cache.unique("soak", ttl=120).add(str(n))
        except CacheUnavailableError:
            w.count("raised")


async def async_op(cache: AsyncCache, w: Workload, rng: random.Random) -> None:
    roll = rng.random()
    item, tagged = rng.choice(ITEMS), rng.choice(TAGGED)
    if roll < 0.40:
        before = await w.acommitted(item)
        w.check(item, before, await cache.get_or_fetch(item, lambda: w.aload(item)))
        w.count("reads")
    elif roll < 0.80:
        before = await w.acommitted(tagged)
        tags = [f"grp{_group(tagged)}"]
        got = await cache.get_or_fetch(tagged, lambda: w.aload(tagged), tags=tags)
        w.check(tagged, before, got)
        w.count("reads")
    elif roll < 0.90:
        key = item if roll < 0.85 else tagged
        v = await w.asave(key)
        await cache.invalidate(key)
        await w.arecord({key: v}, w.owes(cache))
        w.count("writes")
    elif roll < 0.95:
        stored = await cache.write_through(item, None, lambda _: w.asave_row(item))
        await w.arecord({item: stored["v"]}, w.owes(cache))
        w.count("writes")
    elif roll < 0.96:
        group = _group(tagged)
        versions = {k: await w.asave(k) for k in TAGGED if _group(k) == group}
        await cache.invalidate_tag(f"grp{group}")
        await w.arecord(versions, w.owes(cache))
        w.count("writes")
    else:
        n = rng.randrange(1000)
        await cache.rate_limiter("soak", 1000, 1).hit(f"u{n % 20}")
        w.count("structures")
        try:
            await cache.leaderboard("soak").incr(f"p{n % 50}", 1)
            await cache.seen("soak", ttl=120).add(str(n))
        except CacheUnavailableError:
            w.count("raised")


def run_sync_worker(args: argparse.Namespace) -> dict[str, Any]:
    w = Workload(args.db)
    cache = Cache.from_url(args.url, prefix="soak")
    stop = time.monotonic() + args.seconds
    rss: dict[str, int] = {}

    def thread(n: int) -> None:
        rng = random.Random(args.seed * 100 + n)
        while time.monotonic() < stop:
            try:
                sync_op(cache, w, rng)
            except Exception as exc:
                w.error(exc)
            time.sleep(0.001)

    threads = [threading.Thread(target=thread, args=(n,)) for n in range(args.threads)]
    for t in threads:
        t.start()
    time.sleep(min(10, args.seconds / 10))
    rss["start"] = rss_kb()
    for t in threads:
        t.join()
    rss["end"] = rss_kb()
    cache.close()
    return {"kind": f"sync {args.threads} threads", **w.tally, "samples": w.samples, "rss": rss}


async def run_async_worker(args: argparse.Namespace) -> dict[str, Any]:
    w = Workload(args.db)
    cache = AsyncCache.from_url(args.url, prefix="soak")
    stop = time.monotonic() + args.seconds
    rss: dict[str, int] = {}

    async def task(n: int) -> None:
        rng = random.Random(args.seed * 100 + n)
        while time.monotonic() < stop:
            try:
                await async_op(cache, w, rng)
            except Exception as exc:
                w.error(exc)
            await asyncio.sleep(0.002)

    tasks = [asyncio.create_task(task(n)) for n in range(args.tasks)]
    await asyncio.sleep(min(10, args.seconds / 10))
    rss["start"] = rss_kb()
    await asyncio.gather(*tasks)
    rss["end"] = rss_kb()
    await cache.close()
    return {"kind": f"async {args.tasks} tasks", **w.tally, "samples": w.samples, "rss": rss}


# -- the conductor ---------------------------------------------------------------------------


def conduct(minutes: float, faults: bool = True) -> int:
    seconds = minutes * 60
    cache_srv, db_srv = Server(), Server()
    cache_srv.start()
    db_srv.start()
    out = tempfile.mkdtemp(prefix="hitrate-soak-out-")
    common = ["--url", cache_srv.url, "--db", db_srv.url, "--seconds", str(seconds)]
    me = os.path.abspath(__file__)
    kinds = {1: "sync", 2: "sync", 3: "async"}
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                me,
                "--worker",
                kind,
                "--seed",
                str(i),
                "--out",
                f"{out}/w{i}.json",
                *common,
            ]
        )
        for i, kind in kinds.items()
    ]
    t0 = time.monotonic()
    events: list[str] = []
    keys: list[tuple[int, int | None]] = []
    kill_at, pause_at = 0.4 * seconds, 0.7 * seconds
    if not faults:
        kill_at = pause_at = float("inf")
    killed = paused = False
    next_sample = 0.0
    while any(p.poll() is None for p in workers):
        now = time.monotonic() - t0
        if not killed and now >= kill_at:
            cache_srv.signal(signal.SIGKILL)
            events.append(f"{now:.0f}s: SIGKILL")
            time.sleep(2)
            cache_srv.start()
            events.append(f"{time.monotonic() - t0:.0f}s: restarted empty")
            killed = True
        if not paused and now >= pause_at:
            cache_srv.signal(signal.SIGSTOP)
            events.append(f"{now:.0f}s: SIGSTOP")
            time.sleep(3)
            cache_srv.signal(signal.SIGCONT)
            events.append(f"{time.monotonic() - t0:.0f}s: SIGCONT")
            paused = True
        if now >= next_sample:
            try:
                with redis.Redis.from_url(cache_srv.url, socket_timeout=0.5) as r:
                    keys.append((int(now), int(r.dbsize())))
            except redis.RedisError:
                keys.append((int(now), None))
            next_sample += 10
        time.sleep(0.2)
    results = []
    for i in (1, 2, 3):
        with open(f"{out}/w{i}.json") as f:
            results.append(json.load(f))
    cache_srv.stop()
    db_srv.stop()
    print(f"soak: {minutes:g} min; events: {'; '.join(events)}")
    leaked = stale = wrong = 0
    for r in results:
        leaked, stale, wrong = leaked + r["errors"], stale + r["stale"], wrong + r["wrong"]
        growth = (r["rss"]["end"] - r["rss"]["start"]) / max(1, r["rss"]["start"]) * 100
        print(
            f"  {r['kind']}: reads {r['reads']:,}, writes {r['writes']:,}, structures "
            f"{r['structures']:,} (raised as documented while Redis was down: {r['raised']:,}); "
            f"errors leaked {r['errors']}, stale reads {r['stale']} (+{r['stale_owed']} in "
            f"owed windows), "
            f"wrong values {r['wrong']}; RSS {r['rss']['start'] / 1024:.1f} -> "
            f"{r['rss']['end'] / 1024:.1f} MB ({growth:+.1f} %)"
        )
        for s in r["samples"]:
            print(f"    e.g. {s}")
    print("  Redis keys over time (s: keys): " + ", ".join(f"{t}: {k}" for t, k in keys))
    print(f"TOTAL errors leaked {leaked}, stale reads {stale}, wrong values {wrong}")
    return 1 if leaked or stale or wrong else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--no-faults", action="store_true", help="no kill, no pause")
    parser.add_argument("--worker", choices=["sync", "async"])
    parser.add_argument("--url")
    parser.add_argument("--db")
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--tasks", type=int, default=300)
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.worker is None:
        return conduct(args.minutes, not args.no_faults)
    sync = args.worker == "sync"
    result = run_sync_worker(args) if sync else asyncio.run(run_async_worker(args))
    with open(args.out, "w") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
