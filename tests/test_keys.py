"""Keys that never collide: @cached closures and templates, hitrate.key() and
invalidate_prefix() with hostile ids, escape_glob of non-text ids; loud misconfiguration
(policy names, async loaders on the sync Cache); cached coroutine functions stay ones."""

from __future__ import annotations

import asyncio
import gc
import inspect
import os
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

import hitrate
from hitrate import MISSING, USER, AsyncCache, Cache, ConfigurationError, InvalidKeyError


@pytest.fixture
def raw(url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(url)
    yield client
    client.close()


HOSTILE = ["a", "a:b", "a*", "a?", "a[b]", "a{b}", "a%3Ab", "a\\", "a%", ":", "*", "a:*"]


# -- item 10: @cached keys never collide -----------------------------------------------------


def _factory(cache: Cache, scale: int) -> Callable[[int], int]:
    @cache.cached()
    def times(n: int) -> int:
        return n * scale

    return times


def test_closures_from_one_factory_do_not_share_entries(cache: Cache) -> None:
    double, triple = _factory(cache, 2), _factory(cache, 3)
    assert double(5) == 10
    assert triple(5) == 15  # was 10: both closures are "test_keys._factory.times"
    assert double.key(5) != triple.key(5)
    assert _factory(cache, 2).key(5) == double.key(5)  # same code, same values: same key


def test_lambdas_do_not_share_entries(cache: Cache) -> None:
    inc = cache.cached()(lambda n: n + 1)
    dec = cache.cached()(lambda n: n - 1)
    assert inc(1) == 2
    assert dec(1) == 0
    assert inc.key(1) != dec.key(1)


CLOSURE_SCRIPT = textwrap.dedent(
    """
    import hitrate

    cache = hitrate.Cache.from_url(prefix="p")

    def make(scale):
        @cache.cached()
        def times(n):
            return n * scale
        return times

    print(make(2).key(5), make(3).key(5), cache.cached()(lambda n: n).key(5))
    """
)


def test_closure_keys_are_stable_across_processes() -> None:
    outputs = []
    for seed in ("0", "7"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run(
            [sys.executable, "-c", CLOSURE_SCRIPT],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        outputs.append(done.stdout.split())
    assert outputs[0] == outputs[1]
    two, three, lam = outputs[0]
    assert two != three
    assert two.startswith("__main__.make.times:") and lam.startswith("__main__.<lambda>:")


def test_closure_over_a_value_without_stable_form_needs_a_name(cache: Cache) -> None:
    lock = threading.Lock()

    def locked(n: int) -> int:
        with lock:
            return n

    with pytest.raises(ConfigurationError, match=r"'lock'.*key=.*name="):
        cache.cached()(locked)
    named = cache.cached(name="locked")(locked)
    assert named.key(1).startswith("locked:")
    assert named(1) == 1
    with pytest.raises(ConfigurationError, match="either key= or name="):
        cache.cached(key="x:{n}", name="x")(locked)


def test_template_values_with_the_separator_do_not_collide(cache: Cache) -> None:
    @cache.cached(key="perm:{x}:{y}")
    def perm(x: str, y: str) -> str:
        return f"{x}|{y}"

    assert perm("a:b", "c") == "a:b|c"
    assert perm("a", "b:c") == "a|b:c"  # was "a:b|c": both were key "perm:a:b:c"
    assert perm.key("a:b", "c") == "perm:a%3Ab:c"
    assert perm.key(x="a", y="b:c") == "perm:a:b%3Ac"
    assert perm.key("100%", "{}") == f"perm:{hitrate.key('100%', '{}')}"
    assert cache.get(hitrate.key("perm", "a:b", "c")) == "a:b|c"


def test_callable_key(cache: Cache) -> None:
    seen: list[int] = []

    @cache.cached(key=lambda user_id, full=False: hitrate.key("user", user_id))
    def get_user(user_id: int, full: bool = False) -> dict[str, int]:
        seen.append(user_id)
        return {"id": user_id}

    assert get_user(7) == {"id": 7}
    assert get_user(7, full=True) == {"id": 7}
    assert seen == [7]
    assert get_user.key(7) == "user:7"
    assert cache.get("user:7") == {"id": 7}
    assert get_user.invalidate(user_id=7) == 1

    bad = cache.cached(key=lambda n: n)(lambda n: n)
    with pytest.raises(InvalidKeyError, match="must return the key as a string"):
        bad(1)


def test_unless_returns_the_result_without_caching_it(cache: Cache, raw: redis.Redis) -> None:
    loads: list[int] = []

    @cache.cached(key="row:{n}", unless=lambda row: row is None or row.get("draft"))
    def row(n: int) -> dict[str, Any] | None:
        loads.append(n)
        return None if n == 0 else {"n": n, "draft": n == 1}

    assert row(0) is None
    assert row(0) is None
    assert row(1) == {"n": 1, "draft": True}
    assert row(2) == {"n": 2, "draft": False}
    assert row(2) == {"n": 2, "draft": False}
    assert loads == [0, 0, 1, 2]
    assert cache.get("row:0", MISSING) is MISSING and cache.get("row:1", MISSING) is MISSING
    assert raw.keys(f"{cache.prefix}:{{row:*") == [f"{cache.prefix}:{{row:2}}".encode()]


def test_unless_shows_no_error_to_waiters_in_other_processes(url: str, prefix: str) -> None:
    # Two Cache objects: no in-process coalescing between them, as between processes.
    leader, waiter = Cache.from_url(url, prefix=prefix), Cache.from_url(url, prefix=prefix)
    started = threading.Event()

    def slow_empty(n: int) -> list[int]:
        started.set()
        time.sleep(0.3)
        return []

    def quick(n: int) -> list[int]:
        return [n]

    lead = leader.cached(key="list:{n}", unless=lambda r: not r)(slow_empty)
    other = waiter.cached(key="list:{n}", unless=lambda r: not r)(quick)
    results: list[Any] = []
    thread = threading.Thread(target=lambda: results.append(lead(1)))
    thread.start()
    try:
        assert started.wait(5)
        assert other(1) == [1]  # took the lease given back; was LoaderError (_NotCached)
    finally:
        thread.join()
        leader.close()
        waiter.close()
    assert results == [[]]


async def test_unless_async(acache: AsyncCache) -> None:
    @acache.cached(key="q:{n}", unless=lambda r: r < 0)
    async def q(n: int) -> int:
        return n

    assert await q(-1) == -1
    assert await q(3) == 3
    assert await acache.get("q:-1", MISSING) is MISSING
    assert await acache.get("q:3") == 3


async def _coro(user_id: int, *, verbose: bool = False) -> dict[str, int]:
    return {"id": user_id}


async def test_cached_coroutine_functions_keep_kind_and_signature(
    cache: Cache, acache: AsyncCache
) -> None:
    for c in (cache, acache):
        fn = c.cached(key="u:{user_id}")(_coro)
        assert inspect.iscoroutinefunction(fn)
        assert inspect.signature(fn) == inspect.signature(_coro)
        assert await fn(3) == {"id": 3}

    class Repo:
        @acache.cached(key="order:{order_id}")
        async def order(self, order_id: int, extra: str = "") -> int:
            return order_id

        @cache.cached(key="sync:{n}")
        def plain(self, n: int) -> int:
            return n

    repo = Repo()
    assert inspect.iscoroutinefunction(Repo.order)
    assert inspect.iscoroutinefunction(repo.order)  # was False: a _BoundCached object
    unbound = inspect.signature(Repo.order)
    assert list(unbound.parameters) == ["self", "order_id", "extra"]
    assert unbound.return_annotation == "int"
    bound = inspect.signature(repo.order)
    assert bound == unbound.replace(parameters=list(unbound.parameters.values())[1:])
    assert list(inspect.signature(repo.plain).parameters) == ["n"]
    assert not inspect.iscoroutinefunction(repo.plain)
    assert await repo.order(4) == 4
    assert await repo.order.invalidate(order_id=4) == 1
    assert repo.plain(5) == 5 and repo.plain.key(5) == "sync:5"


# -- item 15: exact keys for every id ---------------------------------------------------------


def test_escape_glob_accepts_non_text_ids() -> None:
    assert hitrate.escape_glob(42) == "42"
    assert hitrate.escape_glob(4.5) == "4.5"
    with pytest.raises(InvalidKeyError, match="decode"):
        hitrate.escape_glob(b"a*")
    with pytest.raises(InvalidKeyError):
        hitrate.escape_glob(None)


def test_key_joins_parts_exactly() -> None:
    assert hitrate.key("tenant", 42, "item", 7) == "tenant:42:item:7"
    assert hitrate.key("t", "a:b") == "t:a%3Ab"
    assert hitrate.key("t", "a:b") != hitrate.key("t", "a", "b")
    assert hitrate.key("t", "{x}", "100%") == "t:%7Bx%7D:100%25"
    keys = {hitrate.key("t", tid, "n") for tid in HOSTILE}
    assert len(keys) == len(HOSTILE)
    for bad in ("", None, b"x"):
        with pytest.raises(InvalidKeyError):
            hitrate.key("t", bad)
    with pytest.raises(InvalidKeyError):
        hitrate.key()


def test_invalidate_prefix_deletes_exactly_one_tenant(cache: Cache) -> None:
    for tid in HOSTILE:
        cache.set(hitrate.key("tenant", tid), tid)
        cache.set(hitrate.key("tenant", tid, "item", 1), tid)
        cache.set(hitrate.key("tenant", tid, "item", "x:*"), tid)
    cache.set("tenantx:a:1", "other family")
    for tid in HOSTILE:
        assert cache.invalidate_prefix("tenant", tid) == 3, tid
        for other in HOSTILE[HOSTILE.index(tid) + 1 :]:
            for k in (("tenant", other), ("tenant", other, "item", 1)):
                assert cache.get(hitrate.key(*k)) == other, (tid, other)
        assert cache.get(hitrate.key("tenant", tid, "item", 1), MISSING) is MISSING
    assert cache.get("tenantx:a:1") == "other family"


async def test_invalidate_prefix_async(acache: AsyncCache) -> None:
    await acache.set(hitrate.key("tenant", "a", "x"), 1)
    await acache.set(hitrate.key("tenant", "a:b", "x"), 2)
    await acache.set(hitrate.key("tenant", "a*", "x"), 3)
    assert await acache.invalidate_prefix("tenant", "a") == 1
    assert await acache.get(hitrate.key("tenant", "a:b", "x")) == 2
    assert await acache.get(hitrate.key("tenant", "a*", "x")) == 3


# -- item 17: loud misconfiguration -----------------------------------------------------------


@pytest.mark.parametrize("name", ["user:*", "user:", "user*", "", "us?r", "user[s]", "a b"])
def test_policy_names_no_key_can_have_are_refused(url: str, name: str) -> None:
    client = redis.Redis.from_url(url)
    with pytest.raises(ConfigurationError, match="key family"):
        Cache(client, prefix="p", policies={name: USER})
    client.close()


@pytest.mark.parametrize(("policy", "family"), [("users", "user"), ("User", "user")])
def test_a_misspelt_policy_name_warns_once(url: str, prefix: str, policy: str, family: str) -> None:
    cache = Cache.from_url(url, prefix=prefix, policies={policy: USER, "config": USER})
    try:
        with pytest.warns(UserWarning, match=rf"family '{family}' has no policy.*'{policy}'"):
            cache.get(f"{family}:42")
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            cache.get(f"{family}:43")
            cache.get("config:1")
            cache.get("session:1")  # not close to a policy name: no warning
    finally:
        cache.close()


def test_correct_policy_names_do_not_warn(url: str, prefix: str) -> None:
    cache = Cache.from_url(url, prefix=prefix, policies={"user": USER})
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            cache.get("user:1")
            cache.get("users:1")  # has no policy but "user" is used: no guess to make
    finally:
        cache.close()


def test_async_loader_on_the_sync_cache_is_refused(cache: Cache, raw: redis.Redis) -> None:
    async def load() -> int:
        return 1

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ConfigurationError, match="AsyncCache"):
            cache.get_or_fetch("a:1", load)
        with pytest.raises(ConfigurationError, match="AsyncCache"):
            cache.get_or_fetch("a:2", lambda: asyncio.sleep(0, 5))
        gc.collect()
    assert not [w for w in caught if "never awaited" in str(w.message)]
    assert cache.get("a:1", MISSING) is MISSING
    assert raw.exists(cache.redis_key("a:1") + ":lease") == 0  # the lease was given back
