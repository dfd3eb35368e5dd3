"""In-process counters per key family: hits, misses, loads, errors, fail-open events.

Incrementing is a dict update under a lock: no Redis round trip on the hot path. The
counts only grow; :meth:`Counters.outbox` packs what was counted since the last call into
a numbered batch and returns every batch not yet confirmed written, and
:meth:`Counters.delivered` drops the batches Redis confirmed. The flusher in
:mod:`hitrate.flush` sends them with their numbers, so a batch re-sent after an ambiguous
failure is not counted twice, and a batch that failed is sent again: nothing is lost.

Load times go into fixed buckets (:data:`LOAD_BUCKETS`), the same in every process, so
percentiles can be estimated from the buckets summed over all processes and hosts.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

__all__ = ["COUNTERS", "LOAD_BUCKETS", "Counters", "FamilyCounts", "NullCounters", "quantile"]

log = logging.getLogger("hitrate")

MAX_UNSENT = 1000  # batches kept while Redis is unreachable (~80 min at one per 5 s)
MAX_FAMILIES = 256  # families counted by name; the rest are counted together as OTHER
OTHER = "~other"  # (key schemes that put an id before the first ":" make one family per id)

#: Upper bounds (seconds, inclusive) of the load-time buckets; one more bucket holds the rest.
LOAD_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip

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
    "near_hits",
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
    near_hits: int = 0  # hits served by the in-process near cache (counted in hits too)
    load_seconds: float = 0.0
    load_times: list[float] = field(default_factory=list, repr=False)
    load_buckets: list[int] = field(
        default_factory=lambda: [0] * (len(LOAD_BUCKETS) + 1), repr=False
    )

    @property
    def hit_rate(self) -> float:
        """Percent of reads served from the cache (stale and negative hits count as hits)."""
        total = self.hits + self.misses
        return round(100.0 * self.hits / total, 2) if total else 0.0

    def load_quantile(self, q: float) -> float | None:
        """Estimated load time (seconds) at quantile *q* (0.5, 0.99), from the buckets."""
        return quantile(self.load_buckets, q)

    def is_zero(self) -> bool:
        return (
            not any(getattr(self, k) for k in COUNTERS)
            and not self.load_seconds
            and not any(self.load_buckets)
        )

    def copy(self) -> FamilyCounts:
        return FamilyCounts(
            **{k: getattr(self, k) for k in COUNTERS},
            load_seconds=self.load_seconds,
            load_buckets=list(self.load_buckets),
        )

    def add(self, other: FamilyCounts, sign: int = 1) -> None:
        """Add (or with ``sign=-1`` subtract) *other*'s counts to these, in place."""
        for k in COUNTERS:
            setattr(self, k, getattr(self, k) + sign * getattr(other, k))
        self.load_seconds += sign * other.load_seconds
        for i, n in enumerate(other.load_buckets):
            self.load_buckets[i] += sign * n


def quantile(buckets: Sequence[int], q: float) -> float | None:
    """Estimate quantile *q* from load-time bucket counts, interpolating linearly inside
    the bucket it falls in (as Prometheus' ``histogram_quantile`` does); ``None`` with no
    samples. Past the last bound the answer is that bound: "at least this slow"."""
    total = sum(buckets)
    if total <= 0:
        return None
    rank = q * total
    seen = 0
    for i, n in enumerate(buckets):
        if n and seen + n >= rank:
            if i >= len(LOAD_BUCKETS):
                return LOAD_BUCKETS[-1]
            low = LOAD_BUCKETS[i - 1] if i else 0.0
            return low + (LOAD_BUCKETS[i] - low) * max(0.0, rank - seen) / n
        seen += n
    return LOAD_BUCKETS[-1]


class _Shard:
    """One thread's hit and miss counts: only that thread writes them, so the hot path
    needs no lock; readers copy the dicts (a copy is atomic in CPython)."""

    __slots__ = ("__weakref__", "hits", "misses", "near", "thread")

    def __init__(self) -> None:
        self.hits: dict[str, int] = {}
        self.misses: dict[str, int] = {}
        self.near: dict[str, int] = {}
        self.thread = weakref.ref(threading.current_thread())


class Counters:
    """Per-family counters, safe to share between threads.

    Hits and misses (the hot path) go to per-thread shards without a lock, about 100 ns
    cheaper than a locked update; everything else is counted under one lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._families: defaultdict[str, FamilyCounts] = defaultdict(FamilyCounts)
        self._local = threading.local()
        self._shards: list[_Shard] = []
        self._taken: dict[str, FamilyCounts] = {}  # what take() has handed out so far
        self.source = os.urandom(8).hex()  # names this process's batches in Redis
        self._seq = 0
        self._unsent: dict[int, tuple[int, dict[str, FamilyCounts]]] = {}
        #: ``(family, seconds)`` callbacks for each load (Prometheus' histogram); loads are
        #: misses, so the hit path never runs them
        self.observers: list[Callable[[str, float], None]] = []
        self._known: set[str] = set()  # families counted by name (read without the lock)

    def _admit(self, family: str) -> str:
        """*family*, or :data:`OTHER` once :data:`MAX_FAMILIES` are counted by name."""
        with self._lock:
            if family in self._known:
                return family
            if len(self._known) >= MAX_FAMILIES:
                if OTHER not in self._known:
                    self._known.add(OTHER)
                    log.warning(
                        "hitrate: more than %d key families; the rest are counted as %r (put "
                        "a fixed name before the first ':' of a key: 'user:42', not '42:user')",
                        MAX_FAMILIES,
                        OTHER,
                    )
                return OTHER
            self._known.add(family)
            return family

    def incr(self, family: str, name: str, n: int = 1) -> None:
        if family not in self._known:
            family = self._admit(family)
        with self._lock:
            counts = self._families[family]
            setattr(counts, name, getattr(counts, name) + n)

    def _shard(self) -> _Shard:
        shard = _Shard()
        self._local.shard = shard
        with self._lock:
            self._shards.append(shard)
        return shard

    def hit(self, family: str) -> None:
        if family not in self._known:
            family = self._admit(family)
        try:
            hits = self._local.shard.hits
        except AttributeError:
            hits = self._shard().hits
        hits[family] = hits.get(family, 0) + 1

    def add_reads(self, hits: dict[str, int], misses: dict[str, int]) -> None:
        """Hits and misses counted by a multi-key read, per family."""
        for family, n in hits.items():
            self.incr(family, "hits", n)
        for family, n in misses.items():
            self.incr(family, "misses", n)

    def near_hit(self, family: str) -> None:
        """A hit served by the near cache: a hit, and a near hit."""
        if family not in self._known:
            family = self._admit(family)
        try:
            shard = self._local.shard
        except AttributeError:
            shard = self._shard()
        hits, near = shard.hits, shard.near
        hits[family] = hits.get(family, 0) + 1
        near[family] = near.get(family, 0) + 1

    def miss(self, family: str) -> None:
        if family not in self._known:
            family = self._admit(family)
        try:
            misses = self._local.shard.misses
        except AttributeError:
            misses = self._shard().misses
        misses[family] = misses.get(family, 0) + 1

    def _merged(self) -> dict[str, FamilyCounts]:
        """Every family's counts, shards included; called with the lock held. The shards
        of threads that ended are folded into the locked counts."""
        ended = [shard for shard in self._shards if _ended(shard)]
        for shard in ended:
            self._fold(shard)
            self._shards.remove(shard)
        out = {name: c.copy() for name, c in self._families.items()}
        for shard in self._shards:
            for name, n in shard.hits.copy().items():
                out.setdefault(name, FamilyCounts()).hits += n
            for name, n in shard.misses.copy().items():
                out.setdefault(name, FamilyCounts()).misses += n
            for name, n in shard.near.copy().items():
                out.setdefault(name, FamilyCounts()).near_hits += n
        return out

    def _fold(self, shard: _Shard) -> None:
        for name, n in shard.hits.copy().items():
            self._families[name].hits += n
        for name, n in shard.misses.copy().items():
            self._families[name].misses += n
        for name, n in shard.near.copy().items():
            self._families[name].near_hits += n

    def load(self, family: str, seconds: float) -> None:
        if family not in self._known:
            family = self._admit(family)
        with self._lock:
            counts = self._families[family]
            counts.loads += 1
            counts.load_seconds += seconds
            counts.load_buckets[bisect_left(LOAD_BUCKETS, seconds)] += 1
            if len(counts.load_times) < 10_000:
                counts.load_times.append(seconds)
        for observe in self.observers:
            try:
                observe(family, seconds)
            except Exception:  # an exporter's failure is no reason to fail a read
                log.exception("hitrate: load observer failed")

    def snapshot(self) -> dict[str, FamilyCounts]:
        """A copy of every family's counts."""
        with self._lock:
            out = self._merged()
            for name, c in self._families.items():
                out[name].load_times = list(c.load_times)
            return out

    def total(self) -> FamilyCounts:
        out = FamilyCounts()
        for c in self.snapshot().values():
            for k in COUNTERS:
                setattr(out, k, getattr(out, k) + getattr(c, k))
            out.load_seconds += c.load_seconds
            for i, n in enumerate(c.load_buckets):
                out.load_buckets[i] += n
        return out

    def reset(self) -> None:
        """Forget every count (what was not flushed yet is dropped too)."""
        with self._lock:
            self._families.clear()
            self._taken.clear()
            self._unsent.clear()
            for shard in self._shards:
                shard.hits.clear()
                shard.misses.clear()
                shard.near.clear()

    def _take(self) -> dict[str, FamilyCounts]:
        """What was counted since the last take, per family (families with nothing new are
        left out). Called with the lock held."""
        out: dict[str, FamilyCounts] = {}
        for name, counts in self._merged().items():
            taken = self._taken.get(name)
            delta = counts.copy()
            if taken is not None:
                delta.add(taken, -1)
            if delta.is_zero():
                continue
            out[name] = delta
            self._taken[name] = counts.copy()
        return out

    def outbox(self, minute: int) -> list[tuple[int, int, dict[str, FamilyCounts]]]:
        """Every batch not confirmed written, oldest first, as ``(sequence number, epoch
        minute it was counted in, counts per family)``; what was counted since the last
        call becomes a new batch in *minute*. Past :data:`MAX_UNSENT` batches (Redis down
        for long) new counts are folded into the newest batch instead."""
        with self._lock:
            deltas = self._take()
            if deltas:
                if len(self._unsent) >= MAX_UNSENT:
                    newest = self._unsent[self._seq][1]
                    for name, delta in deltas.items():
                        if name in newest:
                            newest[name].add(delta)
                        else:
                            newest[name] = delta
                else:
                    self._seq += 1
                    self._unsent[self._seq] = (minute, deltas)
            return [(seq, m, d) for seq, (m, d) in sorted(self._unsent.items())]

    def delivered(self, upto: int) -> None:
        """Redis holds every batch up to sequence number *upto*: forget them."""
        with self._lock:
            for seq in [s for s in self._unsent if s <= upto]:
                del self._unsent[seq]

    def after_fork(self) -> None:
        """In a forked child: a fresh lock and name, and what the parent counted stays the
        parent's to flush (the child's flushes carry only what the child counts)."""
        self._lock = threading.Lock()
        self._taken = self._merged()
        self.source = os.urandom(8).hex()
        self._seq = 0
        self._unsent = {}


def _ended(shard: _Shard) -> bool:
    thread = shard.thread()
    return thread is None or not thread.is_alive()


class NullCounters(Counters):
    """Counts nothing: ``Cache(..., count=False)``, used to measure what counting costs."""

    def incr(self, family: str, name: str, n: int = 1) -> None:
        pass

    def hit(self, family: str) -> None:
        pass

    def miss(self, family: str) -> None:
        pass

    def near_hit(self, family: str) -> None:
        pass

    def load(self, family: str, seconds: float) -> None:
        pass
