"""Memory pressure: a private server with a small ``maxmemory`` under ``allkeys-lru``,
``volatile-lru`` and ``noeviction``, filled well past it by many threads.

* no error reaches a caller (evictions are misses; OOM refusals fail open);
* pattern invalidation stays exact: every key of the tenant is gone, not one key of the
  other tenant is touched;
* under ``noeviction`` the refused writes are logged at WARNING (naming OOM and the fix)
  and counted as errors.

Tag invalidation under eviction is a known limit while tag sets are evictable (see
test_faults_defects.py).
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Iterator

import pytest

from hitrate import Breaker, Cache

from .faultservers import FLAVOUR, Managed

pytestmark = pytest.mark.skipif(not FLAVOUR, reason="no redis-server or valkey-server")

MAXMEMORY = 4 * 1024 * 1024
VALUE = secrets.token_urlsafe(1500)  # 2,000 characters zstd cannot shrink much
PER_THREAD = 400
THREADS = 8


@pytest.fixture(params=["allkeys-lru", "volatile-lru", "noeviction"])
def full(request: pytest.FixtureRequest) -> Iterator[tuple[str, Managed]]:
    server = Managed.start(
        extra_args=("--maxmemory", str(MAXMEMORY), "--maxmemory-policy", request.param)
    )
    yield request.param, server
    server.stop()


def keys_of(server: Managed, pattern: str) -> set[str]:
    """The entry keys matching *pattern* (sidecars such as leases come and go by TTL)."""
    with server.admin() as admin:
        found = {k.decode() for k in admin.scan_iter(match=pattern, count=1000)}
    return {k for k in found if k.endswith("}")}


def test_memory_pressure(full: tuple[str, Managed], caplog: pytest.LogCaptureFixture) -> None:
    policy, server = full
    caplog.set_level(logging.WARNING, "hitrate")
    # cooldown 0: the breaker (OOM is an outage) lets the next call probe at once, so
    # writes keep being tried and refused under noeviction
    cache = Cache.from_url(server.url, prefix="mem", breaker=Breaker(2, 0.0), flush_interval=0)
    leaked: list[BaseException] = []
    wrong = 0

    def writer(t: int) -> None:
        nonlocal wrong
        for n in range(PER_THREAD):
            tenant = "a" if n % 2 else "b"
            key = f"{tenant}:{t}:{n}"
            try:
                got = cache.get_or_fetch(key, lambda key=key: {"k": key, "v": VALUE})
                if got["k"] != key:
                    wrong += 1
            except Exception as exc:
                leaked.append(exc)

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(THREADS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    total = cache.counters.total()
    with server.admin() as admin:
        info = admin.info("stats")
        used = admin.info("memory")["used_memory"]
    a_before, b_before = keys_of(server, "mem:{a:*"), keys_of(server, "mem:{b:*")
    print(
        f"\n[fault figures] {policy}: {THREADS * PER_THREAD} fills of 2 kB into "
        f"{MAXMEMORY // 1024} kB: evicted {info['evicted_keys']}, used {used // 1024} kB, "
        f"errors {total.errors}, fail-open {total.fail_open}, "
        f"entries a={len(a_before)} b={len(b_before)}"
    )
    assert leaked == [] and wrong == 0
    if policy == "allkeys-lru":
        assert info["evicted_keys"] > 0
    if policy == "noeviction":
        assert total.errors > 0  # refused writes are counted ...
        said = [r.getMessage() for r in caplog.records if "out of memory" in r.getMessage()]
        assert said and "maxmemory" in said[0]  # ... and logged, naming the cause and fix
        with server.admin() as admin:  # make room, so the invalidation below can run
            admin.config_set("maxmemory", 0)
        cache.breaker.success()
    # Pattern invalidation is exact: all of tenant a, none of tenant b (the server may
    # still evict a few of b's entries meanwhile: it is full; those are counted by INFO).
    cache.invalidate_pattern("a:*")
    assert keys_of(server, "mem:{a:*") == set()
    b_after = keys_of(server, "mem:{b:*")
    with server.admin() as admin:
        evicted = admin.info("stats")["evicted_keys"] - info["evicted_keys"]
    assert b_after <= b_before
    assert len(b_before - b_after) <= evicted, "invalidating tenant a deleted entries of b"
    cache.close()
