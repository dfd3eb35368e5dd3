"""``cache.stats()``: hit rate per key family from every process, beside the server's figures.

Redis's own ``keyspace_hits``/``keyspace_misses`` mix every client and every kind of key;
hitrate's counters (flushed by :mod:`hitrate.flush`) say which family of keys is failing::

    >>> s = cache.stats()                                    # doctest: +SKIP
    >>> s.hit_rate, s.verdict                                # doctest: +SKIP
    (87.5, <Verdict.TARGET: 'target'>)
    >>> s.family("user").load_p99                            # doctest: +SKIP
    0.0123

Verdicts, for each family and overall: below 50 % "useless — fix the keys or TTLs",
50-80 % "working", 80-95 % "target", above 95 % "check for staleness" (bounds included in
the better band: 50.00 is working, 80.00 and 95.00 are target). Under :data:`MIN_READS`
reads the rate says little (3 hits of 4 is not a working cache yet): the verdict is then
"too few reads".

Reading stats adds no keyspace miss to the server figures it shows: INFO is read before
anything else, and the stats hashes are looked up with MEMORY USAGE (which Redis and
Valkey count neither as a hit nor as a miss) so only those that exist are read.

The reading is a plan (:func:`stats_plan`) like every other verb, so :class:`~hitrate.Cache`
and :class:`~hitrate.AsyncCache` share it. Key counts and memory per family are estimated
by sampling: SCAN (never KEYS) examines up to ``sample`` keys of the database, MEMORY USAGE
measures up to 50 entries per family, and the figures are scaled by ``DBSIZE / examined``
when the scan did not cover the whole database (``Stats.sample.complete`` says which).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from .counting import COUNTERS, Counters, FamilyCounts, quantile
from .flush import BUCKET_NAMES, flush_plan, minute_key, totals_key
from .keys import KeySpace, family_of
from .ops import Batch, EachNode, Plan

__all__ = [
    "FamilyStats",
    "History",
    "KeySample",
    "MIN_READS",
    "Stats",
    "Verdict",
    "parse_counts",
    "stats_plan",
    "verdict_for",
]

_BUCKET_INDEX = {name: i for i, name in enumerate(BUCKET_NAMES)}
MEMORY_SAMPLES = 50  # MEMORY USAGE calls per family
MIN_READS = 100  #: fewer reads than this get :attr:`Verdict.TOO_FEW`, not a judgement


class Verdict(StrEnum):
    """What a hit rate says about a cache (the value is the advice shown to people)."""

    NO_DATA = "no traffic yet"
    TOO_FEW = "too few reads"
    USELESS = "useless — fix the keys or TTLs"
    WORKING = "working"
    TARGET = "target"
    STALENESS = "check for staleness"

    @property
    def level(self) -> str:
        """A short name for the verdict: ``useless``, ``working``, ``target``, ..."""
        return self.name.lower()


def verdict_for(hit_rate: float, reads: int | None = None) -> Verdict:
    """The verdict for *hit_rate* (percent) over *reads* reads: :attr:`Verdict.NO_DATA`
    when nothing was read, :attr:`Verdict.TOO_FEW` under :data:`MIN_READS` reads (None:
    judge the rate alone).

    >>> [verdict_for(rate).level for rate in (49.99, 50.0, 80.0, 95.0, 95.01)]
    ['useless', 'working', 'target', 'target', 'staleness']
    >>> [verdict_for(75.0, reads).level for reads in (0, 4, 99, 100)]
    ['no_data', 'too_few', 'too_few', 'working']
    """
    if reads is not None and reads <= 0:
        return Verdict.NO_DATA
    if reads is not None and reads < MIN_READS:
        return Verdict.TOO_FEW
    if hit_rate < 50.0:
        return Verdict.USELESS
    if hit_rate < 80.0:
        return Verdict.WORKING
    if hit_rate <= 95.0:
        return Verdict.TARGET
    return Verdict.STALENESS


def _rate(hits: int, misses: int) -> float:
    total = hits + misses
    return round(100.0 * hits / total, 2) if total else 0.0


@dataclass(frozen=True)
class FamilyStats:
    """One key family's figures, summed over every process that flushed them."""

    family: str
    hits: int
    misses: int
    stale_hits: int = 0
    negative_hits: int = 0
    loads: int = 0
    fills: int = 0
    fills_refused: int = 0  #: fills refused: an invalidation or write ran while it loaded
    waits: int = 0  #: callers that waited for another caller's load instead of loading
    invalidations: int = 0
    errors: int = 0
    fail_open: int = 0
    decode_errors: int = 0
    near_hits: int = 0  #: hits served by the in-process near cache (also in ``hits``)
    load_seconds: float = 0.0
    load_p50: float | None = None  #: seconds, estimated from the load-time buckets
    load_p99: float | None = None
    keys: int | None = None  #: entries, estimated by sampling (None: not sampled)
    memory_bytes: int | None = None  #: their memory, estimated by sampling
    #: loads per bucket of :data:`~hitrate.counting.LOAD_BUCKETS`
    load_buckets: tuple[int, ...] = ()

    @property
    def hit_rate(self) -> float:
        """Percent of reads served from the cache, 2 decimals (stale and negative hits are
        hits)."""
        return _rate(self.hits, self.misses)

    @property
    def verdict(self) -> Verdict:
        return verdict_for(self.hit_rate, self.hits + self.misses)

    @property
    def bytes_per_entry(self) -> int | None:
        """Average memory of one entry of the family (MEMORY USAGE, sampled), or None."""
        if not self.keys or self.memory_bytes is None:
            return None
        return round(self.memory_bytes / self.keys)

    def as_dict(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "hit_rate": self.hit_rate,
            "verdict": str(self.verdict),
            "verdict_level": self.verdict.level,
            "hits": self.hits,
            "misses": self.misses,
            "stale_hits": self.stale_hits,
            "negative_hits": self.negative_hits,
            "loads": self.loads,
            "fills": self.fills,
            "fills_refused": self.fills_refused,
            "waits": self.waits,
            "invalidations": self.invalidations,
            "errors": self.errors,
            "fail_open": self.fail_open,
            "decode_errors": self.decode_errors,
            "near_hits": self.near_hits,
            "load_seconds": round(self.load_seconds, 6),
            "load_p50": self.load_p50,
            "load_p99": self.load_p99,
            "keys": self.keys,
            "memory_bytes": self.memory_bytes,
            "bytes_per_entry": self.bytes_per_entry,
            "load_buckets": list(self.load_buckets),
        }


@dataclass(frozen=True)
class KeySample:
    """What the SCAN sample saw: entries and memory per family, scaled to the database."""

    examined: int
    complete: bool  #: the scan covered the whole database: counts are exact
    keys: Mapping[str, int] = field(default_factory=dict)
    memory_bytes: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class History:
    """Per-minute counts for the last minutes (oldest first), from the minute buckets."""

    minutes: tuple[int, ...]  #: epoch minutes (``int(time() // 60)``)
    families: Mapping[str, tuple[FamilyCounts, ...]]

    def series(self, family: str | None = None) -> list[float | None]:
        """Hit rate per minute for *family* (all families when None); None: no reads."""
        rows = self._rows(family)
        return [_rate(c.hits, c.misses) if c.hits + c.misses else None for c in rows]

    def _rows(self, family: str | None) -> list[FamilyCounts]:
        if family is not None:
            return list(self.families.get(family, ()))
        out = [FamilyCounts() for _ in self.minutes]
        for rows in self.families.values():
            for total, counts in zip(out, rows, strict=True):
                total.add(counts)
        return out

    def as_dict(self) -> dict[str, Any]:
        def one(rows: list[FamilyCounts]) -> dict[str, Any]:
            return {
                "hits": [c.hits for c in rows],
                "misses": [c.misses for c in rows],
                "hit_rate": [_rate(c.hits, c.misses) if c.hits + c.misses else None for c in rows],
            }

        return {
            "minutes": [m * 60 for m in self.minutes],
            "total": one(self._rows(None)),
            "families": {name: one(list(rows)) for name, rows in sorted(self.families.items())},
        }


@dataclass(frozen=True)
class NodeStats:
    """One server's INFO figures: the server of a one-server cache, or one primary of a
    Redis Cluster (where :class:`Stats` sums them)."""

    node: str  #: ``host:port`` (a URL for one server)
    memory_used_bytes: int
    keys: int  #: DBSIZE
    evicted_keys: int
    expired_keys: int
    keyspace_hits: int
    keyspace_misses: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "memory_used_bytes": self.memory_used_bytes,
            "keys": self.keys,
            "evicted_keys": self.evicted_keys,
            "expired_keys": self.expired_keys,
            "keyspace_hits": self.keyspace_hits,
            "keyspace_misses": self.keyspace_misses,
        }


@dataclass(frozen=True)
class Stats:
    """The state of one cache (one prefix): hitrate's counts from every process, the
    server's INFO figures, and a row per key family. ``as_dict()`` gives JSON."""

    prefix: str
    hits: int
    misses: int
    memory_used: str  #: as INFO says it, e.g. ``"1.05M"``
    memory_used_bytes: int
    keys: int  #: DBSIZE: every key in the database, not only this prefix's
    evicted_keys: int
    expired_keys: int
    keyspace_hits: int  #: the server's, for every client and kind of key
    keyspace_misses: int
    families: tuple[FamilyStats, ...] = ()
    minutes: int | None = None  #: counts cover the last N minutes (None: since first flush)
    sample: KeySample | None = None
    history: History | None = None
    taken_at: float = 0.0
    #: Per server: one row, or one per primary of a Redis Cluster (the figures above are
    #: their sums).
    nodes: tuple[NodeStats, ...] = ()

    @property
    def hit_rate(self) -> float:
        """Percent of hitrate's reads served from the cache, over every family."""
        return _rate(self.hits, self.misses)

    @property
    def verdict(self) -> Verdict:
        return verdict_for(self.hit_rate, self.hits + self.misses)

    @property
    def server_hit_rate(self) -> float:
        """The server-wide rate from ``keyspace_hits``/``keyspace_misses`` (all clients)."""
        return _rate(self.keyspace_hits, self.keyspace_misses)

    def family(self, name: str) -> FamilyStats:
        """The row of family *name* (a row of zeros if nothing was counted for it)."""
        for row in self.families:
            if row.family == name:
                return row
        return FamilyStats(name, 0, 0)

    def total(self, counter: str) -> int:
        """*counter* (``"loads"``, ``"errors"``, ...) summed over the families."""
        return sum(int(getattr(row, counter)) for row in self.families)

    def as_dict(self) -> dict[str, Any]:
        return {
            "prefix": self.prefix,
            "hit_rate": self.hit_rate,
            "verdict": str(self.verdict),
            "verdict_level": self.verdict.level,
            "hits": self.hits,
            "misses": self.misses,
            "memory_used": self.memory_used,
            "memory_used_bytes": self.memory_used_bytes,
            "keys": self.keys,
            "evicted_keys": self.evicted_keys,
            "expired_keys": self.expired_keys,
            "keyspace_hits": self.keyspace_hits,
            "keyspace_misses": self.keyspace_misses,
            "server_hit_rate": self.server_hit_rate,
            "minutes": self.minutes,
            "families": [row.as_dict() for row in self.families],
            "sample": None
            if self.sample is None
            else {"examined": self.sample.examined, "complete": self.sample.complete},
            "history": None if self.history is None else self.history.as_dict(),
            "taken_at": self.taken_at,
            "nodes": [node.as_dict() for node in self.nodes],
        }


# -- reading -------------------------------------------------------------------------------


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _pairs(reply: Any) -> Iterable[tuple[Any, Any]]:
    if isinstance(reply, dict):
        return reply.items()
    items = list(reply or [])
    return zip(items[::2], items[1::2], strict=True)


def parse_counts(reply: Any) -> dict[str, FamilyCounts]:
    """A stats hash (``HGETALL`` reply) as counts per family; unknown fields are ignored."""
    out: dict[str, FamilyCounts] = {}
    for raw_field, raw_value in _pairs(reply):
        family, sep, name = _text(raw_field).rpartition("|")
        if not sep:
            continue
        counts = out.get(family)
        if counts is None:
            counts = out[family] = FamilyCounts()
        value = _text(raw_value)
        if name in COUNTERS:
            setattr(counts, name, int(value))
        elif name == "load_seconds":
            counts.load_seconds = float(value)
        elif name in _BUCKET_INDEX:
            counts.load_buckets[_BUCKET_INDEX[name]] = int(value)
    return out


def _merge(parts: Iterable[dict[str, FamilyCounts]]) -> dict[str, FamilyCounts]:
    out: dict[str, FamilyCounts] = {}
    for part in parts:
        for family, counts in part.items():
            if family in out:
                out[family].add(counts)
            else:
                out[family] = counts.copy()
    return out


def sample_plan(keys: KeySpace, budget: int, dbsize: int, *, count: int = 1000) -> Plan:
    """SCAN up to *budget* keys of the database (every key, so the share of it seen is
    known), count this prefix's entries per family and measure some with MEMORY USAGE."""
    start = keys.root + "{"
    cursor: Any = 0
    examined = 0
    found: dict[str, int] = {}
    measured: dict[str, list[str]] = {}
    while True:
        cursor, batch = yield ("SCAN", cursor, "COUNT", count)
        examined += len(batch)
        for raw in batch:
            rkey = _text(raw)
            if not rkey.startswith(start) or keys.entry_of(rkey) != rkey:
                continue  # not ours, or a lease/bookkeeping key beside an entry
            family = family_of(keys.user_key(rkey))
            found[family] = found.get(family, 0) + 1
            chosen = measured.setdefault(family, [])
            if len(chosen) < MEMORY_SAMPLES:
                chosen.append(rkey)
        if int(cursor) == 0 or examined >= budget:
            break
    complete = int(cursor) == 0
    order = [(family, rkey) for family, rkeys in measured.items() for rkey in rkeys]
    sizes = (yield Batch([("MEMORY", "USAGE", rkey) for _, rkey in order])) if order else []
    per_family: dict[str, list[int]] = {}
    for (family, _), size in zip(order, sizes, strict=True):
        if size is not None:  # expired since the SCAN
            per_family.setdefault(family, []).append(int(size))
    scale = 1.0 if complete or not examined else max(dbsize, examined) / examined
    estimated = {family: round(n * scale) for family, n in found.items()}
    memory = {
        family: round(sum(s) / len(s) * estimated[family]) for family, s in per_family.items()
    }
    return KeySample(examined, complete, estimated, memory)


def _int(info: Mapping[str, Any], name: str) -> int:
    try:
        return int(info.get(name, 0))
    except (TypeError, ValueError):
        return 0


def _human(size: int) -> str:
    """Bytes as INFO's ``used_memory_human`` writes them (``"1.05M"``)."""
    value = float(size)
    for unit in ("B", "K", "M", "G"):
        if value < 1024 or unit == "G":
            return f"{int(value)}B" if unit == "B" else f"{value:.2f}{unit}"
        value /= 1024
    return f"{value:.2f}G"  # pragma: no cover


def _node_figures() -> Plan:
    """INFO memory, INFO stats and DBSIZE of every primary (one server: one row)."""
    memory = yield EachNode(("INFO", "memory"))
    stats = dict((yield EachNode(("INFO", "stats"))))
    sizes = dict((yield EachNode(("DBSIZE",))))
    rows = []
    for node, info in memory:
        figures = stats.get(node, {})
        rows.append(
            NodeStats(
                node=node,
                memory_used_bytes=_int(info, "used_memory"),
                keys=int(sizes.get(node, 0)),
                evicted_keys=_int(figures, "evicted_keys"),
                expired_keys=_int(figures, "expired_keys"),
                keyspace_hits=_int(figures, "keyspace_hits"),
                keyspace_misses=_int(figures, "keyspace_misses"),
            )
        )
    return tuple(rows)


def stats_plan(
    counters: Counters,
    keys: KeySpace,
    clock: Callable[[], float] = time.time,
    *,
    minutes: int | None = None,
    history: int = 0,
    sample: int = 10_000,
) -> Plan:
    """Flush this process's counts, then read the totals (or the last *minutes* minute
    buckets), the server's INFO and DBSIZE, optionally *history* minutes of buckets and a
    key sample. Redis being unavailable raises :class:`~hitrate.CacheUnavailableError`:
    there is nothing to fall back on."""
    if minutes is not None and minutes < 1:
        raise ValueError("minutes must be at least 1 (or None for the totals)")
    yield from flush_plan(counters, keys.prefix, clock)  # counts it could not write stay
    now = clock()
    this_minute = int(now // 60)
    span = max(history, minutes or 0)
    window = [this_minute - i for i in range(span - 1, -1, -1)]
    # INFO comes first, and MEMORY USAGE (neither a keyspace hit nor a miss) says which
    # stats hashes exist: a minute without traffic has no hash, and an HGETALL of it
    # would add a keyspace miss to the very figures this reading shows.
    hashes = [totals_key(keys.prefix)] + [minute_key(keys.prefix, m) for m in window]
    nodes = yield from _node_figures()
    dbsize = sum(n.keys for n in nodes)
    sizes = yield Batch([("MEMORY", "USAGE", name) for name in hashes])
    present = [name for name, size in zip(hashes, sizes, strict=True) if size is not None]
    replies = (yield Batch([("HGETALL", name) for name in present])) if present else []
    found = dict(zip(present, replies, strict=True))
    totals, *buckets = [found.get(name, {}) for name in hashes]
    per_minute = [parse_counts(b) for b in buckets]
    if minutes is None:
        counts = parse_counts(totals)
    else:
        counts = _merge(per_minute[len(per_minute) - minutes :])
    key_sample = (yield from sample_plan(keys, sample, int(dbsize))) if sample > 0 else None
    past = None
    if history:
        recent = per_minute[len(per_minute) - history :]
        seen = sorted({name for part in recent for name in part})
        past = History(
            tuple(window[len(window) - history :]),
            {n: tuple(part.get(n, FamilyCounts()) for part in recent) for n in seen},
        )
    names = set(counts) | (set(key_sample.keys) if key_sample else set())
    rows = [_family_row(name, counts.get(name, FamilyCounts()), key_sample) for name in names]
    rows.sort(key=lambda r: (-(r.hits + r.misses), r.family))
    return Stats(
        prefix=keys.prefix,
        hits=sum(r.hits for r in rows),
        misses=sum(r.misses for r in rows),
        memory_used=_human(sum(n.memory_used_bytes for n in nodes)),
        memory_used_bytes=sum(n.memory_used_bytes for n in nodes),
        keys=dbsize,
        evicted_keys=sum(n.evicted_keys for n in nodes),
        expired_keys=sum(n.expired_keys for n in nodes),
        keyspace_hits=sum(n.keyspace_hits for n in nodes),
        keyspace_misses=sum(n.keyspace_misses for n in nodes),
        nodes=nodes,
        families=tuple(rows),
        minutes=minutes,
        sample=key_sample,
        history=past,
        taken_at=now,
    )


def _family_row(name: str, c: FamilyCounts, key_sample: KeySample | None) -> FamilyStats:
    return FamilyStats(
        family=name,
        hits=c.hits,
        misses=c.misses,
        stale_hits=c.stale_hits,
        negative_hits=c.negative_hits,
        loads=c.loads,
        fills=c.fills,
        fills_refused=c.fills_refused,
        waits=c.waits,
        invalidations=c.invalidations,
        errors=c.errors,
        fail_open=c.fail_open,
        decode_errors=c.decode_errors,
        near_hits=c.near_hits,
        load_seconds=c.load_seconds,
        load_p50=quantile(c.load_buckets, 0.5),
        load_p99=quantile(c.load_buckets, 0.99),
        load_buckets=tuple(c.load_buckets),
        keys=key_sample.keys.get(name, 0) if key_sample is not None else None,
        memory_bytes=key_sample.memory_bytes.get(name, 0) if key_sample is not None else None,
    )
