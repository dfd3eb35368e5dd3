"""What the HTTP response cache costs (and saves) per request, over a real socket.

One FastAPI app under uvicorn, in its own process, with two routes that do the same work
and return the same JSON: ``/cached/{n}`` marked ``@http_cache`` behind ``ResponseCache``,
``/plain/{n}`` not cached (the middleware still sees it and passes it through). After a
warm-up that fills the cache, an httpx load generator (--clients concurrent keep-alive
connections, asyncio) requests each route in turns for --seconds per round, R rounds
alternating the order; requests/s and latency percentiles are per route over all rounds.
Every cached reply is checked to be an ``X-Cache: HIT``.

    .venv/bin/python benchmarks/http_cache.py [--url URL] [--work-ms 0] [--seconds 3]
        [--rounds 3] [--clients 8] [--json]

``--work-ms`` is what each route spends "in the database" (an asyncio sleep): 0 measures
the cache's own overhead per hit against a route that does nothing; 2 shows a route with
a typical query. Without --url (or HITRATE_REDIS_URL) a private server is started and
stopped at the end. Keys go under a unique prefix, deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import uuid
from typing import Any

import httpx

from hitrate.server import EmbeddedServer, free_port
from hitrate.testing import delete_prefix


def make_app(url: str, prefix: str, work_ms: float) -> Any:
    from fastapi import FastAPI

    from hitrate import AsyncCache
    from hitrate.contrib.fastapi import ResponseCache, cache_lifespan, http_cache

    app = FastAPI(lifespan=cache_lifespan(lambda: AsyncCache.from_url(url, prefix=prefix)))
    app.add_middleware(ResponseCache)

    async def work(n: int) -> dict[str, Any]:
        if work_ms:
            await asyncio.sleep(work_ms / 1000)
        return {"id": n, "name": f"product {n}", "price": 9.5, "tags": ["a", "b", "c"]}

    @app.get("/cached/{n}")
    @http_cache(ttl=3600)
    async def cached(n: int) -> dict[str, Any]:
        return await work(n)

    @app.get("/plain/{n}")
    async def plain(n: int) -> dict[str, Any]:
        return await work(n)

    return app


def serve(argv: list[str]) -> None:
    import uvicorn

    url, prefix, work_ms, port = argv
    app = make_app(url, prefix, float(work_ms))
    uvicorn.run(app, host="127.0.0.1", port=int(port), log_level="warning", access_log=False)


async def load(base: str, path: str, clients: int, seconds: float, keys: int) -> list[float]:
    latencies: list[float] = []
    stop = time.perf_counter() + seconds

    async def client(i: int) -> None:
        async with httpx.AsyncClient(base_url=base) as c:
            n = i
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                r = await c.get(f"{path}/{n % keys}")
                latencies.append(time.perf_counter() - t0)
                if r.status_code != 200 or (path == "/cached" and r.headers["x-cache"] != "HIT"):
                    raise SystemExit(f"unexpected reply {r.status_code} {r.headers}")
                n += clients

    await asyncio.gather(*(client(i) for i in range(clients)))
    return latencies


async def in_process(
    url: str, prefix: str, work_ms: float, n: int, rounds: int
) -> dict[str, float]:
    """µs per request when the app is called directly (no socket, no load generator):
    the CPU each route costs, the median of *rounds* runs of *n* sequential requests."""
    app = make_app(url, prefix + "-inproc", work_ms)
    out: dict[str, list[float]] = {"/cached": [], "/plain": []}
    async with app.router.lifespan_context(app) as state:

        async def call(path: str) -> None:
            scope = {
                "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                "method": "GET", "scheme": "http", "path": path, "raw_path": path.encode(),
                "query_string": b"", "root_path": "", "headers": [(b"host", b"bench")],
                "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80), "state": dict(state),
            }  # fmt: skip
            sent: list[Any] = []

            async def receive() -> dict[str, Any]:
                return {"type": "http.request", "body": b"", "more_body": False}

            async def send(message: Any) -> None:
                sent.append(message)

            await app(scope, receive, send)

        for k in range(10):  # fill and warm
            await call(f"/cached/{k}")
            await call(f"/plain/{k}")
        for r in range(rounds):
            for path in ["/cached", "/plain"] if r % 2 == 0 else ["/plain", "/cached"]:
                t0 = time.perf_counter()
                for i in range(n):
                    await call(f"{path}/{i % 10}")
                out[path].append((time.perf_counter() - t0) / n * 1e6)
    delete_prefix(url, prefix + "-inproc")
    return {path: statistics.median(v) for path, v in out.items()}


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * p))] * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default=os.environ.get("HITRATE_REDIS_URL"))
    ap.add_argument("--work-ms", type=float, default=0.0)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--keys", type=int, default=100)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--inproc-n", type=int, default=2000)
    args = ap.parse_args()

    server = None if args.url else EmbeddedServer.start()
    url = args.url or server.url  # type: ignore[union-attr]
    prefix = f"bench-http-{uuid.uuid4().hex[:8]}"
    port = free_port()
    inproc = asyncio.run(in_process(url, prefix, args.work_ms, args.inproc_n, args.rounds))
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", url, prefix, str(args.work_ms), str(port)],
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                httpx.get(f"{base}/plain/0", timeout=0.5)
                break
            except httpx.TransportError:
                time.sleep(0.05)
        for n in range(args.keys):  # fill the cache
            httpx.get(f"{base}/cached/{n}")
        results: dict[str, list[float]] = {"/cached": [], "/plain": []}
        elapsed: dict[str, float] = {"/cached": 0.0, "/plain": 0.0}
        asyncio.run(load(base, "/plain", args.clients, 1.0, args.keys))  # warm-up
        asyncio.run(load(base, "/cached", args.clients, 1.0, args.keys))
        for r in range(args.rounds):
            order = ["/cached", "/plain"] if r % 2 == 0 else ["/plain", "/cached"]
            for path in order:
                lat = asyncio.run(load(base, path, args.clients, args.seconds, args.keys))
                results[path] += lat
                elapsed[path] += args.seconds
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        delete_prefix(url, prefix)
        if server is not None:
            server.stop()

    rows = {}
    for path, lat in results.items():
        rows[path] = {
            "requests": len(lat),
            "rps": len(lat) / elapsed[path],
            "p50_ms": pct(lat, 0.50),
            "p99_ms": pct(lat, 0.99),
            "mean_ms": statistics.fmean(lat) * 1000,
        }
    c, p = rows["/cached"], rows["/plain"]
    summary = {
        "work_ms": args.work_ms,
        "clients": args.clients,
        "rounds": args.rounds,
        "seconds": args.seconds,
        "cached": c,
        "uncached": p,
        "rps_ratio": c["rps"] / p["rps"],
        "p50_overhead_ms": c["p50_ms"] - p["p50_ms"],
        "in_process_us": inproc,
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}",
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    print(
        f"HTTP response cache vs the same route uncached (work {args.work_ms} ms, "
        f"{args.clients} clients, {args.rounds}x{args.seconds}s, {summary['machine']})"
    )
    print(f"{'route':<10}{'requests':>10}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}")
    for name, row in (("cached", c), ("uncached", p)):
        print(
            f"{name:<10}{row['requests']:>10}{row['rps']:>10.0f}"
            f"{row['p50_ms']:>10.2f}{row['p99_ms']:>10.2f}"
        )
    print(
        f"req/s cached / uncached: {summary['rps_ratio']:.2f}x; "
        f"p50 difference per request: {summary['p50_overhead_ms']:+.2f} ms"
    )
    ci, pi = inproc["/cached"], inproc["/plain"]
    print(
        f"in process (no socket, one request at a time): cached hit {ci:.0f} µs, "
        f"uncached {pi:.0f} µs per request ({ci - pi:+.0f} µs)"
    )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        serve(sys.argv[2:])
    else:
        main()
