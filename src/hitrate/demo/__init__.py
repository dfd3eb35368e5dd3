"""``hitrate demo``: a shop behind the cache, a live dashboard, and what caching bought.

It starts what it needs (a private Redis/Valkey server unless one is given, a seeded SQLite
shop unless a database URL is given), sends skewed traffic from several threads, first
straight to the database and then through the cache, and ends with a report: hit rate per
family, queries avoided, latency with and without the cache, loader calls per hot-key
expiry, stale reads (checked against every database write: must be 0), rate-limiter
precision, Redis memory and keys.

Needs the ``demo`` extra (SQLAlchemy; psycopg for PostgreSQL) and rich::

    from hitrate.demo import run_demo
    report = run_demo(duration=10, dashboard=False)
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.progress import Progress

from .. import REFERENCE, USER, Cache
from .report import build_report, live_table, render_report
from .shop import Shop, Sizes, default_sqlite_url
from .workload import Workload

__all__ = ["run_demo"]


def _clear_prefix(url: str, prefix: str) -> None:
    """Start from an empty cache: delete what an earlier run left under *prefix* (on every
    primary of a cluster)."""
    from ..connect import sync_client

    client = sync_client(url, 5.0, 5.0, 4, 5.0)
    try:
        batch = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        for i in range(0, len(batch), 500):
            client.unlink(*batch[i : i + 500])
    finally:
        client.close()


def _start_dashboard(url: str, prefix: str, port: int) -> tuple[str, Callable[[], None]]:
    """The dashboard app on 127.0.0.1:*port* (a free port if that one is taken), served by
    uvicorn in a background thread. Returns its URL and a function that stops it."""
    import uvicorn

    from ..dashboard import create_app

    sock = socket.socket(socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError:
        sock.bind(("127.0.0.1", 0))
    bound = sock.getsockname()[1]
    web = create_app(url, prefix=prefix, refresh=1.0, minutes=5, sample_every=5.0)
    server = uvicorn.Server(
        uvicorn.Config(web, log_level="warning", lifespan="on", access_log=False)
    )
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="hitrate-dashboard", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout=5)
        sock.close()

    return f"http://127.0.0.1:{bound}/", stop


def run_demo(
    *,
    duration: float = 60.0,
    redis_url: str | None = None,
    database: str | None = None,
    port: int = 8000,
    dashboard: bool = True,
    seed: int = 0,
    as_json: bool = False,
    scale: float = 1.0,
    prefix: str = "hitrate-demo",
    table_prefix: str = "shop_",
    db_latency_ms: float | None = None,
    threads: int = 8,
    rate: float = 600.0,
    top_ttl: float = 3.0,
    limit: int = 10,
    second_process: bool = True,
    console: Console | None = None,
    topology: str | None = None,
) -> dict[str, Any]:
    """Run the demo and return its report (also printed: a table, or JSON with *as_json*).

    *duration* covers both phases: about 15 % without the cache, the rest with it.
    *rate* is the requests per second offered in both phases (0: as fast as they go).
    *second_process* runs user profile reads from another process too (100/s).
    *db_latency_ms* is added to every query (default: 1 ms for SQLite, which is in-process
    and so faster than any networked database; 0 for PostgreSQL).
    *topology* ``"cluster"`` or ``"sentinel"`` starts a local Redis Cluster or a
    Sentinel-managed primary (instead of one private server) and runs the demo on it.
    """
    if topology not in (None, "cluster", "sentinel"):
        raise ValueError(f"topology must be 'cluster', 'sentinel' or None, not {topology!r}")
    out = console or Console()
    live_ok = out.is_terminal and not as_json
    err = Console(stderr=True) if as_json else out

    def say(message: str) -> None:
        err.print(message, highlight=False, soft_wrap=True)

    with ExitStack() as stack:
        url = redis_url or os.environ.get("HITRATE_REDIS_URL") or os.environ.get("REDIS_URL")
        if topology is not None:
            from ..topologies import EmbeddedCluster, EmbeddedSentinel

            local = EmbeddedCluster.start() if topology == "cluster" else EmbeddedSentinel.start()
            stack.callback(local.stop)
            url = local.url
            server_label = f"a local {local.flavour} {topology}"
            say(f"started a local {local.flavour} {topology} at {url}")
        elif url:
            server_label = "Redis at the given URL"
        else:
            from ..server import EmbeddedServer

            srv = EmbeddedServer.start()
            stack.callback(srv.stop)
            url = srv.url
            server_label = f"a private {srv.flavour}-server"
            say(f"started a private {srv.flavour} server at {url}")

        db_url = database or default_sqlite_url(seed, scale)
        shop = Shop(db_url, table_prefix=table_prefix)
        stack.callback(shop.close)
        if db_latency_ms is None:
            db_latency_ms = 1.0 if shop.kind == "sqlite" else 0.0
        sizes = Sizes(scale)
        t0 = time.perf_counter()
        if live_ok:
            with Progress(console=out, transient=True) as progress:
                task = progress.add_task("seeding the shop", total=None)

                def advance(done: int, total: int) -> None:
                    progress.update(task, completed=done, total=total)

                seeded = shop.seed(seed, sizes, advance)
        else:
            seeded = shop.seed(seed, sizes)
        seed_s = time.perf_counter() - t0
        seeding = f"seeded in {seed_s:.1f} s" if seeded else "reused"
        say(
            f"database: {shop.kind} ({sizes.users:,} users, {sizes.products:,} products, "
            f"{sizes.orders:,} orders; {seeding})"
        )
        shop.latency = db_latency_ms / 1000

        _clear_prefix(url, prefix)
        workload_cache = Cache.from_url(
            url,
            prefix=prefix,
            policies={"user": USER, "settings": REFERENCE},
            flush_interval=1.0,
            timeout=2.0,
            connect_timeout=2.0,
            max_connections=threads * 4,
        )
        stack.callback(workload_cache.close)
        wl = Workload(
            workload_cache,
            shop,
            seed=seed,
            threads=threads,
            rate=rate,
            top_ttl=top_ttl,
            limit=limit,
        )

        dashboard_url = None
        if dashboard:
            dashboard_url, stop_dashboard = _start_dashboard(url, prefix, port)
            stack.callback(stop_dashboard)
            say(f"dashboard: {dashboard_url}")

        uncached_s = max(1.0, duration * 0.15)
        cached_s = max(1.0, duration - uncached_s)
        live = None
        if live_ok:
            live = stack.enter_context(
                Live(live_table(wl, duration), console=out, auto_refresh=False, transient=True)
            )

        def tick() -> None:
            if live is not None:
                live.update(live_table(wl, duration), refresh=True)

        q0 = shop.queries
        wl.run("uncached", uncached_s, tick)
        q1 = shop.queries
        wl.prepare_cache()
        q2 = shop.queries
        other = None
        if second_process:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="hitrate-demo-"))
            reads_file = os.path.join(tmp, "reads.json")
            spec: dict[str, Any] = {
                "database": db_url, "table_prefix": table_prefix, "latency": shop.latency,
                "redis": url, "prefix": prefix, "scale": scale, "seed": seed, "rate": 100.0,
                "seconds": cached_s, "out": reads_file,
            }  # fmt: skip
            other = subprocess.Popen(
                [sys.executable, "-m", "hitrate.demo.second", json.dumps(spec)],
                stdin=subprocess.DEVNULL,
            )
            stack.callback(other.kill)
        wl.run("cached", cached_s, tick)
        q3 = shop.queries
        if other is not None:
            if other.wait(timeout=60) != 0:
                raise RuntimeError(f"the second process failed (exit status {other.returncode})")
            with open(reads_file) as f:
                wl.other_reads = [(r[0], r[1], r[2], r[3]) for r in json.load(f)]
        if live is not None:
            live.stop()

        workload_cache.flush_stats()
        stats = workload_cache.stats(sample=0)
        board = [r.score for r in wl.board.top(10)]
        truth = [float(spent) for _, spent in shop.top_buyers(10, count=False)]
        report = build_report(
            wl,
            stats=stats,
            queries={"uncached": q1 - q0, "cached": q3 - q2},
            setup={
                "duration_s": duration,
                "threads": threads,
                "offered_rate_per_s": rate,
                "second_process_reads": len(wl.other_reads),
                "redis_server": server_label,
                "prefix": prefix,
                "dashboard": dashboard_url,
                "database": {
                    "kind": shop.kind,
                    "users": sizes.users,
                    "products": sizes.products,
                    "orders": sizes.orders,
                    "seeding": seeding,
                    "seed": seed,
                    "added_latency_ms": db_latency_ms,
                },
            },
            board_matches=board == truth,
            visitors_estimate=int(wl.visitors.count()),
        )
    if as_json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    else:
        out.print(render_report(report))
        if dashboard_url:
            out.print(f"dashboard was at {dashboard_url} (stopped with the demo)")
    return report
