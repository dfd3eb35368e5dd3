"""Waiters woken by the fill: a caller waiting on another process's lease marks the key
(poll.lua), the fill or the release publishes it (fill.lua, release.lua), and the waiter's
listener wakes it instead of letting it sleep out its poll interval. How much sooner is
measured by benchmarks/wake.py; here, that the wake-up happens and changes nothing else."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
import redis

from hitrate import AsyncCache, Cache, LoaderError
from hitrate.listener import Waiter


def holder(cache: Cache, key: str, value: Any, seconds: float = 0.3) -> threading.Thread:
    """Another process holding the lease of *key* while its loader runs *seconds*."""

    def load() -> Any:
        time.sleep(seconds)
        if isinstance(value, Exception):
            raise value
        return value

    def run() -> None:
        try:
            cache.get_or_fetch(key, load)
        except Exception:  # shown to the waiter; not this thread's business
            pass

    thread = threading.Thread(target=run)
    thread.start()
    lease = cache.keyspace.entry(key) + ":lease"
    for _ in range(200):
        if cache.client.exists(lease):
            return thread
        time.sleep(0.005)
    pytest.fail("the holder never took the lease")


class Published:
    """What is published on a prefix's wake channel (a plain subscriber)."""

    def __init__(self, url: str, prefix: str) -> None:
        self.client = redis.Redis.from_url(url)
        self.pubsub = self.client.pubsub()
        self.pubsub.subscribe(prefix + ":~wake")
        assert self.pubsub.get_message(timeout=2.0) is not None  # the subscription

    def keys(self) -> list[bytes]:
        found = []
        while (message := self.pubsub.get_message(timeout=0.2)) is not None:
            found.append(message["data"])
        self.pubsub.close()
        self.client.close()
        return found


def test_the_fill_of_an_awaited_key_is_published(url: str, prefix: str) -> None:
    other = Cache.from_url(url, prefix=prefix, wake=False)
    cache = Cache.from_url(url, prefix=prefix)
    published = Published(url, prefix)
    loads = []
    thread = holder(other, "user:1", "theirs")
    assert cache.get_or_fetch("user:1", lambda: loads.append(1)) == "theirs"
    thread.join()
    assert not loads  # single flight across processes, as before
    rkey = cache.keyspace.entry("user:1")
    assert published.keys() == [rkey.encode()]  # the waiter marked it: the fill published it
    assert not cache.client.exists(rkey + ":wait")  # the mark is gone with the fill
    assert cache.counters.snapshot()["user"].waits == 1
    # Nobody waits: a fill publishes nothing.
    cache.invalidate("user:1")
    published = Published(url, prefix)
    assert other.get_or_fetch("user:1", lambda: "alone") == "alone"
    assert published.keys() == []
    other.close()
    cache.close()


def test_a_failed_load_of_an_awaited_key_is_published(url: str, prefix: str) -> None:
    other = Cache.from_url(url, prefix=prefix, wake=False)
    cache = Cache.from_url(url, prefix=prefix)
    published = Published(url, prefix)
    thread = holder(other, "user:2", RuntimeError("db down"))
    with pytest.raises(LoaderError, match="db down"):
        cache.get_or_fetch("user:2", lambda: "mine")
    thread.join()
    assert published.keys() == [cache.keyspace.entry("user:2").encode()]  # release.lua
    other.close()
    cache.close()


def test_the_listener_wakes_the_waiters_of_a_published_key(url: str, prefix: str) -> None:
    cache = Cache.from_url(url, prefix=prefix)
    listener = cache._listener
    assert listener is not None and listener.wait_live(5.0)
    rkey = cache.keyspace.entry("user:1")
    waiter, bystander = Waiter(rkey, threading.Event()), Waiter(rkey + "x", threading.Event())
    listener.register(waiter)
    listener.register(bystander)
    cache.client.publish(prefix + ":~wake", rkey)
    assert waiter.done.wait(5.0) and not bystander.done.is_set()
    assert listener.woken == 1
    cache.close()


async def test_async_waiters_are_woken_through_their_loop(url: str, prefix: str) -> None:
    cache = AsyncCache.from_url(url, prefix=prefix)
    listener = cache._listener
    assert listener is not None and await asyncio.to_thread(listener.wait_live, 5.0)
    rkey = cache.keyspace.entry("user:3")
    waiter = Waiter(rkey, asyncio.Event(), asyncio.get_running_loop())
    listener.register(waiter)
    await cache.client.publish(prefix + ":~wake", rkey)
    await asyncio.wait_for(waiter.done.wait(), 5.0)
    # And a real wait: another process's fill ends it (woken, or by a poll if it won).
    other = Cache.from_url(url, prefix=prefix, wake=False)
    thread = await asyncio.to_thread(holder, other, "user:4", "theirs")
    assert await cache.get_or_fetch("user:4", lambda: "mine") == "theirs"
    await asyncio.to_thread(thread.join)
    other.close()
    await cache.close()


def test_without_listener_waiters_poll(url: str, prefix: str) -> None:
    """wake=False, or an injected sleep (a fake clock): no listener; waiting works as before."""
    other = Cache.from_url(url, prefix=prefix, wake=False)
    polling = Cache.from_url(url, prefix=prefix, wake=False)
    assert polling._listener is None and polling._driver.listener is None
    faked = Cache.from_url(url, prefix=prefix, sleep=time.sleep)
    assert faked._driver.listener is None
    thread = holder(other, "user:4", "theirs", 0.1)
    assert polling.get_or_fetch("user:4", lambda: "mine") == "theirs"
    thread.join()
    for c in (other, polling, faked):
        c.close()


def test_listener_is_started_on_the_first_wait(url: str, prefix: str) -> None:
    cache = Cache.from_url(url, prefix=prefix)
    listener = cache._listener
    assert listener is not None and not listener.live and listener._thread is None
    admin = redis.Redis.from_url(url)
    before = admin.pubsub_numsub(prefix + ":~wake")[0][1]
    other = Cache.from_url(url, prefix=prefix, wake=False)
    thread = holder(other, "user:5", "theirs", 0.3)
    assert cache.get_or_fetch("user:5", lambda: "mine") == "theirs"
    thread.join()
    assert listener.wait_live(5.0)
    assert admin.pubsub_numsub(prefix + ":~wake")[0][1] == before + 1
    admin.close()
    other.close()
    cache.close()
