"""Rate limiters (``cache.rate_limiter``) on real servers, sync and async, and their
precision under load: 2 processes x 16 threads hammering one identity for several windows."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any

import pytest
import redis

import hitrate
from hitrate import Cache, Decision

from .structs import Caches, keys_under

pytest_plugins = ["tests.structs_plugin"]  # fixtures: c (sync and async), raw, dead_url

ALGORITHMS = ["fixed_window", "sliding_window", "gcra"]


async def test_fixed_window(c: Caches, raw: redis.Redis) -> None:
    api = c.rate_limiter("api", limit=3, per=60, algorithm="fixed_window")
    first = await api.hit("alice")
    seconds, micros = raw.time()
    window_left = 60 - (seconds + micros / 1e6) % 60  # aligned to the epoch, server clock
    assert first == Decision(True, 2, 0.0, first.reset_after)
    assert abs(first.reset_after - window_left) < 0.05
    assert [d.remaining for d in [await api.hit("alice"), await api.hit("alice")]] == [1, 0]
    denied = await api.hit("alice")
    assert not denied
    assert denied.remaining == 0
    assert 0 < denied.retry_after == denied.reset_after <= first.reset_after
    assert (await api.hit("bob")).allowed  # identities are independent
    assert (await api.peek("alice")).allowed is False
    assert await api.reset("alice") is True
    fresh = await api.peek("alice")
    assert (fresh.allowed, fresh.remaining, fresh.retry_after) == (True, 3, 0.0)


async def test_sliding_window_is_exact_and_tells_when_to_retry(c: Caches) -> None:
    api = c.rate_limiter("api", limit=3, per=0.6, algorithm="sliding_window")
    t0 = time.monotonic()
    assert (await api.hit("alice")).remaining == 2
    time.sleep(0.2)
    assert [(await api.hit("alice")).remaining for _ in range(2)] == [1, 0]
    denied = await api.hit("alice")
    assert not denied.allowed
    elapsed = time.monotonic() - t0
    # the first hit leaves the window 0.6 s after it was allowed
    assert 0.6 - elapsed - 0.05 <= denied.retry_after <= 0.6 - 0.2
    assert denied.reset_after >= 0.6 - 0.05  # the newest hit leaves last
    time.sleep(denied.retry_after + 0.01)  # the oldest hit has left the window
    assert (await api.hit("alice")).allowed
    assert not (await api.hit("alice")).allowed  # the other two are still in it


async def test_sliding_window_cost_and_peek(c: Caches) -> None:
    api = c.rate_limiter("api", limit=5, per=10, algorithm="sliding")
    assert (await api.hit("a", cost=3)).remaining == 2
    peek = await api.peek("a", cost=3)
    assert (peek.allowed, peek.remaining) == (False, 2)
    assert 9 < peek.retry_after <= 10
    last = await api.hit("a", cost=2)
    assert (last.allowed, last.remaining, last.retry_after) == (True, 0, 0.0)
    assert 9.9 < last.reset_after <= 10
    assert (await api.peek("a")).remaining == 0


async def test_gcra_bursts_then_spaces_requests(c: Caches) -> None:
    api = c.rate_limiter("api", limit=4, per=1, algorithm="gcra")
    burst = [await api.hit("alice") for _ in range(4)]
    assert [d.remaining for d in burst] == [3, 2, 1, 0]
    assert all(d.allowed for d in burst)
    assert 0.99 <= burst[-1].reset_after <= 1.0  # the bucket is full again in 1 s
    denied = await api.hit("alice")
    assert not denied.allowed
    assert 0.15 <= denied.retry_after <= 0.25  # one token every 0.25 s
    time.sleep(denied.retry_after + 0.01)
    assert (await api.hit("alice")).allowed
    assert not (await api.hit("alice")).allowed


async def test_gcra_burst_option(c: Caches) -> None:
    api = c.rate_limiter("smooth", limit=10, per=1, algorithm="gcra", burst=1)
    assert (await api.hit("x")).allowed
    denied = await api.hit("x")
    assert not denied.allowed
    assert 0.02 <= denied.retry_after <= 0.1
    with pytest.raises(hitrate.InvalidArgumentError, match="could never be allowed"):
        await api.hit("x", cost=2)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
async def test_denied_requests_use_nothing_and_peek_uses_nothing(c: Caches, algorithm: str) -> None:
    api = c.rate_limiter("api", limit=2, per=30, algorithm=algorithm)
    for _ in range(3):
        assert (await api.peek("a")).remaining == 2
    assert (await api.hit("a")).allowed
    assert (await api.hit("a")).allowed
    for _ in range(5):
        assert not (await api.hit("a")).allowed
    assert (await api.peek("a")).remaining == 0
    await api.reset("a")
    assert (await api.hit("a")).remaining == 1


@pytest.mark.parametrize("algorithm", ALGORITHMS)
async def test_state_always_has_an_expiry(c: Caches, raw: redis.Redis, algorithm: str) -> None:
    api = c.rate_limiter("api", limit=3, per=5, algorithm=algorithm)
    key = api.redis_key("alice")
    assert key.startswith(f"{c.prefix}:~rl:{{api:alice}}")
    for _ in range(5):  # allowed, then denied
        await api.hit("alice")
        assert 0 < raw.pttl(key) <= 5000
    await api.peek("nobody")
    assert raw.exists(api.redis_key("nobody")) == 0  # peek writes nothing


async def test_limiter_names_and_identities_cannot_collide(c: Caches) -> None:
    a = c.rate_limiter("a:b", limit=1, per=60)
    b = c.rate_limiter("a", limit=1, per=60)
    assert (await a.hit("c")).allowed
    assert (await b.hit("b:c")).allowed
    assert a.redis_key("c") != b.redis_key("b:c")
    assert (await a.hit(7)).allowed
    assert not (await a.hit("7")).allowed  # ints are identities by their text


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"limit": -1}, "limit must be a positive int"),
        ({"limit": 0}, "limit must be a positive int"),
        ({"limit": 2.5}, "limit must be a positive int"),
        ({"limit": True}, "limit must be a positive int"),
        ({"per": 0}, "per must be at least"),
        ({"per": -5}, "per must be at least"),
        ({"per": "60"}, "per must be seconds"),
        ({"per": math.inf}, "per must be at least"),
        ({"algorithm": "leaky_bucket"}, "unknown rate-limit algorithm"),
        ({"algorithm": "fixed", "burst": 5}, "burst= is for algorithm='gcra'"),
        ({"algorithm": "gcra", "burst": 0}, "burst must be a positive int"),
    ],
)
async def test_bad_configuration_is_refused(c: Caches, options: dict[str, Any], match: str) -> None:
    args: dict[str, Any] = {"limit": 10, "per": 60, **options}
    with pytest.raises(hitrate.ConfigurationError, match=match):
        c.rate_limiter("api", **args)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
async def test_bad_requests_are_refused_and_nothing_written(
    c: Caches, raw: redis.Redis, algorithm: str
) -> None:
    api = c.rate_limiter("api", limit=3, per=60, algorithm=algorithm)
    for identity in ["", None, 1.5, b"x"]:
        with pytest.raises(hitrate.InvalidKeyError, match="identity"):
            await api.hit(identity)
    for cost in [0, -1, 1.5, True]:
        with pytest.raises(hitrate.InvalidArgumentError, match="cost must be a positive int"):
            await api.hit("alice", cost=cost)
    with pytest.raises(hitrate.InvalidArgumentError, match="could never be allowed"):
        await api.hit("alice", cost=4)
    with pytest.raises(hitrate.InvalidArgumentError):
        await api.peek("alice", cost=0)
    with pytest.raises(hitrate.InvalidKeyError):
        c.rate_limiter("", limit=1, per=1)
    assert keys_under(raw, c.prefix) == []


async def test_fails_open_by_default_closed_on_request_strict_raises(
    c: Caches, dead_url: str
) -> None:
    down = c.on(c.make(url=dead_url))
    open_ = down.rate_limiter("api", limit=10, per=60)
    assert await open_.hit("alice") == Decision(True, 9, 0.0, 0.0)
    closed = down.rate_limiter("login", limit=5, per=300, fail_closed=True)
    decision = await closed.hit("alice")
    assert decision == Decision(False, 0, 1.0, 1.0)
    assert not decision
    counts = down.inner.counters.snapshot()
    assert counts["rl:api"].fail_open == 1
    assert counts["rl:login"].fail_open == 1
    strict = c.on(c.make(url=dead_url, strict=True)).rate_limiter("api", limit=10, per=60)
    with pytest.raises(hitrate.CacheUnavailableError):
        await strict.hit("alice")


# -- precision under load ------------------------------------------------------------------

LIMIT = 20
PER = 1.0
THREADS = 16

WORKER = (
    textwrap.dedent(
        """
    import json, sys, threading, time
    from hitrate import Cache

    def hammer(cache, start, end, records, lock):
        limiters = {a: cache.rate_limiter("precise:" + a, limit=LIMIT, per=PER, algorithm=a)
                    for a in ("fixed_window", "sliding_window", "gcra")}
        mine = []
        while time.time() < start:
            time.sleep(0.001)
        while time.time() < end:
            for name, limiter in limiters.items():
                sent = time.time()
                d = limiter.hit("hammered")
                if d.allowed:
                    mine.append((name, sent, time.time(), d.remaining, d.reset_after))
        with lock:
            records.extend(mine)

    def run(url, prefix, start, end):
        cache = Cache.from_url(url, prefix=prefix, timeout=5.0, connect_timeout=5.0,
                               max_connections=64)
        records, lock = [], threading.Lock()
        threads = [threading.Thread(target=hammer, args=(cache, start, end, records, lock))
                   for _ in range(THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        cache.close()
        return records

    if __name__ == "__main__":
        url, prefix, start, end = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
        print(json.dumps(run(url, prefix, start, end)))
    """
    )
    .replace("LIMIT", str(LIMIT))
    .replace("PER", str(PER))
    .replace("THREADS", str(THREADS))
)


def test_precision_two_processes_sixteen_threads_each(cache: Cache, url: str) -> None:
    """Fixed window: exactly LIMIT per window, every window. Sliding window: never more
    than LIMIT in any span shorter than PER. GCRA: never more than burst + span/T."""
    prefix = cache.prefix
    start = time.time() + 1.0  # both processes begin together
    end = math.ceil(start) + 3 * PER + 0.05  # three whole windows, at least
    namespace: dict[str, Any] = {}
    exec(compile(WORKER.replace('if __name__ == "__main__":', "if False:"), "worker", "exec"),
         namespace)  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.Popen(
        [sys.executable, "-c", WORKER, url, prefix, repr(start), repr(end)],
        stdout=subprocess.PIPE,
        env=env,
    )
    records = namespace["run"](url, prefix, start, end)
    out, _ = child.communicate(timeout=30)
    assert child.returncode == 0
    theirs = json.loads(out)
    assert theirs, "the second process allowed nothing: it did not take part"
    records += [tuple(r) for r in theirs]
    by_algorithm: dict[str, list[tuple[float, float, int, float]]] = {a: [] for a in ALGORITHMS}
    for name, sent, received, remaining, reset_after in records:
        by_algorithm[name].append((sent, received, remaining, reset_after))

    # Fixed window: attribute each hit to its window by when the window ends (server time,
    # whole seconds): sent + reset_after <= window end <= received + reset_after.
    windows: dict[int, list[int]] = {}
    for sent, received, remaining, reset_after in by_algorithm["fixed_window"]:
        ends = range(math.ceil(sent + reset_after - 1e-6), math.floor(received + reset_after) + 1)
        assert len(ends) == 1, (sent, received, reset_after)
        windows.setdefault(ends[0], []).append(remaining)
    full = [w for w in windows if w - PER >= start and w <= end]
    assert len(full) >= 3
    for window_end, remainders in windows.items():
        assert len(remainders) <= LIMIT, window_end
        if window_end in full:
            # exactly LIMIT, each a distinct step of the one counter
            assert sorted(remainders) == list(range(LIMIT)), window_end

    # Sliding window: any LIMIT + 1 allowed hits must span at least PER on the server. Their
    # server times lie within [earliest sent, latest received], so a group whose bounds are
    # less than PER apart is a proven violation.
    hits = sorted(by_algorithm["sliding_window"])
    for i in range(len(hits) - LIMIT):
        group = hits[i : i + LIMIT + 1]
        span = max(h[1] for h in group) - group[0][0]
        assert span >= PER, f"{LIMIT + 1} hits within {span:.3f} s"
    assert len(hits) >= LIMIT * 3  # and it did let the traffic through

    # GCRA (burst = LIMIT, T = PER / LIMIT): hits i..j (by send time) need
    # j - i + 1 <= burst + (server span) / T, and the server span <= latest received - sent_i.
    gcra = sorted(by_algorithm["gcra"])
    interval = PER / LIMIT
    for i in range(len(gcra)):
        latest = gcra[i][1]
        for j in range(i, len(gcra)):
            latest = max(latest, gcra[j][1])
            assert j - i + 1 <= LIMIT + (latest - gcra[i][0]) / interval + 1e-9, (i, j)
    assert len(gcra) >= (end - start) / interval * 0.8


def test_sync_and_async_limiters_share_state(cache: Cache) -> None:
    limiter = cache.rate_limiter("shared", limit=2, per=60, algorithm="fixed")
    twin = cache.aio.rate_limiter("shared", limit=2, per=60, algorithm="fixed")
    assert limiter.hit("x").allowed

    async def second() -> Decision:
        return await twin.hit("x")

    import asyncio

    assert asyncio.run(second()).remaining == 0
    assert not limiter.hit("x").allowed


def test_many_threads_never_exceed_the_limit_fixed_window(cache: Cache) -> None:
    """A quick in-process check (one long window): exactly limit allowed among 16 threads."""
    limiter = cache.rate_limiter("burst", limit=50, per=60, algorithm="fixed_window")
    allowed: list[int] = []
    lock = threading.Lock()

    def worker() -> None:
        mine = sum(limiter.hit("one").allowed for _ in range(20))
        with lock:
            allowed.append(mine)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(allowed) == 50
