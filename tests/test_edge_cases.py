"""Edge cases found in review: argument hashing that keeps types apart, keys that cannot be
stored, waiters bounded by the lease time, cancelled loaders, an interrupted breaker probe."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import time
from typing import Any

import pytest

from hitrate import AsyncCache, Breaker, Cache, InvalidKeyError, Policy
from hitrate.arghash import key_builder


def describe(value: Any) -> str:
    return repr(value)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ({1: "a"}, {"1": "a"}),
        ((1, 2), [1, 2]),
        (dt.date(2020, 1, 1), "2020-01-01"),
        (1, 1.0),
        (1, True),
        (None, "None"),
        (b"x", "x"),
    ],
)
def test_hashed_keys_keep_types_apart(a: Any, b: Any) -> None:
    make = key_builder(describe, None)
    assert make(a) != make(b)
    assert make(a) == make(a)


@pytest.mark.parametrize("key", [["a"], {"a": 1}, "\ud800", b"user:1", 42])
def test_unstorable_keys_raise_invalid_key_error(cache: Cache, key: Any) -> None:
    with pytest.raises(InvalidKeyError):
        cache.get(key)
    with pytest.raises(InvalidKeyError):
        cache.set(key, 1)
    with pytest.raises(InvalidKeyError):
        cache.get_or_fetch(key, lambda: 1)


def test_waiters_in_the_same_process_wait_at_most_the_lease_time(cache: Cache) -> None:
    policy = Policy(60, lease=0.5)
    started = threading.Event()

    def slow() -> str:
        started.set()
        time.sleep(3)
        return "slow"

    leader = threading.Thread(target=lambda: cache.get_or_fetch("k:1", slow, ttl=policy))
    leader.start()
    started.wait(5)
    t0 = time.monotonic()
    assert cache.get_or_fetch("k:1", lambda: "mine", ttl=policy) == "mine"
    waited = time.monotonic() - t0
    leader.join()
    assert waited < 2.5  # bounded by the 0.5 s lease, not the 3 s loader


async def test_cancelled_async_loader_gives_its_lease_back(acache: AsyncCache) -> None:
    policy = Policy(60, lease=5)

    async def slow() -> str:
        await asyncio.sleep(10)
        return "slow"

    leader = asyncio.create_task(acache.get_or_fetch("k:2", slow, ttl=policy))
    await asyncio.sleep(0.1)
    waiter = asyncio.create_task(acache.get_or_fetch("k:2", lambda: "fast", ttl=policy))
    await asyncio.sleep(0.1)
    leader.cancel()
    t0 = time.monotonic()
    assert await waiter == "fast"
    assert time.monotonic() - t0 < 2.5  # not the 5 s lease
    with pytest.raises(asyncio.CancelledError):
        await leader


def test_interrupted_probe_does_not_keep_the_breaker_open() -> None:
    breaker = Breaker(threshold=1, cooldown=0.0)
    breaker.failure()
    assert breaker.allow()  # the probe
    assert not breaker.allow()  # one probe at a time
    breaker.abandon()  # the probe was interrupted (cancelled, or not a Redis error)
    assert breaker.allow()


def test_cached_methods_invalidate_through_the_instance(cache: Cache) -> None:
    calls: list[int] = []

    class Repo:
        @cache.cached(ttl=60)
        def find(self, x: int, y: int = 2) -> int:
            calls.append(x)
            return x + y

        @cache.cached(key="user:{user_id}")
        def user(self, user_id: int) -> dict[str, int]:
            calls.append(user_id)
            return {"id": user_id}

    r = Repo()
    assert r.find(1) == 3
    assert r.find(5) == 7
    assert r.find.key(5) == Repo.find.key(r, 5)
    assert r.find.invalidate(1) == 1  # deletes find(1), not find(5)
    assert r.find(5) == 7
    assert calls == [1, 5]
    assert r.user(9) == {"id": 9}
    assert r.user.invalidate(user_id=9) == 1
    assert r.user(9) == {"id": 9}
    assert calls == [1, 5, 9, 9]


async def test_cached_async_methods(acache: AsyncCache) -> None:
    class Repo:
        @acache.cached(key="item:{item_id}")
        async def item(self, item_id: int) -> int:
            return item_id * 10

    r = Repo()
    assert await r.item(4) == 40
    assert await r.item.invalidate(item_id=4) == 1
