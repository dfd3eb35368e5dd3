"""The demo's report: what caching bought, as a dict (``--json``) and as rich tables."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from ..counting import FamilyCounts
from ..stats import Stats, verdict_for
from .workload import FAMILIES, Workload

__all__ = ["build_report", "live_table", "render_report"]

CACHED_FAMILIES = ("user", "product", "top", "settings")
COLOURS = {"useless": "bold red", "working": "yellow", "target": "bold green"}


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def _phase(wl: Workload, phase: str, queries: int) -> dict[str, Any]:
    latencies = [s for log in wl.logs.get(phase, []) for s in log.latencies]
    elapsed = wl.elapsed.get(phase, 0.0)
    n = len(latencies)
    return {
        "seconds": round(elapsed, 2),
        "requests": n,
        "requests_per_s": round(n / elapsed, 1) if elapsed else 0.0,
        "p50_ms": _ms(_quantile(latencies, 0.50)),
        "p99_ms": _ms(_quantile(latencies, 0.99)),
        "db_queries": queries,
        "db_queries_per_request": round(queries / n, 3) if n else 0.0,
    }


def _family(name: str, counts: FamilyCounts | None, wl: Workload) -> dict[str, Any]:
    pattern, policy = FAMILIES[name]
    row: dict[str, Any] = {
        "family": name,
        "pattern": pattern,
        "policy": policy.format(ttl=wl.top_ttl, limit=wl.limit),
    }
    if name in CACHED_FAMILIES:
        c = counts or FamilyCounts()
        reads = c.hits + c.misses
        row.update(
            reads=reads,
            hits=c.hits,
            misses=c.misses,
            hit_rate=c.hit_rate,
            verdict=str(verdict_for(c.hit_rate, reads)),
            verdict_level=verdict_for(c.hit_rate, reads).level,
            loads=c.loads,
            invalidations=c.invalidations,
        )
    return row


def build_report(
    wl: Workload,
    *,
    stats: Stats,
    queries: dict[str, int],
    setup: dict[str, Any],
    board_matches: bool,
    visitors_estimate: int,
) -> dict[str, Any]:
    """Everything the run measured, JSON-ready."""
    counters = wl.cache.counters.snapshot()
    families = [_family(name, counters.get(name), wl) for name in FAMILIES]
    cached, uncached = (
        _phase(wl, "cached", queries["cached"]),
        _phase(wl, "uncached", queries["uncached"]),
    )
    stale, checked, writes = wl.stale_reads()
    loads, refreshes = wl.loads_per_expiry()
    limits = wl.limiter_windows()
    exact_visitors = len(set().union(*(log.visitors for log in wl.logs["cached"])))
    kinds: dict[str, int] = {}
    for log in wl.logs["cached"]:
        for kind, n in log.kinds.items():
            kinds[kind] = kinds.get(kind, 0) + n
    for row in families:
        if row["family"] == "buyers":
            row.update(
                ops=kinds.get("leaderboard", 0) + kinds.get("order", 0),
                top10_matches_database=board_matches,
            )
        elif row["family"] == "visitors":
            row.update(
                ops=cached["requests"],
                estimate=visitors_estimate,
                exact=exact_visitors,
                error_pct=round(100 * abs(visitors_estimate - exact_visitors) / exact_visitors, 2)
                if exact_visitors
                else 0.0,
            )
        elif row["family"] == "api":
            row.update(ops=limits["decisions"], rejected=limits["rejected"])
    would_be = cached["requests"]  # without the cache, every request is one query
    avoided = max(0, would_be - queries["cached"])
    saturated = limits["saturated_windows"]
    return {
        **setup,
        "families": families,
        "with_cache": cached,
        "without_cache": uncached,
        "db_queries_avoided": {
            "without_cache": would_be,
            "with_cache": queries["cached"],
            "avoided": avoided,
            "avoided_pct": round(100 * avoided / would_be, 2) if would_be else 0.0,
        },
        "hot_key": {
            "key": "top:products",
            "ttl_s": wl.top_ttl,
            "loader_calls": loads,
            "expiries": refreshes,
            "loader_calls_per_expiry": round(loads / refreshes, 2) if refreshes else None,
        },
        "staleness": {"reads_checked": checked, "writes": writes, "stale_reads": stale},
        "rate_limiter": {
            "limit_per_s": wl.limit,
            **limits,
            "precision_pct": round(100 * limits["exact_windows"] / saturated, 2)
            if saturated
            else None,
        },
        "redis": {
            "memory": stats.memory_used,
            "memory_bytes": stats.memory_used_bytes,
            "keys": stats.keys,
        },
    }


def _fmt(value: float | None, unit: str = "") -> str:
    return "-" if value is None else f"{value:,.2f}{unit}"


def render_report(report: dict[str, Any]) -> Group:
    """The report as the terminal shows it."""
    fam = Table(title="hit rate per family", title_justify="left", show_edge=False)
    for name, justify in (
        ("family", "left"), ("pattern", "left"), ("policy", "left"), ("reads", "right"),
        ("hit rate", "right"), ("verdict", "left"), ("loads", "right"), ("check", "left"),
    ):  # fmt: skip
        fam.add_column(name, justify=justify)  # type: ignore[arg-type]
    for row in report["families"]:
        if "reads" in row:
            style = COLOURS.get(row["verdict_level"], "magenta")
            fam.add_row(
                row["family"], row["pattern"], row["policy"], f"{row['reads']:,}",
                Text(f"{row['hit_rate']:.2f} %", style=style),
                Text(row["verdict"], style=style), f"{row['loads']:,}", "",
            )  # fmt: skip
            continue
        if row["family"] == "buyers":
            check = "top 10 = database" if row["top10_matches_database"] else "top 10 DIFFERS"
        elif row["family"] == "visitors":
            check = f"~{row['estimate']:,} vs {row['exact']:,} exact ({row['error_pct']:.2f} %)"
        else:
            check = f"{row['rejected']:,} rejected (429)"
        fam.add_row(row["family"], row["pattern"], row["policy"], f"{row['ops']:,} ops",
                    "-", "", "", check)  # fmt: skip

    w, wo = report["with_cache"], report["without_cache"]
    cmp = Table(title="with vs without the cache", title_justify="left", show_edge=False)
    cmp.add_column("")
    cmp.add_column("with cache", justify="right")
    cmp.add_column("without", justify="right")
    cmp.add_row("requests", f"{w['requests']:,}", f"{wo['requests']:,}")
    cmp.add_row("requests/s", _fmt(w["requests_per_s"]), _fmt(wo["requests_per_s"]))
    cmp.add_row("p50 latency", _fmt(w["p50_ms"], " ms"), _fmt(wo["p50_ms"], " ms"))
    cmp.add_row("p99 latency", _fmt(w["p99_ms"], " ms"), _fmt(wo["p99_ms"], " ms"))
    cmp.add_row(
        "db queries/request",
        _fmt(w["db_queries_per_request"]),
        _fmt(wo["db_queries_per_request"]),
    )

    q, hot, st, rl, rd = (
        report["db_queries_avoided"], report["hot_key"], report["staleness"],
        report["rate_limiter"], report["redis"],
    )  # fmt: skip
    ok, bad = "bold green", "bold red"
    lines = Table.grid(padding=(0, 2))
    lines.add_column(style="bold")
    lines.add_column()
    lines.add_row(
        "db queries avoided",
        f"{q['avoided']:,} of {q['without_cache']:,} ({q['avoided_pct']:.2f} %)",
    )
    per = hot["loader_calls_per_expiry"]
    lines.add_row(
        "loader calls per hot-key expiry",
        Text(
            f"{_fmt(per)}  ({hot['loader_calls']} loads over {hot['expiries']} expiries of "
            f"{hot['key']}, TTL {hot['ttl_s']:g} s)",
            style=ok if per == 1 else bad,
        ),
    )
    lines.add_row(
        "stale reads",
        Text(
            f"{st['stale_reads']}  ({st['reads_checked']:,} cached user reads, "
            f"{report['second_process_reads']:,} of them by a second process, checked "
            f"against {st['writes']:,} database writes)",
            style=ok if st["stale_reads"] == 0 else bad,
        ),
    )
    precision = rl["precision_pct"]
    lines.add_row(
        "rate-limiter precision",
        Text(
            f"{_fmt(precision, ' %')}  ({rl['exact_windows']} of {rl['saturated_windows']} "
            f"saturated windows allowed exactly {rl['limit_per_s']}; "
            f"{rl['over_limit_windows']} over the limit)",
            style=ok if precision == 100 and rl["over_limit_windows"] == 0 else bad,
        ),
    )
    lines.add_row("redis", f"memory {rd['memory']}, {rd['keys']:,} keys")
    db = report["database"]
    lines.add_row(
        "setup",
        f"{report['redis_server']}; {db['kind']} {db['users']:,} users, {db['products']:,} "
        f"products, {db['orders']:,} orders ({db['seeding']}, +{db['added_latency_ms']:g} ms per "
        f"query); {report['threads']} threads, {report['offered_rate_per_s']:g} requests/s offered",
    )
    return Group(fam, Text(""), cmp, Text(""), lines)


def live_table(wl: Workload, duration: float) -> Table:
    """The live view: phase, elapsed time, requests per second, hit rate per family."""
    phase = wl.phase or "starting"
    elapsed = time.perf_counter() - wl.started if wl.started else 0.0
    n = wl.requests(wl.phase)
    label = {"uncached": "without the cache", "cached": "with the cache"}.get(phase, phase)
    table = Table(
        title=f"hitrate demo ({duration:g} s): {label}, {elapsed:4.1f} of {wl.phase_seconds:.0f} s",
        title_justify="left",
        show_edge=False,
        min_width=64,
    )
    table.add_column("")
    table.add_column("hit rate", justify="right")
    table.add_column("requests", justify="right")
    table.add_row("all", "", f"{n:,} ({n / elapsed if elapsed else 0:,.0f}/s)")
    if wl.phase == "cached":
        counters = wl.cache.counters.snapshot()
        for name in CACHED_FAMILIES:
            c = counters.get(name)
            if c is not None:
                table.add_row(name, f"{c.hit_rate:.2f} %", f"{c.hits + c.misses:,}")
    return table
