"""Prometheus metrics: per process (also in multiprocess mode) and for the whole cache."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytest.importorskip("prometheus_client")

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from hitrate import Cache, Policy
from hitrate.prometheus import StatsCollector, instrument


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(registry).decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def gets(result: str, family: str = "user") -> tuple[str, tuple[tuple[str, str], ...]]:
    return ("hitrate_cache_gets_total", (("family", family), ("result", result)))


def test_instrumented_cache_exports_its_counts(cache: Cache) -> None:
    registry = CollectorRegistry()
    instrument(cache, registry)
    cache.set("user:1", {"id": 1})
    cache.set("user:none", None, ttl=hitrate_policy())
    for _ in range(3):
        cache.get("user:1")
    cache.get_or_fetch("user:none", lambda: None)  # a cached "not found": negative hit
    cache.get_or_fetch("user:2", lambda: time.sleep(0.002) or {"id": 2})
    cache.invalidate("user:1")
    found = samples(registry)  # collected without waiting for a flush
    assert found[gets("hit")] == 3
    assert found[gets("negative")] == 1
    assert found[gets("miss")] == 1
    assert found[gets("stale")] == 0
    assert found[("hitrate_cache_loads_total", (("family", "user"),))] == 1
    count = ("hitrate_cache_load_duration_seconds_count", (("family", "user"),))
    assert found[count] == 1
    le = ("hitrate_cache_load_duration_seconds_bucket", (("family", "user"), ("le", "0.001")))
    assert found[le] == 0  # the load slept 2 ms
    assert found[("hitrate_cache_invalidations_total", (("family", "user"),))] == 1
    text = generate_latest(registry).decode()
    assert "user:1" not in text and "user:2" not in text  # never a key as a label
    cache.get("user:2")
    assert samples(registry)[gets("hit")] == 4  # synced again at the next scrape


def hitrate_policy() -> Policy:
    return Policy(60, negative_ttl=60)


def test_multiprocess_mode_adds_up(url: str, prefix: str, tmp_path: Path) -> None:
    child = textwrap.dedent(
        """
        import sys
        from hitrate import Cache, Policy
        from hitrate.prometheus import instrument
        url, prefix, n = sys.argv[1:]
        cache = Cache.from_url(url, prefix=prefix, flush_interval=0)
        instrument(cache)                 # the default registry, in multiprocess mode
        cache.set("user:1", 1)
        for _ in range(4):
            cache.get("user:1")
        cache.get_or_fetch(f"user:load:{n}", lambda: 2)
        cache.close()                     # the last flush also syncs the metrics
        """
    )
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", child, url, prefix, str(n)], env={**os.environ, **env}
        )
        for n in range(2)
    ]
    assert [p.wait(30) for p in procs] == [0, 0]
    assert len(list(tmp_path.glob("counter_*.db"))) == 2  # one file per process
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(tmp_path))
    found = samples(registry)
    assert found[gets("hit")] == 8
    assert found[gets("miss")] == 2
    assert found[("hitrate_cache_load_duration_seconds_count", (("family", "user"),))] == 2


def test_stats_collector_exports_the_whole_cache(cache: Cache) -> None:
    cache.set("report:1", 1)
    for _ in range(3):
        cache.get("report:1")
    cache.get("report:2")
    registry = CollectorRegistry()
    registry.register(StatsCollector(cache.stats))
    found = samples(registry)
    assert found[gets("hit", "report")] == 3
    assert found[gets("miss", "report")] == 1
    assert found[("hitrate_cache_hit_ratio", (("family", "report"),))] == 0.75
    assert found[("hitrate_cache_keys", (("family", "report"),))] == 1
    assert found[("hitrate_redis_used_memory_bytes", ())] > 0
