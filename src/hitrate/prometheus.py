"""Prometheus metrics (``pip install 'hitrate[prometheus]'``), two ways.

**Per process**, with ``prometheus_client``'s usual registry (and its multiprocess mode)::

    from hitrate.prometheus import instrument
    instrument(cache)        # then expose the registry as you already do (start_http_server,
                             # make_asgi_app, or multiprocess.MultiProcessCollector)

**For the whole cache** (every process and host, from the counts flushed to Redis): the
dashboard's ``/metrics`` (``hitrate dashboard``), or :class:`StatsCollector` on a
:class:`~hitrate.stats.Stats`. Scrape one or the other, not both, or sums count twice.

Metrics (labels never contain a key, only its family; past :data:`MAX_FAMILIES` families
the rest are labelled ``family="other"``)::

    hitrate_cache_gets_total{family, result="hit|miss|stale|negative"}   (disjoint: sum = reads)
    hitrate_cache_loads_total{family}
    hitrate_cache_load_duration_seconds{family}                           histogram
    hitrate_cache_invalidations_total{family}
    hitrate_cache_errors_total{family, kind="redis|decode"}
    hitrate_cache_fail_open_total{family}

The hot path is untouched: hit and miss counts are copied from the cache's counters into
``prometheus_client`` counters when the cache flushes (every ``flush_interval`` seconds, on
``close()`` and at exit) and before each scrape of the registry they were made in. Loads
are observed as they happen (they are misses: a database call is being paid anyway).
In multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``) every process writes its own files and
``MultiProcessCollector`` adds them up, as for any ``prometheus_client`` counter.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

from ._extras import missing_extra

try:
    from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )
    from prometheus_client.registry import Collector
except ImportError as exc:
    raise missing_extra("hitrate.prometheus", "prometheus-client", "prometheus", exc) from exc

from .counting import LOAD_BUCKETS, Counters, FamilyCounts
from .stats import Stats

__all__ = ["MAX_FAMILIES", "CacheMetrics", "StatsCollector", "instrument"]

MAX_FAMILIES = 100
RESULTS = ("hit", "miss", "stale", "negative")


def _results(c: FamilyCounts | Any) -> dict[str, int]:
    """Disjoint read outcomes: ``hits`` counts stale and negative hits too."""
    return {
        "hit": max(0, c.hits - c.stale_hits - c.negative_hits),
        "miss": c.misses,
        "stale": c.stale_hits,
        "negative": c.negative_hits,
    }


class _Families:
    """Bounded family labels: the first MAX_FAMILIES names, then "other"."""

    def __init__(self) -> None:
        self._known: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, family: str) -> str:
        if family in self._known:
            return family
        with self._lock:
            if len(self._known) < MAX_FAMILIES:
                self._known.add(family)
                return family
        return "other"


class CacheMetrics:
    """The ``prometheus_client`` metrics of one registry, fed by one or more caches."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._sources: list[_Source] = []
        self._lock = threading.Lock()
        self.label = _Families()
        registry.register(_SyncOnCollect(self))  # first, so a scrape sees fresh counts
        self.gets = Counter(
            "hitrate_cache_gets",
            "Cache reads by key family and result (hit, miss, stale, negative).",
            ["family", "result"],
            registry=registry,
        )
        self.loads = Counter(
            "hitrate_cache_loads", "Loader calls by key family.", ["family"], registry=registry
        )
        self.load_duration = Histogram(
            "hitrate_cache_load_duration_seconds",
            "Loader call duration by key family.",
            ["family"],
            buckets=(*LOAD_BUCKETS, float("inf")),
            registry=registry,
        )
        self.invalidations = Counter(
            "hitrate_cache_invalidations",
            "Entries invalidated by key family.",
            ["family"],
            registry=registry,
        )
        self.errors = Counter(
            "hitrate_cache_errors",
            "Redis errors (kind=redis) and undecodable entries (kind=decode) by key family.",
            ["family", "kind"],
            registry=registry,
        )
        self.fail_open = Counter(
            "hitrate_cache_fail_open",
            "Operations served without Redis (fail-open) by key family.",
            ["family"],
            registry=registry,
        )

    def observe_load(self, family: str, seconds: float) -> None:
        label = self.label(family)
        self.loads.labels(label).inc()
        self.load_duration.labels(label).observe(seconds)

    def add(self, source: _Source) -> None:
        with self._lock:
            self._sources.append(source)

    def sync(self) -> None:
        """Copy what every instrumented cache counted since the last sync."""
        with self._lock:
            sources = list(self._sources)
        for source in sources:
            source.sync(self)


class _Source:
    """One cache's counters and what of them was already copied to Prometheus."""

    def __init__(self, counters: Counters) -> None:
        self.counters = counters
        self.copied: dict[str, FamilyCounts] = {}
        self.lock = threading.Lock()

    def sync(self, metrics: CacheMetrics) -> None:
        with self.lock:
            for family, now in self.counters.snapshot().items():
                before = self.copied.get(family, FamilyCounts())
                self.copied[family] = now
                label = metrics.label(family)
                old = _results(before)
                for result, n in _results(now).items():
                    child = metrics.gets.labels(label, result)  # zeros show up too
                    if n > old[result]:
                        child.inc(n - old[result])
                for counter, metric, extra in (
                    ("invalidations", metrics.invalidations, ()),
                    ("errors", metrics.errors, ("redis",)),
                    ("decode_errors", metrics.errors, ("decode",)),
                    ("fail_open", metrics.fail_open, ()),
                ):
                    n = getattr(now, counter) - getattr(before, counter)
                    if n > 0:
                        metric.labels(label, *extra).inc(n)


class _SyncOnCollect(Collector):
    def __init__(self, metrics: CacheMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        self.metrics.sync()
        return iter(())


_by_registry: dict[int, CacheMetrics] = {}
_registry_lock = threading.Lock()


def instrument(cache: Any, registry: CollectorRegistry | None = None) -> CacheMetrics:
    """Export *cache*'s counts (a :class:`~hitrate.Cache` or :class:`~hitrate.AsyncCache`)
    as the metrics above in *registry* (default: ``prometheus_client.REGISTRY``). Several
    caches may share a registry; their counts add up per family."""
    registry = REGISTRY if registry is None else registry
    with _registry_lock:
        metrics = _by_registry.get(id(registry))
        if metrics is None:
            metrics = _by_registry[id(registry)] = CacheMetrics(registry)
    counters: Counters = cache.counters
    source = _Source(counters)
    metrics.add(source)
    counters.observers.append(metrics.observe_load)
    flusher = getattr(cache, "_flusher", None)
    if flusher is not None:
        flusher.hooks.append(lambda: source.sync(metrics))
    return metrics


class StatsCollector(Collector):
    """The same metric names for a whole cache, from :meth:`~hitrate.Cache.stats` (counts
    flushed by every process), plus the server's figures. *source* returns the Stats to
    export at each scrape::

        registry.register(StatsCollector(lambda: cache.stats(sample=0)))
    """

    def __init__(self, source: Callable[[], Stats]) -> None:
        self.source = source

    def describe(self) -> Iterator[Metric]:
        return iter(())  # registering it must not read Redis

    def collect(self) -> Iterator[Metric]:
        stats = self.source()
        gets = CounterMetricFamily(
            "hitrate_cache_gets",
            "Cache reads by key family and result.",
            labels=["family", "result"],
        )
        loads = CounterMetricFamily("hitrate_cache_loads", "Loader calls.", labels=["family"])
        duration = HistogramMetricFamily(
            "hitrate_cache_load_duration_seconds", "Loader call duration.", labels=["family"]
        )
        invalidations = CounterMetricFamily(
            "hitrate_cache_invalidations", "Entries invalidated.", labels=["family"]
        )
        errors = CounterMetricFamily(
            "hitrate_cache_errors", "Redis and decode errors.", labels=["family", "kind"]
        )
        fail_open = CounterMetricFamily(
            "hitrate_cache_fail_open", "Operations served without Redis.", labels=["family"]
        )
        ratio = GaugeMetricFamily(
            "hitrate_cache_hit_ratio", "Hits over reads, 0..1.", labels=["family"]
        )
        family_keys = GaugeMetricFamily(
            "hitrate_cache_keys", "Entries per family (estimated by SCAN).", labels=["family"]
        )
        family_memory = GaugeMetricFamily(
            "hitrate_cache_memory_bytes", "Memory per family (estimated).", labels=["family"]
        )
        label = _Families()
        for row in stats.families:
            family = label(row.family)
            for result, n in _results(row).items():
                gets.add_metric([family, result], n)
            loads.add_metric([family], row.loads)
            if row.load_buckets:
                cumulative, buckets = 0, []
                for bound, n in zip((*LOAD_BUCKETS, float("inf")), row.load_buckets, strict=True):
                    cumulative += n
                    buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
                duration.add_metric([family], buckets, row.load_seconds)
            invalidations.add_metric([family], row.invalidations)
            errors.add_metric([family, "redis"], row.errors)
            errors.add_metric([family, "decode"], row.decode_errors)
            fail_open.add_metric([family], row.fail_open)
            if row.hits + row.misses:
                ratio.add_metric([family], row.hit_rate / 100.0)
            if row.keys is not None:
                family_keys.add_metric([family], row.keys)
            if row.memory_bytes is not None:
                family_memory.add_metric([family], row.memory_bytes)
        yield from (gets, loads, duration, invalidations, errors, fail_open, ratio)
        yield from (family_keys, family_memory)
        for name, doc, value in (
            ("hitrate_redis_used_memory_bytes", "Server memory (INFO used_memory).",
             stats.memory_used_bytes),
            ("hitrate_redis_keys", "Keys in the database (DBSIZE).", stats.keys),
        ):  # fmt: skip
            yield GaugeMetricFamily(name, doc, value=value)
        for name, doc, value in (
            ("hitrate_redis_evicted_keys", "Keys evicted by the server.", stats.evicted_keys),
            ("hitrate_redis_expired_keys", "Keys expired by the server.", stats.expired_keys),
            ("hitrate_redis_keyspace_hits", "Server-wide keyspace hits.", stats.keyspace_hits),
            ("hitrate_redis_keyspace_misses", "Server-wide misses.", stats.keyspace_misses),
        ):
            yield CounterMetricFamily(name, doc, value=value)
