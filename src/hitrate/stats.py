"""In-process counters per key family: hits, misses, loads, errors, fail-open events.

Incrementing is a dict update under a lock: no Redis round trip on the hot path.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass, field

__all__ = ["COUNTERS", "Counters", "FamilyCounts"]

COUNTERS = (
    "hits",
    "misses",
    "stale_hits",
    "negative_hits",
    "loads",
    "fills",
    "fills_refused",
    "waits",
    "invalidations",
    "errors",
    "fail_open",
    "decode_errors",
)


@dataclass
class FamilyCounts:
    hits: int = 0
    misses: int = 0
    stale_hits: int = 0
    negative_hits: int = 0
    loads: int = 0
    fills: int = 0
    fills_refused: int = 0
    waits: int = 0
    invalidations: int = 0
    errors: int = 0
    fail_open: int = 0
    decode_errors: int = 0
    load_seconds: float = 0.0
    load_times: list[float] = field(default_factory=list, repr=False)

    @property
    def hit_rate(self) -> float:
        """Percent of reads served from the cache (stale and negative hits count as hits)."""
        total = self.hits + self.misses
        return round(100.0 * self.hits / total, 2) if total else 0.0


class Counters:
    """Per-family counters, safe to share between threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._families: defaultdict[str, FamilyCounts] = defaultdict(FamilyCounts)

    def incr(self, family: str, name: str, n: int = 1) -> None:
        with self._lock:
            counts = self._families[family]
            setattr(counts, name, getattr(counts, name) + n)

    def hit(self, family: str) -> None:
        with self._lock:
            self._families[family].hits += 1

    def miss(self, family: str) -> None:
        with self._lock:
            self._families[family].misses += 1

    def load(self, family: str, seconds: float) -> None:
        with self._lock:
            counts = self._families[family]
            counts.loads += 1
            counts.load_seconds += seconds
            if len(counts.load_times) < 10_000:
                counts.load_times.append(seconds)

    def snapshot(self) -> dict[str, FamilyCounts]:
        """A copy of every family's counts."""
        with self._lock:
            return {
                name: FamilyCounts(
                    **{k: getattr(c, k) for k in COUNTERS},
                    load_seconds=c.load_seconds,
                    load_times=list(c.load_times),
                )
                for name, c in self._families.items()
            }

    def total(self) -> FamilyCounts:
        out = FamilyCounts()
        for c in self.snapshot().values():
            for k in COUNTERS:
                setattr(out, k, getattr(out, k) + getattr(c, k))
            out.load_seconds += c.load_seconds
        return out

    def reset(self) -> None:
        with self._lock:
            self._families.clear()
