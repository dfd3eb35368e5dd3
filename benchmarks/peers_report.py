"""What ``peers.py`` prints and writes: the profile of hitrate's paths, the tables of
``docs/benchmarks.md`` and the chart ``docs/benchmarks.png`` (matplotlib, bench venv only)."""

from __future__ import annotations

import cProfile
import pstats
from pathlib import Path
from typing import Any

import redis
from peers_libs import PAYLOAD, SETTINGS, never, payload

LIBS = ["hitrate", "hitrate near", "dogpile.cache", "cashews", "cashews lock", "aiocache",
        "cachekit", "cachekit L1", "cashews client_side"]  # fmt: skip
ROWS = [  # (title, [(path, variant)...] per mode), target
    ("warm hit, sync / async", ["hit_sync", "hit_async"], "≤ 0.95 both"),
    ("miss + fill, sync / async", ["miss_sync", "miss_async"], "≤ 1.20, with leases on"),
    ("`get_many` of 100 warm keys, sync / async", ["many_sync", "many_async"], "≤ 0.55"),
    ("near-cache hit, sync / async", ["near_sync", "near_async"], "≤ 0.05"),
]


def _short(filename: str) -> str:
    for marker in ("site-packages/", "src/", "lib/python3"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


def _profile_one(fn: Any, calls: int) -> dict[str, Any]:
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(calls):
        fn()
    prof.disable()
    stats = pstats.Stats(prof)
    rows = []
    for (filename, line, name), (_cc, nc, tt, ct, _) in stats.stats.items():  # type: ignore[attr-defined]
        where = f"{_short(filename)}:{line} {name}" if line else name
        rows.append({"fn": where, "calls": nc / calls, "tottime_us": tt / calls * 1e6,
                     "cumtime_us": ct / calls * 1e6})  # fmt: skip
    rows.sort(key=lambda r: -r["tottime_us"])
    total = stats.total_tt / calls * 1e6  # type: ignore[attr-defined]
    share = dict.fromkeys(("socket", "hitrate", "redis-py", "other"), 0.0)
    for row in rows:
        share[_bucket(row["fn"])] += row["tottime_us"] / total
    trips = sum(r["calls"] for r in rows if "sendall" in r["fn"])
    return {"calls_per_op": stats.total_calls / calls, "us_per_op": total,  # type: ignore[attr-defined]
            "round_trips": trips, "share": share, "top": rows[:12]}  # fmt: skip


def _bucket(fn: str) -> str:
    if "_socket.socket" in fn or "select" in fn:
        return "socket"  # the round trip (the pinned server runs while the client waits)
    if fn.startswith("hitrate/"):
        return "hitrate"
    if fn.startswith("redis/"):
        return "redis-py"
    return "other"  # builtins, orjson, the stdlib


def profile(url: str, run: str, quick: bool = False) -> dict[str, Any]:
    """cProfile of ``Cache.get_or_fetch``: a warm hit and a miss + fill (new key each call)."""
    from hitrate import Cache

    r = redis.Redis.from_url(url)
    cache = Cache(r, prefix=f"{run}-prof", default_ttl=300)
    cache.set("user:42", PAYLOAD)
    cache.get_or_fetch("user:42", never)
    fresh = iter(range(10**9))
    hits, misses = (2000, 500) if quick else (20000, 3000)
    out = {
        "hit": _profile_one(lambda: cache.get_or_fetch("user:42", never), hits),
        "miss": _profile_one(lambda: cache.get_or_fetch(f"miss:{next(fresh)}", payload), misses),
    }
    r.close()
    return out


def _cell(row: dict[str, Any] | None) -> str:
    if row is None:
        return "–"
    return f"{row['x']:.2f} ({row['x_min']:.2f}–{row['x_max']:.2f})"


def _find(doc: dict[str, Any], path: str, lib: str) -> dict[str, Any] | None:
    for row in doc["rows"]:
        if row["path"] == path and row["lib"] == lib and "/" not in row["variant"]:
            return row
    return None


def _ref(doc: dict[str, Any], variant: str) -> dict[str, Any] | None:
    for row in doc["rows"]:
        if row["lib"] == "redis-py" and row["variant"] == variant and row["path"] == variant[:-7]:
            return row
    return None


def path_table(doc: dict[str, Any]) -> list[str]:
    libs = [lib for lib in LIBS if any(r["lib"] == lib for r in doc["rows"])]
    head = ["path", "baseline µs", *libs, "redis-py + orjson", "target"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for title, paths, target in ROWS:
        for path in paths:
            mode = path.split("_")[1]
            base = next(r for r in doc["rows"] if r["path"] == path and r["baseline"])
            cells = [_cell(_find(doc, path, lib)) for lib in libs]
            ref = _ref(doc, f"{path}/orjson") if not path.startswith("near") else None
            name = title.split(",")[0] + f", {mode}"
            out.append(f"| {name} | {base['us']:.1f} | " + " | ".join(cells) +
                       f" | {_cell(ref)} | {target} |")  # fmt: skip
    return out


def memory_table(doc: dict[str, Any]) -> list[str]:
    out = ["| library | MEMORY USAGE (B) | value (B) | key (B) | key |", "|---|---|---|---|---|"]
    for row in doc["memory"]:
        key = row["key"].replace(doc["run"], "…")
        out.append(
            f"| {row['lib']} | {row['bytes']} | {row['value']} | {row['key_len']} | `{key}` |"
        )
    return out


def expiry_table(doc: dict[str, Any]) -> list[str]:
    out = ["| library | loads per expiry | waiters p50 ms | waiters p99 ms | waiters max ms | "
           "loader ms |", "|---|---|---|---|---|---|"]  # fmt: skip
    for row in doc["expiry"]:
        ms = [
            f"{row[k]:.1f}" if row["waiters"] else "– (none)"
            for k in ("p50_ms", "p99_ms", "max_ms")
        ]
        out.append(f"| {row['lib']} | {row['loads_per_expiry']:.2f} | " + " | ".join(ms) +
                   f" | {row['load_ms']:.0f} |")  # fmt: skip
    return out


def throughput_table(doc: dict[str, Any]) -> list[str]:
    tp = doc["throughput"]
    cols = list(tp["rows"]["hitrate"])
    out = ["| ops/s | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for name, row in tp["rows"].items():
        out.append(f"| {name} | " + " | ".join(f"{row[c]:,.0f}" for c in cols) + " |")
    ratio = [f"{tp['rows']['hitrate'][c] / tp['rows']['redis-py'][c]:.2f}" for c in cols]
    out.append("| hitrate / redis-py | " + " | ".join(ratio) + " |")
    return out


def profile_table(prof: dict[str, Any]) -> list[str]:
    out = [
        "| function | calls per op | own µs per op | cumulative µs per op |",
        "|---|---|---|---|",
    ]
    for row in prof["top"]:
        out.append(f"| `{row['fn']}` | {row['calls']:.2f} | {row['tottime_us']:.2f} | "
                   f"{row['cumtime_us']:.2f} |")  # fmt: skip
    return out


def tables(doc: dict[str, Any]) -> str:
    lines = ["× = median same-round ratio to raw redis-py (min–max over rounds)", ""]
    lines += [*path_table(doc), "", *memory_table(doc), "", *expiry_table(doc), ""]
    lines += throughput_table(doc)
    limit = doc["throughput"]["redis_benchmark"]
    lines += [f"redis-benchmark GET: {limit}", ""]
    for name in ("hit", "miss"):
        prof = doc["profile"][name]
        lines.append(f"profile {name}: {prof['calls_per_op']:.1f} calls/op, "
                     f"{prof['us_per_op']:.1f} µs/op under cProfile")  # fmt: skip
    return "\n".join(lines)


def markdown(doc: dict[str, Any], argv: list[str]) -> str:
    env, tp = doc["env"], doc["throughput"]
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items())
    limit = tp["redis_benchmark"]
    near = (
        "hitrate's near cache (`Cache(..., near=NearCache(...))`) is the *hitrate near* column."
        if env["near"]
        else "*hitrate near*: not measured, `hitrate.NearCache` is not in this build; "
        "the near-cache rows show the peers only."
    )
    cmd = "make bench-peers" + (f" BENCH_ARGS='{' '.join(argv)}'" if argv else "")
    parts = [
        "# Benchmarks: hitrate and the Python Redis caches",
        "",
        f"Generated by `{cmd}` (`benchmarks/peers.py`) on {env['date']}; do not edit by hand.",
        "One process, one server, one payload: a 10-field dict, 324 B as JSON. On each path "
        "every library and the raw redis-py baseline take turns within each round (order "
        "alternating), so noise hits them alike. **×** is the median over "
        f"{doc['rounds']} rounds of the same-round ratio to raw redis-py (`GET` + `json.loads` "
        "for hits and near-cache hits, `MGET` + `json.loads` for `get_many`, `GET` miss + `SET` "
        "for misses); in brackets, its min–max over rounds. Below 1 is faster than the "
        "hand-written baseline. A miss is a new key on every call.",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        f"| CPU | {env['cpu']}, {env['cores']} cores |",
        f"| Python | {env['python']} ({env['platform']}) |",
        f"| server | {env['server']}, {env['target']} |",
        f"| load average | {env['load']} (the machine is shared; 1-minute load, start → end) |",
        f"| hiredis | {'yes' if env['hiredis'] else 'no'} |",
        f"| versions | {versions} |",
        "",
        "## Paths",
        "",
        *path_table(doc),
        "",
        near,
        "A dash: the library has no such path (dogpile.cache is sync only; aiocache, cashews "
        "are async only; cachekit has no batch read).",
        "",
        "## Memory per entry",
        "",
        "`MEMORY USAGE key SAMPLES 0` of each library's entry for the same payload. Key names "
        "differ in length, so the key's own bytes are shown beside it.",
        "",
        *memory_table(doc),
        "",
        "## Loads per expiry",
        "",
        "50 callers (10 processes × 5 threads, or 5 asyncio tasks for the async-only "
        "libraries) ask for one hot key at once right after it is gone; the loader takes 50 ms. "
        "*naive* is GET, load on a miss, SET. Waiters are the callers that did not run the "
        "loader themselves. Each library waits with its documented defaults.",
        "",
        *expiry_table(doc),
        "",
        "How each waits, from its documentation and source: hitrate's waiters poll for the "
        "fill with growing pauses; dogpile.cache's poll its Redis lock every `lock_sleep` "
        "(0.1 s by default) and then take it one after another to re-check; cashews' "
        "`lock=True` waits for the lock and re-reads; aiocache's `cached_stampede` waits on an "
        "in-process event, so callers in other processes do not wait for the holder; cachekit "
        "takes its fill lock on the async miss path only (*cachekit* is a sync function, "
        "*cachekit async* an async one).",
        "",
        "## Throughput of warm hits",
        "",
        f"Hits per second, median of {tp['repeats']} alternating runs of {tp['seconds']:.1f} s "
        "each: threads sharing one client (sync), or 200 tasks sharing one async client; the "
        "client not pinned, the server where it was. The "
        "physical limit of this server, from `redis-benchmark -t get -n 200000 -c 50 -P 1 -q`: "
        f"**{limit['3 B'] or 0:,.0f}** GET/s with its default 3-byte value, "
        f"**{limit['324 B'] or 0:,.0f}** GET/s with `-d 324`. Python clients share the 2 cores "
        "with the server, so they cannot reach it.",
        "",
        *throughput_table(doc),
        "",
        "## Where hitrate's time goes",
        "",
        "cProfile of `Cache.get_or_fetch` (sync), per call. cProfile's own cost inflates the "
        "absolute times (several-fold on short functions); the call counts are exact. The "
        "raw baseline makes one round trip per hit and two per miss (`GET`, `SET`), so a "
        "path's round trips bound its × from below; what is left is Python, most of it "
        "redis-py's own per-command work, which the baseline pays too.",
        "",
    ]
    for name, title in (("hit", "Warm hit"), ("miss", "Miss + fill (lease, load, fill)")):
        prof = doc["profile"][name]
        share = ", ".join(f"{k} {v:.0%}" for k, v in prof["share"].items())
        parts += [f"**{title}**: {prof['calls_per_op']:.1f} Python-level calls and "
                  f"{prof['round_trips']:.0f} round trips per call, {prof['us_per_op']:.1f} µs "
                  f"per call under the profiler; own time by where it is spent: {share}. "
                  "Top functions by own time:", "", *profile_table(prof), ""]  # fmt: skip
    parts += [
        "## Settings",
        "",
        "Each library with its fastest documented settings for JSON-able dicts:",
        "",
        *[f"- **{name}**: {text}" for name, text in SETTINGS.items()],
        "",
        "![hitrate and its peers](benchmarks.png)",
        "",
    ]
    return "\n".join(parts)


def chart(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    libs = [lib for lib in LIBS if any(r["lib"] == lib for r in doc["rows"])]
    paths = [p for _, ps, _ in ROWS for p in ps]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(14, 7), gridspec_kw={"width_ratios": [3, 2]})
    height = 0.8 / len(libs)
    colors = plt.get_cmap("tab10")
    for i, lib in enumerate(libs):
        ys, xs = [], []
        for j, p in enumerate(paths):
            row = _find(doc, p, lib)
            if row is not None:
                ys.append(j + i * height)
                xs.append(row["x"])
        ax.barh(ys, xs, height=height, label=lib, color=colors(i % 10))
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xscale("log")
    ticks = [
        t
        for t in (0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20)
        if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]
    ]
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.set_yticks([j + 0.4 - height / 2 for j in range(len(paths))])
    ax.set_yticklabels([p.replace("_", " ") for p in paths])
    ax.invert_yaxis()
    ax.set_xlabel("× raw redis-py (log scale; < 1 is faster)")
    ax.set_title("Cost per call vs. hand-written redis-py")
    ax.legend(fontsize=8, loc="lower right")
    tp = doc["throughput"]
    cols = list(tp["rows"]["hitrate"])
    for i, name in enumerate(tp["rows"]):
        color = colors(0) if name == "hitrate" else "0.55"  # hitrate as on the left; raw grey
        ax2.bar([c + i * 0.4 for c in range(len(cols))], [tp["rows"][name][c] for c in cols],
                width=0.4, label=name, color=color)  # fmt: skip
    limit = tp["redis_benchmark"].get("324 B")
    if limit:
        ax2.axhline(limit, color="red", linestyle="--", label="redis-benchmark GET (324 B)")
    ax2.set_xticks([c + 0.2 for c in range(len(cols))])
    ax2.set_xticklabels(cols)
    ax2.set_ylabel("warm hits per second")
    ax2.set_title("Throughput under concurrency")
    ax2.legend(fontsize=8)
    fig.suptitle(f"{doc['env']['server']}, {doc['env']['python']}, {doc['env']['date']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
