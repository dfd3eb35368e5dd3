"""Work owed to Redis after a failure: fill leases that could not be given back are
released when Redis answers again (no caller elsewhere waits out the lease time; the
releases never hold a call up, a timer sends them), owed work
that Redis refuses is dropped and logged (not retried after every call), and a timer
delivers the queue even when this process makes no further call and counts nothing."""

from __future__ import annotations

import logging
import threading
import time

import pytest
import redis

from hitrate import Cache, Policy

LEASE = Policy(60, lease=10.0)  # long leases: a stuck one would show


def _raw(url: str) -> redis.Redis:
    return redis.Redis.from_url(url)


def _open(cache: Cache) -> None:
    for _ in range(cache.breaker.threshold):
        cache.breaker.failure("test: Redis is down for this process")


def _wait_until(check: object, within: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < within:
        if check():  # type: ignore[operator]
            return time.monotonic() - start
        time.sleep(0.02)
    raise AssertionError(f"not within {within} s")


def test_a_lease_whose_fill_was_skipped_by_the_breaker_is_given_back(url: str, prefix: str) -> None:
    """The holder's breaker opened while it loaded, so its fill was skipped: the lease is
    owed and released when the breaker lets a probe through, and a caller in another
    process loads after about the breaker's cooldown, not after the 10 s lease time."""
    holder = Cache.from_url(url, prefix=prefix, count=False)
    other = Cache.from_url(url, prefix=prefix)
    raw = _raw(url)
    lease_key = holder._ctx.keys.entry("user:1") + ":lease"

    def load() -> str:
        _open(holder)  # an outage as this process saw it; Redis itself is fine
        return "v"

    assert holder.get_or_fetch("user:1", load, ttl=LEASE) == "v"
    assert raw.exists(lease_key)  # the fill was skipped: the lease is still there...
    assert holder.health().owed == 1  # ...and owed back
    started = time.monotonic()
    assert other.get_or_fetch("user:1", lambda: "other's", ttl=LEASE) == "other's"
    waited = time.monotonic() - started
    assert waited < 5.0, f"waited {waited:.2f} s for a lease nobody would fill"
    assert not raw.exists(lease_key)
    assert holder.health().owed == 0
    print(f"caller elsewhere waited {waited:.2f} s (lease time 10 s, cooldown 1 s)")
    raw.close()
    other.close()
    holder.close()


def test_a_lease_whose_fill_found_the_pool_exhausted_is_given_back(url: str, prefix: str) -> None:
    holder = Cache.from_url(url, prefix=prefix, max_connections=1, pool_timeout=0.05)
    raw = _raw(url)
    lease_key = holder._ctx.keys.entry("user:2") + ":lease"
    pool = holder.client.connection_pool
    taken: list[object] = []

    def load() -> str:
        taken.append(pool.get_connection())  # the program is busier than its pool
        return "v"

    assert holder.get_or_fetch("user:2", load, ttl=LEASE) == "v"
    assert raw.exists(lease_key)
    assert not holder.breaker.is_open  # a busy pool is not an outage
    pool.release(taken.pop())
    waited = _wait_until(lambda: not raw.exists(lease_key), within=3.0)
    print(f"lease given back {waited:.2f} s after a connection was free")
    raw.close()
    holder.close()


def test_owed_work_that_redis_refuses_is_dropped_not_retried(
    url: str, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    cache = Cache.from_url(url, prefix=prefix)
    raw = _raw(url)
    cache.set("page:1", "cached")
    raw.set(f"{prefix}:~tag:{{t}}", "a string where a set belongs")  # another program's
    _open(cache)
    assert cache.invalidate_tag("t") == 0  # owed
    assert cache.health().owed == 1
    cache.breaker.success()  # Redis is back
    with caplog.at_level(logging.WARNING, logger="hitrate"):
        assert cache.get("page:1") == "cached"  # served, not failed open by the owed work
        assert cache.get("page:1") == "cached"
    assert cache.health().owed == 0
    dropped = [r for r in caplog.records if "dropped owed" in r.getMessage()]
    assert len(dropped) == 1 and "WRONGTYPE" in dropped[0].getMessage()
    raw.delete(f"{prefix}:~tag:{{t}}")
    raw.close()
    cache.close()


def test_owed_invalidations_are_delivered_without_another_call(url: str, prefix: str) -> None:
    """A cache that counts nothing and makes no further call still delivers what it owes
    once Redis answers: another process stops seeing the old value."""
    writer = Cache.from_url(url, prefix=prefix, count=False, flush_interval=0)
    reader = Cache.from_url(url, prefix=prefix)
    writer.set("user:3", "old")
    _open(writer)
    assert writer.invalidate("user:3") == 0  # owed
    assert reader.get("user:3") == "old"
    # No call is made on the writer from here on: its timer probes after the cooldown.
    waited = _wait_until(lambda: reader.get("user:3") is None, within=5.0)
    print(f"owed invalidation delivered {waited:.2f} s after the outage (cooldown 1 s)")
    reader.close()
    writer.close()


def test_a_release_interrupted_twice_is_owed(url: str, prefix: str) -> None:
    """A loader interrupted while its lease release is being sent: the release is owed,
    not lost, and the next call gives it back."""
    cache = Cache.from_url(url, prefix=prefix)
    raw = _raw(url)
    lease_key = cache._ctx.keys.entry("user:4") + ":lease"
    driver = cache._driver
    real_send = driver._send
    armed = threading.Event()

    def send(op: object) -> object:
        if armed.is_set() and "release" in repr(getattr(op, "script", "")):
            armed.clear()
            raise KeyboardInterrupt  # the second interruption, during the release
        return real_send(op)

    driver._send = send  # type: ignore[method-assign]

    def load() -> str:
        armed.set()
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cache.get_or_fetch("user:4", load, ttl=LEASE)
    assert raw.exists(lease_key)
    assert cache.health().owed == 1
    driver._send = real_send  # type: ignore[method-assign]
    assert cache.get("user:4") is None  # calls are not held up by owed lease releases...
    _wait_until(lambda: not raw.exists(lease_key), within=3.0)  # ...the timer gives it back
    raw.close()
    cache.close()


def test_a_forked_child_is_not_locked_out_by_a_delivery_in_the_parent(
    url: str, prefix: str
) -> None:
    import os

    cache = Cache.from_url(url, prefix=prefix)
    assert cache._ctx.owed.claim()  # a delivery in progress in this process at fork time
    cache._ctx.owed.lease(cache._ctx.keys.entry("user:9"), "some-token")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its calls use Redis (after delivering what is owed)
        ok = cache.set("user:9", "child") and cache.get("user:9") == "child"
        os.write(write, b"ok" if ok else b"locked out")
        os._exit(0)
    os.close(write)
    answer = os.read(read, 100)
    os.waitpid(pid, 0)
    cache._ctx.owed.release()
    assert answer == b"ok"
    cache.close()


def test_a_collected_cache_still_delivers_what_it_owes(url: str, prefix: str) -> None:
    import gc

    reader = Cache.from_url(url, prefix=prefix)
    writer = Cache.from_url(url, prefix=prefix, count=False)
    writer.set("user:5", "old")
    _open(writer)
    writer.invalidate("user:5")  # owed while "Redis is down"
    del writer
    gc.collect()
    _wait_until(lambda: reader.get("user:5") is None, within=5.0)
    reader.close()
