"""The workload of the fault suite: many threads (or tasks) reading through a cache while
a fault is applied and healed, with writes and invalidations (by key, pattern and tag)
during the fault, every call logged, and the figures the suite asserts on.

Each call is logged with its start, duration, whether the breaker was open when it
started, and what it returned; every write with its start and end. From that:

* **errors**: exceptions that reached a caller (fail-open means none);
* **wrong**: values returned for another key;
* **stale**: reads that started after a write (and its invalidation) returned, yet got an
  older version: :func:`tests.consistency.violations`, the checker that catches naive
  cache-aside (see test_consistency.py);
* **latency** before the breaker opened (bounded by the timeouts) and after (no Redis);
* **loads vs calls that missed**: no retry storm; and how long hits took to come back.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hitrate import AsyncCache, Cache

from .consistency import Op, violations

__all__ = ["Report", "Source", "run_async", "run_threads"]

GROUPS = 4  # tags: key n is tagged g<n % GROUPS>


@dataclass
class Call:
    key: str
    start: float
    seconds: float
    breaker_open: bool
    value: Any = None
    error: BaseException | None = None


class Source:
    """The source of truth: versioned rows, a padded payload, loader calls counted."""

    def __init__(self, keys: list[str], pad: int = 0) -> None:
        self.versions = dict.fromkeys(keys, 0)
        self.pad = secrets.token_urlsafe(pad)[:pad]  # as large on the wire as it says: zstd
        # cannot shrink random text much
        self.loads = 0
        self.lock = threading.Lock()

    def load(self, key: str) -> dict[str, Any]:
        with self.lock:
            self.loads += 1
            return {"key": key, "v": self.versions[key], "pad": self.pad}

    def write(self, key: str) -> int:
        with self.lock:
            self.versions[key] += 1
            return self.versions[key]


def tags_of(key: str) -> list[str]:
    return [f"g{int(key.rsplit(':', 1)[1]) % GROUPS}"]


def pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Report:
    name: str
    calls: list[Call] = field(default_factory=list)
    ops: list[Op] = field(default_factory=list)
    t_fault: float = 0.0
    t_heal: float = 0.0
    resumed_after: float | None = None  # seconds from heal to the first hit
    breaker_opened: bool = False
    loads: int = 0
    hits: int = 0
    final_stale: list[str] = field(default_factory=list)

    @property
    def errors(self) -> list[BaseException]:
        return [c.error for c in self.calls if c.error is not None]

    @property
    def wrong(self) -> int:
        return sum(1 for c in self.calls if c.error is None and c.value["key"] != c.key)

    @property
    def stale(self) -> int:
        return violations(self.ops)

    def during(self, breaker_open: bool) -> list[float]:
        return [
            c.seconds
            for c in self.calls
            if self.t_fault <= c.start < self.t_heal and c.breaker_open is breaker_open
        ]

    def baseline(self) -> list[float]:
        return [c.seconds for c in self.calls if c.start < self.t_fault]

    def figures(self) -> dict[str, Any]:
        closed, opened, base = self.during(False), self.during(True), self.baseline()
        ms = 1000.0
        return {
            "calls": len(self.calls),
            "errors": len(self.errors),
            "wrong": self.wrong,
            "stale": self.stale,
            "final_stale": len(self.final_stale),
            "base_p50_ms": round(pct(base, 0.5) * ms, 3),
            "base_p99_ms": round(pct(base, 0.99) * ms, 3),
            "closed_calls": len(closed),
            "closed_max_ms": round(max(closed, default=0) * ms, 1),
            "open_calls": len(opened),
            "open_p50_ms": round(pct(opened, 0.5) * ms, 3),
            "open_p90_ms": round(pct(opened, 0.9) * ms, 3),
            "open_p99_ms": round(pct(opened, 0.99) * ms, 3),
            "loads": self.loads,
            "misses": len(self.calls) - self.hits,
            "resumed_after_s": None if self.resumed_after is None else round(self.resumed_after, 2),
        }

    def show(self) -> dict[str, Any]:
        figures = self.figures()
        print(f"\n[fault figures] {self.name}: {figures}")
        return figures


def _write_during_fault(cache_verbs: Any, source: Source, keys: list[str], report: Report) -> Any:
    """A generator of the writes done during the fault, each a (verb name, args, keys
    written) triple the runner calls and logs: by key, by pattern and by tag."""
    by_key = keys[: len(keys) // 4]
    yield from (("invalidate", (k,), [k]) for k in by_key)
    suffix = keys[-1].rsplit(":", 1)[0]  # "item"
    pattern_keys = [k for k in keys if k.endswith("7")]
    yield ("invalidate_pattern", (f"{suffix}:*7",), pattern_keys)
    tag_keys = [k for k in keys if tags_of(k) == ["g1"]]
    yield ("invalidate_tag", ("g1",), tag_keys)


def run_threads(
    cache: Cache,
    source: Source,
    *,
    name: str,
    fault: Callable[[], None],
    heal: Callable[[], None],
    threads: int = 16,
    fault_seconds: float = 2.0,
    after_heal: float = 1.0,
    think: float = 0.001,
) -> Report:
    """Readers on *threads* threads; *fault*, writes during it, *heal*; the report."""
    keys = list(source.versions)
    report = Report(name)
    log_lock = threading.Lock()
    stop = threading.Event()
    for k in keys:
        cache.get_or_fetch(k, lambda k=k: source.load(k), tags=tags_of(k))
    hits0, loads0 = cache.counters.total().hits, source.loads

    def reader(n: int) -> None:
        i = n
        mine: list[Call] = []
        ops: list[Op] = []
        while not stop.is_set():
            k = keys[i % len(keys)]
            i += 7
            t0 = time.monotonic()
            call = Call(k, t0, 0.0, cache.breaker.is_open)
            try:
                call.value = cache.get_or_fetch(k, lambda k=k: source.load(k), tags=tags_of(k))
            except Exception as exc:
                call.error = exc
            t1 = time.monotonic()
            call.seconds = t1 - t0
            mine.append(call)
            if call.error is None:
                ops.append(Op("read", k, t0, t1, call.value["v"]))
            time.sleep(think)
        with log_lock:
            report.calls.extend(mine)
            report.ops.extend(ops)

    workers = [threading.Thread(target=reader, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    time.sleep(0.3)
    report.t_fault = time.monotonic()
    fault()
    time.sleep(min(0.3, fault_seconds / 4))
    for verb, args, written in _write_during_fault(cache, source, keys, report):
        t0 = time.monotonic()
        versions = {k: source.write(k) for k in written}
        getattr(cache, verb)(*args)
        t1 = time.monotonic()
        report.ops.extend(Op("write", k, t0, t1, v) for k, v in versions.items())
        report.breaker_opened |= cache.breaker.is_open
    while time.monotonic() < report.t_fault + fault_seconds:
        report.breaker_opened |= cache.breaker.is_open
        time.sleep(0.01)
    report.t_heal = time.monotonic()
    heal()
    hits_at_heal = cache.counters.total().hits
    while time.monotonic() < report.t_heal + 10:
        if cache.counters.total().hits > hits_at_heal:
            report.resumed_after = time.monotonic() - report.t_heal
            break
        time.sleep(0.005)
    time.sleep(after_heal)
    stop.set()
    for w in workers:
        w.join()
    total = cache.counters.total()
    report.loads, report.hits = source.loads - loads0, total.hits - hits0
    for k in keys:
        got = cache.get_or_fetch(k, lambda k=k: source.load(k), tags=tags_of(k))
        if got["v"] != source.versions[k]:
            report.final_stale.append(k)
    return report


async def run_async(
    cache: AsyncCache,
    source: Source,
    *,
    name: str,
    fault: Callable[[], None],
    heal: Callable[[], None],
    tasks: int = 64,
    fault_seconds: float = 2.0,
    after_heal: float = 1.0,
    think: float = 0.001,
) -> Report:
    """The same with *tasks* asyncio tasks (fault and heal are called from the loop; they
    must not block it for long)."""
    keys = list(source.versions)
    report = Report(name)
    stop = asyncio.Event()
    for k in keys:
        await cache.get_or_fetch(k, lambda k=k: source.load(k), tags=tags_of(k))
    hits0, loads0 = cache.counters.total().hits, source.loads

    async def reader(n: int) -> None:
        i = n
        while not stop.is_set():
            k = keys[i % len(keys)]
            i += 7
            t0 = time.monotonic()
            call = Call(k, t0, 0.0, cache.breaker.is_open)
            try:
                call.value = await cache.get_or_fetch(
                    k, lambda k=k: source.load(k), tags=tags_of(k)
                )
            except Exception as exc:
                call.error = exc
            t1 = time.monotonic()
            call.seconds = t1 - t0
            report.calls.append(call)
            if call.error is None:
                report.ops.append(Op("read", k, t0, t1, call.value["v"]))
            await asyncio.sleep(think)

    running = [asyncio.create_task(reader(n)) for n in range(tasks)]
    await asyncio.sleep(0.3)
    report.t_fault = time.monotonic()
    await asyncio.to_thread(fault)
    await asyncio.sleep(min(0.3, fault_seconds / 4))
    for verb, args, written in _write_during_fault(cache, source, keys, report):
        t0 = time.monotonic()
        versions = {k: source.write(k) for k in written}
        await getattr(cache, verb)(*args)
        t1 = time.monotonic()
        report.ops.extend(Op("write", k, t0, t1, v) for k, v in versions.items())
        report.breaker_opened |= cache.breaker.is_open
    while time.monotonic() < report.t_fault + fault_seconds:
        report.breaker_opened |= cache.breaker.is_open
        await asyncio.sleep(0.01)
    report.t_heal = time.monotonic()
    await asyncio.to_thread(heal)
    hits_at_heal = cache.counters.total().hits
    while time.monotonic() < report.t_heal + 10:
        if cache.counters.total().hits > hits_at_heal:
            report.resumed_after = time.monotonic() - report.t_heal
            break
        await asyncio.sleep(0.005)
    await asyncio.sleep(after_heal)
    stop.set()
    await asyncio.gather(*running)
    total = cache.counters.total()
    report.loads, report.hits = source.loads - loads0, total.hits - hits0
    for k in keys:
        got = await cache.get_or_fetch(k, lambda k=k: source.load(k), tags=tags_of(k))
        if got["v"] != source.versions[k]:
            report.final_stale.append(k)
    return report
