"""Reproducers for defects found by the fault probe (issue 12, defects 2, 3 and 7). Each
failed on the code it was written against and passes since the fix landed."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator

import pytest

from hitrate import Breaker, Cache

from .faultservers import FLAVOUR, Managed

pytestmark = pytest.mark.skipif(not FLAVOUR, reason="no redis-server or valkey-server")


@pytest.fixture
def srv() -> Iterator[Managed]:
    server = Managed.start()
    yield server
    server.stop()


def test_a_fill_skipped_by_an_opened_breaker_gives_its_lease_back(srv: Managed) -> None:
    """Defect 2 (one of its paths): the breaker opens while a caller loads, so its fill is
    skipped; the lease must not stay behind for the lease time. It is owed, and given back
    by the first call (or the timer) once the breaker lets Redis be tried again."""
    breaker = Breaker(2, cooldown=0.2)
    cache = Cache.from_url(srv.url, prefix="d2", breaker=breaker, flush_interval=0)

    def load() -> str:
        breaker.failure("injected")
        breaker.failure("injected")  # open now: the fill that follows is skipped
        return "v"

    assert cache.get_or_fetch("item:1", load) == "v"
    time.sleep(0.25)  # the cooldown: the next call probes, Redis answers, the breaker closes
    t0 = time.monotonic()
    assert cache.get_or_fetch("item:1", lambda: "w") in ("v", "w")
    waited = time.monotonic() - t0
    with srv.admin() as admin:
        lease_left = admin.exists(cache.redis_key("item:1") + ":lease")
    cache.close()
    print(
        f"\n[fault figures] after a skipped fill: next call {waited:.2f}s, lease left {lease_left}"
    )
    assert waited < 1.0 and lease_left == 0


def test_tag_invalidation_is_exact_under_allkeys_lru() -> None:
    server = Managed.start(extra_args=("--maxmemory", "3mb", "--maxmemory-policy", "allkeys-lru"))
    try:
        cache = Cache.from_url(server.url, prefix="d3", flush_interval=0)
        pad = secrets.token_urlsafe(1100)  # what zstd cannot shrink keeps the pressure on
        for n in range(4000):
            cache.get_or_fetch(f"item:{n}", lambda n=n: [n, pad], tags=[f"t{n % 500}"])
        for t in range(500):
            cache.invalidate_tag(f"t{t}")
        served = sum(
            1 for n in range(4000) if cache.get(f"item:{n}") is not None
        )  # every one was tagged and its tag invalidated
        print(f"\n[fault figures] allkeys-lru: {served} tagged entries served after invalidate_tag")
        cache.close()
        assert served == 0
    finally:
        server.stop()


def test_owed_invalidation_is_delivered_without_another_call(srv: Managed) -> None:
    """Defect 7: with counting off, nothing but a later call delivered what was owed."""
    cache = Cache.from_url(srv.url, prefix="d7", count=False, breaker=Breaker(2, 0.2), timeout=0.1)
    cache.set("item:1", "old")
    rkey = cache.redis_key("item:1")
    with srv.admin() as admin:
        admin.save()
    assert srv.proc is not None
    srv.proc.terminate()
    srv.proc.wait(10)
    cache.invalidate("item:1")  # refused: owed
    srv.start_again()  # from the snapshot: the old value is back
    deadline = time.monotonic() + 3
    with srv.admin() as admin:
        while time.monotonic() < deadline and admin.exists(rkey):
            time.sleep(0.05)
        left = admin.exists(rkey)
    cache.close()
    assert left == 0


def test_a_refused_owed_invalidation_is_not_retried_forever(srv: Managed) -> None:
    """Defect 7's other half: a pattern invalidation refused by an ACL (NOPERM on SCAN)
    must not stay owed and be tried again before every command (it is said once instead:
    test_faults_auth.py)."""
    with srv.admin() as admin:
        admin.acl_setuser("noscan", enabled=True, passwords=["+pw"], keys=["*"],
                          commands=["+@all", "-scan"])  # fmt: skip
    url = f"redis://noscan:pw@127.0.0.1:{srv.port}/0"
    cache = Cache.from_url(url, prefix="d7", flush_interval=0)
    cache.invalidate_pattern("item:*")
    for n in range(20):
        cache.get_or_fetch(f"item:{n}", lambda: "v")
    owed = len(cache._ctx.owed)
    cache.close()
    assert owed == 0
