"""hitrate against raw redis-py and the Python Redis cache libraries, side by side.

One process, one server, one payload (a 10-field dict, 324 B as JSON). For each path
(warm hit, miss + fill with a new key per call, get_many of 100 warm keys, near-cache hit,
each sync and async where the library has it) every library's loop and the raw redis-py
baseline take turns within each round, in alternating order, so noise hits them alike.
× is the median over rounds of the same-round ratio to the baseline (raw ``GET`` +
``json.loads`` for hits, ``MGET`` + ``json.loads`` for get_many, ``GET`` miss + ``SET`` for
misses); the spread is its min–max over rounds. Then: memory per entry (``MEMORY USAGE``),
loads per expiry with 50 callers in 10 processes (``peers_load.py``), throughput with 1, 8
and 64 threads and 200 tasks against ``redis-benchmark``, and a cProfile of hitrate's hit and
miss paths. Writes ``docs/benchmarks.md`` and ``docs/benchmarks.png``.

    make bench-peers      # makes .venv-peers from benchmarks/requirements-peers.txt, runs this
    .venv-peers/bin/python benchmarks/peers.py [--quick] [--url URL] [--rounds R] [--no-write]

Without --url a private server is started (and stopped) with the client pinned to its CPU,
as in ``hit_path.py``; keys go under a unique prefix and only those are deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import statistics
import sys
import time
import uuid
from pathlib import Path
from time import perf_counter
from typing import Any

import peers_libs as libs
import peers_load as load
import peers_report as report
import redis

from hitrate.server import EmbeddedServer

# path -> (title, baseline path of redis-py, calls per round at full size)
PATHS: dict[str, tuple[str, str, int]] = {
    "hit_sync": ("warm hit, sync", "hit_sync", 3000),
    "hit_async": ("warm hit, async", "hit_async", 3000),
    "miss_sync": ("miss + fill, sync", "miss_sync", 1000),
    "miss_async": ("miss + fill, async", "miss_async", 1000),
    "many_sync": ("get_many of 100 warm keys, sync", "many_sync", 200),
    "many_async": ("get_many of 100 warm keys, async", "many_async", 200),
    "near_sync": ("near-cache hit, sync", "hit_sync", 3000),
    "near_async": ("near-cache hit, async", "hit_async", 3000),
}
TURNS = 10  # turns per round: each case runs calls/TURNS calls per turn


async def measure(lib_list: list[libs.Adapter], scale: float, rounds: int) -> list[dict[str, Any]]:
    raw = lib_list[0]
    groups = []
    for path, (_, base, calls) in PATHS.items():
        cases = [(f"{lib.name}|{p}", lib.loops[p]) for lib in lib_list for p in lib.loops if
                 p.split("/")[0] == path and lib is not raw]  # fmt: skip
        cases += [(f"redis-py|{p}", loop) for p, loop in raw.loops.items() if p.startswith(base)]
        per_turn = max(1, int(calls * scale) // TURNS)
        groups.append((path, base, cases, per_turn))
        for _, loop in cases:  # warm-up
            await loop(per_turn)
    spent: dict[tuple[str, str], list[float]] = {}
    for i in range(rounds):
        for path, _, cases, per_turn in groups:
            total = {name: 0.0 for name, _ in cases}
            for j in range(TURNS):
                for name, loop in cases if (i + j) % 2 == 0 else list(reversed(cases)):
                    t0 = perf_counter()
                    await loop(per_turn)
                    total[name] += perf_counter() - t0
            for name, seconds in total.items():
                spent.setdefault((path, name), []).append(seconds / (per_turn * TURNS) * 1e6)
    rows = []
    for path, base, cases, _ in groups:
        base_us = spent[(path, f"redis-py|{base}")]
        for name, _ in cases:
            us = spent[(path, name)]
            ratios = [a / b for a, b in zip(us, base_us, strict=True)]
            lib, variant = name.split("|")
            rows.append({
                "path": path, "lib": lib, "variant": variant, "baseline": variant == base,
                "us": statistics.median(us), "x": statistics.median(ratios),
                "x_min": min(ratios), "x_max": max(ratios), "rounds": len(us),
            })  # fmt: skip
    return rows


def memory(url: str, lib_list: list[libs.Adapter], run: str) -> list[dict[str, Any]]:
    r = redis.Redis.from_url(url)
    rows = [{"lib": "redis-py + json", "key": f"{run}:raw:user:{libs.UID}"}]
    rows += [
        {"lib": "redis-py + orjson" if lib.name == "redis-py" else lib.name, "key": lib.key}
        for lib in lib_list
        if lib.key and lib.name in ("redis-py", lib.dist)
    ]  # the variants write the same entries
    for row in rows:
        if not r.exists(row["key"]):  # a library that adds a prefix of its own
            row["key"] = next((k.decode() for k in r.scan_iter(match=f"*{row['key']}")), "")
        row["bytes"] = r.memory_usage(row["key"], samples=0)
        row["value"] = r.strlen(row["key"])
        row["key_len"] = len(row["key"])
    r.close()
    return rows


def environment(url: str, server: EmbeddedServer | None, cpu: int | None) -> dict[str, Any]:
    from redis.utils import HIREDIS_AVAILABLE

    r = redis.Redis.from_url(url)
    info = r.info("server")
    r.close()
    model = "unknown"
    with open("/proc/cpuinfo") if os.path.exists("/proc/cpuinfo") else open(os.devnull) as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    pinned = f"client and server pinned to CPU {cpu}" if cpu is not None else "not pinned"
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": model, "cores": os.cpu_count(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(), "hiredis": HIREDIS_AVAILABLE,
        "server": ("valkey " + info["valkey_version"]) if "valkey_version" in info
        else ("redis " + info["redis_version"]),
        "target": f"private server, {pinned}" if server else "--url",
        "versions": {d: libs.lib_version(d) for d in
                     ("redis", "hiredis", "orjson", "hitrate", "dogpile.cache", "cashews",
                      "aiocache", "cachekit")},
        "near": libs.near_available(),
    }  # fmt: skip


async def bench(url: str, run: str, args: argparse.Namespace) -> dict[str, Any]:
    scale, rounds = (0.2, 3) if args.quick else (1.0, args.rounds)
    lib_list = await libs.started(url, run)
    try:
        t0 = time.monotonic()
        rows = await measure(lib_list, scale, rounds)
        mem = memory(url, lib_list, run)
        print(f"paths measured in {time.monotonic() - t0:.0f} s", file=sys.stderr)
    finally:
        for lib in lib_list:
            await lib.close()
    return {"rows": rows, "memory": mem, "run": run, "rounds": rounds, "scale": scale}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("HITRATE_REDIS_URL"))
    parser.add_argument("--quick", action="store_true", help="a short run (a few seconds a part)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--no-pin", action="store_true", help="don't pin to one CPU")
    parser.add_argument("--no-write", action="store_true", help="print, don't write docs/")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    args = parser.parse_args()
    server, cpu = None, None
    if not args.url:
        if not args.no_pin and hasattr(os, "sched_setaffinity"):
            cpu = max(os.sched_getaffinity(0))
            os.sched_setaffinity(0, {cpu})  # before the start, so the server inherits it
        server = EmbeddedServer.start()
    url = args.url or server.url  # type: ignore[union-attr]
    run = f"hrpeers-{uuid.uuid4().hex[:10]}"
    load_at_start = os.getloadavg()[0]
    try:
        doc = asyncio.run(bench(url, run, args))
        doc["env"] = environment(url, server, cpu)
        doc["expiry"] = load.expiry(url, doc["run"], quick=args.quick)
        doc["throughput"] = load.throughput(url, doc["run"], quick=args.quick)
        doc["profile"] = report.profile(url, doc["run"], quick=args.quick)
        doc["env"]["load"] = f"{load_at_start:.1f} → {os.getloadavg()[0]:.1f}"
    finally:
        r = redis.Redis.from_url(url)
        for key in r.scan_iter(match=f"*{run}*", count=1000):
            r.unlink(key)
        r.close()
        if server is not None:
            server.stop()
    print(report.tables(doc))
    if args.json:
        args.json.write_text(json.dumps(doc, indent=2, default=str))
    if not args.no_write:
        root = Path(__file__).resolve().parent.parent / "docs"
        shown = [a for a in sys.argv[1:] if a in ("--quick", "--no-pin")]
        (root / "benchmarks.md").write_text(report.markdown(doc, shown))
        report.chart(doc, root / "benchmarks.png")
        print(f"wrote {root / 'benchmarks.md'} and {root / 'benchmarks.png'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
