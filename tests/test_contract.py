"""The contract of every public verb, run against real servers with Cache and AsyncCache.

Tests take the ``c`` fixture: an :class:`Api` over a sync ``Cache`` or an ``AsyncCache``
(parametrized), whose verbs are always awaited, so each scenario is written once and asserts
the same thing for both. Redis-side facts (TTLs, which commands ran) are checked with a raw
redis-py client: PTTL for expiry and ``INFO commandstats`` deltas for round trips.
"""

from __future__ import annotations

import decimal
import inspect
import os
import secrets
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
import redis

import hitrate
from hitrate import COUNTER, MISSING, Policy, escape_glob
from hitrate.slots import slot
from hitrate.testing import delete_prefix, raw_client, unique_prefix

VERBS = frozenset(
    "get set get_many set_many get_or_fetch write_through "
    "invalidate invalidate_pattern invalidate_tag".split()
)


async def settle(result: Any) -> Any:
    """Await *result* if it is awaitable (an async verb or async decorated function)."""
    return await result if inspect.isawaitable(result) else result


class Api:
    """``await api.get(k)`` whether the cache underneath is sync or async."""

    def __init__(self, inner: hitrate.Cache | hitrate.AsyncCache) -> None:
        self.inner = inner
        self.is_async = isinstance(inner, hitrate.AsyncCache)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if name not in VERBS:
            return attr

        async def verb(*args: Any, **kwargs: Any) -> Any:
            return await settle(attr(*args, **kwargs))

        return verb


# Generous timeouts: the default 0.25 s would let a loaded test machine turn into silent
# fail-open misses. Nothing here tests timeouts.
TIMEOUTS = {"timeout": 5.0, "connect_timeout": 5.0}


@pytest.fixture
def raw(url: str) -> Iterator[redis.Redis]:
    client = raw_client(url)
    yield client
    client.close()


@pytest.fixture
def other_prefix(url: str) -> Iterator[str]:
    name = unique_prefix("other")
    yield name
    delete_prefix(url, name)


@pytest.fixture(params=["sync", "async"])
async def make(
    request: pytest.FixtureRequest, url: str, prefix: str
) -> AsyncIterator[Callable[..., Api]]:
    """``make(**options)``: an Api on a new cache of the parametrized kind (own prefix)."""
    kind = hitrate.Cache if request.param == "sync" else hitrate.AsyncCache
    made: list[Any] = []

    def factory(**options: Any) -> Api:
        options.setdefault("prefix", prefix)
        inner = kind.from_url(url, **TIMEOUTS, **options)
        made.append(inner)
        return Api(inner)

    yield factory
    for inner in made:
        await settle(inner.close())


@pytest.fixture
def c(make: Callable[..., Api]) -> Api:
    return make()


def calls(raw: redis.Redis, *commands: str) -> dict[str, int]:
    """Server-wide call counts of *commands* from INFO commandstats (0 when never run),
    summed over the primaries of a Cluster."""
    primaries = getattr(raw, "get_primaries", None)
    if primaries is None:
        every = [raw.info("commandstats")]
    else:
        every = [raw.info("commandstats", target_nodes=node) for node in primaries()]
    return {
        cmd: sum(stats.get(f"cmdstat_{cmd}", {}).get("calls", 0) for stats in every)
        for cmd in commands
    }


ROUND_TRIPS = ("mget", "get", "evalsha", "eval")


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {cmd: after[cmd] - before[cmd] for cmd in before}


class Loader:
    """A loader that counts its calls and returns a fixed value."""

    def __init__(self, value: Any = "loaded") -> None:
        self.value = value
        self.calls = 0

    def __call__(self) -> Any:
        self.calls += 1
        return self.value


# -- get / set -----------------------------------------------------------------------------


VALUES = {
    "doc:dict": {"name": "Zoë", "tags": ["a", "b"], "n": 3, "ok": True, "none": None},
    "doc:list": [1, 2.5, "three", [4], {"five": 5}],
    "doc:int": 42,
    "doc:float": 3.25,
    "doc:str": "héllo ✓",
    "doc:false": False,
    "doc:zero": 0,
    "doc:empty": "",
}


async def test_set_get_round_trips_json_values(c: Api) -> None:
    for key, value in VALUES.items():
        assert await c.set(key, value) is True
    for key, value in VALUES.items():
        assert await c.get(key) == value
    assert await c.get("doc:tuple") is None
    with pytest.raises(hitrate.SerializationError, match="doc:tuple"):
        await c.set("doc:tuple", (1, "a"))  # it would come back as a list: refused
    assert await c.get("doc:tuple") is None  # nothing was written
    assert await c.set("doc:tuple", (1, "a"), type=tuple[int, str]) is True
    assert await c.get("doc:tuple", type=tuple[int, str]) == (1, "a")


async def test_get_missing_returns_default(c: Api) -> None:
    assert await c.get("nope") is None
    assert await c.get("nope", "fallback") == "fallback"
    assert await c.get("nope", default=MISSING) is MISSING


async def test_cached_none_is_distinct_from_miss(c: Api) -> None:
    await c.set("user:none", None)
    assert await c.get("user:none", default=MISSING) is None
    assert await c.get("user:absent", default=MISSING) is MISSING
    assert await c.get("user:none", default="fallback") is None


# -- TTLs ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ttl", "low_s", "high_s"),
    [
        (30, 30, 30),
        (2.5, 2.5, 2.5),
        (timedelta(minutes=2), 120, 120),
        (Policy(45), 45, 45),
        (Policy(60, jitter=30), 60, 90),
        (Policy(60, stale=10), 70, 70),  # Redis keeps the entry through the stale window
    ],
    ids=["seconds", "float", "timedelta", "policy", "jitter", "stale"],
)
async def test_set_ttl_is_the_redis_pttl(
    c: Api, raw: redis.Redis, ttl: Any, low_s: float, high_s: float
) -> None:
    await c.set("item:1", {"v": 1}, ttl=ttl)
    pttl = raw.pttl(c.redis_key("item:1"))
    assert low_s * 1000 - 2000 <= pttl <= high_s * 1000


async def test_jitter_spreads_pttl_over_ttl_plus_jitter(c: Api, raw: redis.Redis) -> None:
    keys = [f"item:{i}" for i in range(60)]
    for key in keys:
        await c.set(key, 1, ttl=Policy(60, jitter=30))
    pttls = [raw.pttl(c.redis_key(k)) for k in keys]
    assert all(58_000 <= p <= 90_000 for p in pttls), pttls
    assert max(pttls) - min(pttls) > 10_000, "jitter was not applied"
    assert max(pttls) > 75_000


@pytest.mark.ttl_audit_exempt  # COUNTER-policy entries have no TTL by design
async def test_counter_policy_sets_no_ttl(c: Api, raw: redis.Redis) -> None:
    await c.set("hits:page", 7, ttl=COUNTER)
    assert raw.pttl(c.redis_key("hits:page")) == -1
    assert await c.get("hits:page") == 7


async def test_family_policy_applies_without_ttl(
    make: Callable[..., Api], raw: redis.Redis
) -> None:
    c = make(policies={"user": Policy(123)})
    await c.set("user:1", "u")
    await c.get_or_fetch("user:2", Loader("v"))
    await c.set("other:1", "o")
    await c.set("user:3", "x", ttl=10)
    assert 121_000 <= raw.pttl(c.redis_key("user:1")) <= 123_000
    assert 121_000 <= raw.pttl(c.redis_key("user:2")) <= 123_000
    # other families keep the default (USER: 300 s + up to 300 s); explicit ttl wins
    assert 298_000 <= raw.pttl(c.redis_key("other:1")) <= 600_000
    assert 8_000 <= raw.pttl(c.redis_key("user:3")) <= 10_000


# -- get_many / set_many -------------------------------------------------------------------


async def test_set_many_get_many_one_round_trip(c: Api, raw: redis.Redis) -> None:
    data = {f"item:{i}": {"i": i} for i in range(50)}
    assert await c.set_many(data, ttl=60) is True
    assert all(0 < raw.pttl(c.redis_key(k)) <= 60_000 for k in data)
    wanted = [*data, "item:missing", "other:missing"]
    before = calls(raw, *ROUND_TRIPS)
    found = await c.get_many(wanted)
    # One MGET; on Cluster one per slot, sent as one pipeline per node (test_cluster.py)
    slots = len({slot(c.redis_key(k)) for k in wanted}) if c.inner._ctx.cluster else 1
    assert delta(before, calls(raw, *ROUND_TRIPS)) == {
        "mget": slots,
        "get": 0,
        "evalsha": 0,
        "eval": 0,
    }
    assert found == data
    assert "item:missing" not in found
    assert await c.get_many([]) == {}


async def test_get_many_keeps_cached_none(c: Api) -> None:
    await c.set_many({"a:1": None, "a:2": 2})
    assert await c.get_many(["a:1", "a:2", "a:3"]) == {"a:1": None, "a:2": 2}


async def test_set_many_with_unserialisable_value_writes_nothing(c: Api, raw: redis.Redis) -> None:
    mapping = {"p:1": 1, "p:2": decimal.Decimal("1.5"), "p:3": 3}
    with pytest.raises(hitrate.SerializationError, match="p:2"):
        await c.set_many(mapping)
    assert raw.exists(*(c.redis_key(k) for k in mapping)) == 0
    assert await c.get_many(list(mapping)) == {}


# -- get_or_fetch --------------------------------------------------------------------------


async def test_get_or_fetch_loads_once(c: Api) -> None:
    load = Loader({"id": 1})
    assert await c.get_or_fetch("user:1", load) == {"id": 1}
    assert await c.get_or_fetch("user:1", load) == {"id": 1}
    assert load.calls == 1
    assert await c.get("user:1") == {"id": 1}


async def test_get_or_fetch_caches_none_as_negative(c: Api) -> None:
    load = Loader(None)
    assert await c.get_or_fetch("user:404", load) is None
    assert await c.get_or_fetch("user:404", load) is None
    assert load.calls == 1
    assert c.counters.snapshot()["user"].negative_hits == 1
    assert await c.get("user:404", default=MISSING) is None


async def test_get_or_fetch_hit_is_one_get(c: Api, raw: redis.Redis) -> None:
    await c.get_or_fetch("user:7", Loader(7))
    before = calls(raw, *ROUND_TRIPS)
    assert await c.get_or_fetch("user:7", Loader(8)) == 7
    assert delta(before, calls(raw, *ROUND_TRIPS)) == {"mget": 0, "get": 1, "evalsha": 0, "eval": 0}


async def test_get_or_fetch_loader_error_propagates_and_caches_nothing(c: Api) -> None:
    def boom() -> Any:
        raise KeyError("db down")

    with pytest.raises(KeyError, match="db down"):
        await c.get_or_fetch("user:9", boom)
    assert await c.get("user:9", default=MISSING) is MISSING
    assert await c.get_or_fetch("user:9", Loader(9)) == 9


# -- write_through -------------------------------------------------------------------------


async def test_write_through_saves_then_caches(c: Api, raw: redis.Redis) -> None:
    saved: list[Any] = []
    await c.set("user:5", {"v": "old"})
    assert await c.write_through("user:5", {"v": "new"}, saved.append, ttl=60) == {"v": "new"}
    assert saved == [{"v": "new"}]
    assert await c.get("user:5") == {"v": "new"}
    assert 0 < raw.pttl(c.redis_key("user:5")) <= 60_000


async def test_write_through_caches_the_row_save_returns(c: Api) -> None:
    row = await c.write_through("user:8", {"name": "a"}, lambda v: {**v, "version": 1})
    assert row == {"name": "a", "version": 1}
    assert await c.get("user:8") == row


async def test_write_through_failed_save_propagates_and_does_not_cache(c: Api) -> None:
    class SaveFailed(Exception):
        pass

    def save(value: Any) -> None:
        raise SaveFailed(f"cannot save {value!r}")

    await c.set("user:6", "old")
    with pytest.raises(SaveFailed):
        await c.write_through("user:6", "new", save)
    assert await c.get("user:6", default=MISSING) != "new"
    assert await c.get("user:fresh", default=MISSING) is MISSING
    with pytest.raises(SaveFailed):
        await c.write_through("user:fresh", "new", save)
    assert await c.get("user:fresh", default=MISSING) is MISSING


# -- invalidate / invalidate_pattern -------------------------------------------------------


async def test_invalidate_returns_count_of_deleted_entries(c: Api) -> None:
    await c.set("user:1", 1)
    await c.set("user:2", None)
    load = Loader(3)
    await c.get_or_fetch("user:3", load)
    assert await c.invalidate("user:1", "user:2", "user:3", "user:absent") == 3
    for key in ("user:1", "user:2", "user:3"):
        assert await c.get(key, default=MISSING) is MISSING
    assert await c.invalidate("user:1") == 0
    assert await c.get_or_fetch("user:3", load) == 3
    assert load.calls == 2


async def test_invalidate_pattern_deletes_only_matches_by_scan(c: Api, raw: redis.Redis) -> None:
    for key in ("user:1:profile", "user:1:cart", "user:12:profile", "user:2:profile", "order:1"):
        await c.set(key, key)
    before = calls(raw, "scan", "keys")
    assert await c.invalidate_pattern("user:1:*") == 2
    used = delta(before, calls(raw, "scan", "keys"))
    assert used["scan"] >= 1
    assert used["keys"] == 0
    assert await c.get_many(
        ["user:1:profile", "user:1:cart", "user:12:profile", "user:2:profile", "order:1"]
    ) == {
        "user:12:profile": "user:12:profile",
        "user:2:profile": "user:2:profile",
        "order:1": "order:1",
    }
    assert await c.invalidate_pattern("user:*") == 2
    assert await c.get("order:1") == "order:1"


async def test_invalidate_pattern_stays_inside_its_prefix(
    c: Api, make: Callable[..., Api], other_prefix: str
) -> None:
    other = make(prefix=other_prefix)
    for cache in (c, other):
        await cache.set("user:1", "x")
        await cache.set("user:2", "y")
    assert await c.invalidate_pattern("user:*") == 2
    assert await c.invalidate_pattern("*") == 0
    assert await other.get_many(["user:1", "user:2"]) == {"user:1": "x", "user:2": "y"}


async def test_invalidate_pattern_with_escaped_glob(c: Api) -> None:
    await c.set("user:*:name", "star")
    await c.set("user:1:name", "one")
    await c.set("user:?:name", "question")
    assert await c.invalidate_pattern(f"user:{escape_glob('*')}:*") == 1
    assert await c.get("user:*:name", default=MISSING) is MISSING
    assert await c.get("user:1:name") == "one"
    assert await c.get("user:?:name") == "question"
    assert await c.invalidate_pattern(f"user:{escape_glob('?')}:*") == 1
    assert await c.get("user:1:name") == "one"


BRACE_KEYS = ["a{b", "a%7Bb", "a}b", "a%7Db", "a%b", "a%25b", "{x}", "x"]


async def test_brace_and_percent_keys_do_not_collide(c: Api, raw: redis.Redis) -> None:
    assert len({c.redis_key(k) for k in BRACE_KEYS}) == len(BRACE_KEYS)
    for key in BRACE_KEYS:
        await c.set(key, f"value of {key}")
    for key in BRACE_KEYS:
        assert await c.get(key) == f"value of {key}"
        assert raw.exists(c.redis_key(key)) == 1
    assert await c.get_many(BRACE_KEYS) == {k: f"value of {k}" for k in BRACE_KEYS}

    assert await c.invalidate("a{b") == 1
    assert await c.get("a{b", default=MISSING) is MISSING
    assert await c.get("a%7Bb") == "value of a%7Bb"

    assert await c.invalidate_pattern("a}*") == 1
    assert await c.get("a%7Db") == "value of a%7Db"
    assert await c.invalidate_pattern("a%*") == 4  # the keys a%7Bb, a%7Db, a%b, a%25b
    assert await c.get("a%25b", default=MISSING) is MISSING
    left = await c.get_many(BRACE_KEYS)
    assert left == {"{x}": "value of {x}", "x": "value of x"}
    assert await c.invalidate_pattern("{*") == 1
    assert await c.get("x") == "value of x"


# -- tags ----------------------------------------------------------------------------------


def tag_key(prefix: str, tag: str) -> str:
    return f"{prefix}:~tag:{{{tag}}}"


async def test_invalidate_tag_removes_tagged_entries_only(c: Api) -> None:
    await c.get_or_fetch("post:1", Loader(1), tags=["feed"])
    await c.get_or_fetch("post:2", Loader(2), tags=["feed", "author:9"])
    await c.get_or_fetch("post:3", Loader(3))
    await c.get_or_fetch("post:4", Loader(4), tags=["other"])
    assert await c.invalidate_tag("feed") == 2
    assert await c.get_many(["post:1", "post:2", "post:3", "post:4"]) == {
        "post:3": 3,
        "post:4": 4,
    }
    assert await c.invalidate_tag("feed") == 0
    assert await c.invalidate_tag("author:9") == 0  # post:2 is already gone
    load = Loader(1)
    await c.get_or_fetch("post:1", load, tags=["feed"])
    assert load.calls == 1
    assert await c.invalidate_tag("feed") == 1


async def test_tag_set_ttl_outlives_entries_and_never_shrinks(
    c: Api, raw: redis.Redis, prefix: str
) -> None:
    tk = tag_key(prefix, "t")
    await c.get_or_fetch("doc:long", Loader(1), ttl=100, tags=["t"])
    entry_pttl = raw.pttl(c.redis_key("doc:long"))
    assert 98_000 <= entry_pttl <= 100_000
    assert raw.pttl(tk) >= entry_pttl

    await c.get_or_fetch("doc:short", Loader(2), ttl=10, tags=["t"])
    assert raw.pttl(tk) >= raw.pttl(c.redis_key("doc:long"))
    assert raw.pttl(tk) > 90_000

    await c.get_or_fetch("doc:longer", Loader(3), ttl=200, tags=["t"])
    assert raw.pttl(tk) >= raw.pttl(c.redis_key("doc:longer")) > 190_000
    # the tag's version outlives the entries that record it, too
    assert raw.pttl(tk + ":v") >= raw.pttl(c.redis_key("doc:longer")) > 190_000


# -- @cached -------------------------------------------------------------------------------


async def test_cached_decorator_with_key_template(c: Api) -> None:
    seen: list[int] = []

    def load(user_id: int) -> dict[str, int]:
        seen.append(user_id)
        return {"id": user_id}

    if c.is_async:

        async def get_user(user_id: int) -> dict[str, int]:
            return load(user_id)
    else:

        def get_user(user_id: int) -> dict[str, int]:
            return load(user_id)

    cached = c.cached(key="user:{user_id}")(get_user)
    assert await settle(cached(1)) == {"id": 1}
    assert await settle(cached(user_id=1)) == {"id": 1}
    assert await settle(cached(2)) == {"id": 2}
    assert seen == [1, 2]
    assert cached.key(1) == "user:1"
    assert await c.get("user:1") == {"id": 1}
    assert await settle(cached.invalidate(user_id=1)) == 1
    assert await c.get("user:1", default=MISSING) is MISSING
    assert await settle(cached(1)) == {"id": 1}
    assert seen == [1, 2, 1]


async def test_cached_without_key_is_shared_across_instances(
    c: Api, make: Callable[..., Api]
) -> None:
    twin = make()
    seen: list[tuple[str, int]] = []

    if c.is_async:

        async def report(name: str, n: int = 1) -> str:
            seen.append((name, n))
            return f"{name}x{n}"
    else:

        def report(name: str, n: int = 1) -> str:
            seen.append((name, n))
            return f"{name}x{n}"

    first, second = c.cached()(report), twin.cached()(report)
    assert first.key("a", 2) == second.key("a", n=2)
    assert first.key("a") == first.key("a", 1)
    assert first.key("a", 2) != first.key("b", 2)
    assert await settle(first("a", 2)) == "ax2"
    assert await settle(second("a", n=2)) == "ax2"
    assert seen == [("a", 2)]


HASH_SCRIPT = textwrap.dedent(
    """
    import hitrate

    cache, acache = hitrate.Cache.from_url(prefix="p"), hitrate.AsyncCache.from_url(prefix="p")

    @cache.cached()
    def report(name, opts):
        return name

    @acache.cached()
    async def areport(name, opts):
        return name

    print(report.key("alice", {"b": "x", "a": ["y", 1]}))
    print(areport.key("alice", opts={"a": ["y", 1], "b": "x"}))
    """
)


def test_cached_default_key_does_not_depend_on_hash_seed() -> None:
    outputs = []
    for seed in ("0", "1", "4242"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        run = subprocess.run
        done = run([sys.executable, "-c", HASH_SCRIPT], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        outputs.append(done.stdout.split())
    assert outputs[0] == outputs[1] == outputs[2]
    sync_key, async_key = outputs[0]
    assert sync_key.startswith("__main__.report:")
    assert async_key.startswith("__main__.areport:")


async def test_sync_cache_cached_on_async_function(url: str, prefix: str) -> None:
    cache = hitrate.Cache.from_url(url, prefix=prefix, **TIMEOUTS)
    seen: list[int] = []

    @cache.cached(key="item:{n}", ttl=60)
    async def double(n: int) -> int:
        seen.append(n)
        return 2 * n

    try:
        assert inspect.iscoroutinefunction(double)
        assert await double(4) == 8
        assert await double(4) == 8
        assert seen == [4]
        assert cache.get("item:4") == 8
        assert await double.invalidate(n=4) == 1
        assert cache.get("item:4", default=MISSING) is MISSING
    finally:
        await cache.aio.close()
        cache.close()


async def test_async_cache_cached_rejects_plain_function(acache: hitrate.AsyncCache) -> None:
    def plain(n: int) -> int:
        return n

    with pytest.raises(hitrate.ConfigurationError, match="plain"):
        acache.cached(key="n:{n}")(plain)


# -- limits and bad input ------------------------------------------------------------------


BLOB = secrets.token_urlsafe(4000)  # over 5,000 characters that compression cannot shrink enough


async def test_value_too_large_is_refused_and_nothing_written(
    make: Callable[..., Api], raw: redis.Redis
) -> None:
    c = make(max_value_size=1000)
    with pytest.raises(hitrate.ValueTooLargeError) as info:
        await c.set("blob:1", BLOB)
    message = str(info.value)
    assert "blob:1" in message
    assert "1000" in message
    sizes = [int(w) for w in message.replace("=", " ").split() if w.isdigit()]
    assert any(s >= 4000 for s in sizes), message  # its size as stored (compressed)
    assert raw.exists(c.redis_key("blob:1")) == 0

    with pytest.raises(hitrate.ValueTooLargeError):
        await c.set_many({"blob:2": "small", "blob:3": BLOB})
    assert raw.exists(c.redis_key("blob:2"), c.redis_key("blob:3")) == 0

    saved: list[Any] = []
    with pytest.raises(hitrate.ValueTooLargeError):
        await c.write_through("blob:4", BLOB, saved.append)
    assert saved == []
    assert await c.set("blob:5", "x" * 500) is True


@pytest.mark.parametrize(
    ("key", "words"),
    [("", "empty"), (42, "int"), (None, "NoneType"), (b"user:1", "bytes")],
    ids=["empty", "int", "none", "bytes"],
)
async def test_bad_keys_raise_invalid_key_error(c: Api, key: Any, words: str) -> None:
    verbs = {
        "get": lambda: c.get(key),
        "set": lambda: c.set(key, 1),
        "get_or_fetch": lambda: c.get_or_fetch(key, Loader()),
        "invalidate": lambda: c.invalidate(key),
        "get_many": lambda: c.get_many(["ok", key]),
        "set_many": lambda: c.set_many({key: 1}),
        "write_through": lambda: c.write_through(key, 1, lambda v: None),
    }
    wrong: dict[str, str] = {}  # every verb is tried, so one report names all offenders
    for verb, attempt in verbs.items():
        try:
            await attempt()
        except hitrate.InvalidKeyError as exc:
            if words not in str(exc):
                wrong[verb] = f"message does not say {words!r}: {exc}"
        except Exception as exc:
            wrong[verb] = f"raised {exc!r}"
        else:
            wrong[verb] = "no error"
    assert wrong == {}


# -- every key hitrate writes expires ------------------------------------------------------


@pytest.mark.ttl_audit_exempt  # COUNTER-policy entries have no TTL by design
async def test_every_written_key_has_a_ttl(c: Api, raw: redis.Redis, prefix: str) -> None:
    def boom() -> Any:
        raise RuntimeError("loader failed")

    await c.set("user:1", {"a": 1})
    await c.set("user:none", None)
    await c.set("hits:1", 5, ttl=COUNTER)
    await c.set_many({"user:2": 2, "user:3": 3})
    await c.get_or_fetch("post:1", Loader(1), tags=["feed"])
    await c.get_or_fetch("post:2", Loader(2), tags=["feed", "author:1"])
    await c.get_or_fetch("post:3", Loader(None), tags=["author:1"])
    await c.get_or_fetch("post:4", Loader(4), ttl=30, tags=["solo"])
    await c.write_through("user:4", {"b": 2}, lambda v: None)
    await c.write_through("user:5", {"v": 3}, lambda v: None, version=lambda row: row["v"])
    with pytest.raises(RuntimeError):
        await c.get_or_fetch("post:5", boom, tags=["feed"])
    await c.invalidate_tag("feed")
    await c.invalidate("user:1")
    await c.invalidate_pattern("user:3*")

    keys = sorted(k.decode() for k in raw.scan_iter(match=f"{prefix}:*", count=1000))
    assert c.redis_key("post:4") in keys
    assert tag_key(prefix, "solo") in keys
    # The generations hash (one small hash per prefix) has none on purpose: forgetting a
    # bump would make the entries it retired reachable again.
    persistent = {c.redis_key("hits:1"), f"{prefix}:~gen"}
    no_ttl = [k for k in keys if raw.pttl(k) <= 0 and k not in persistent]
    assert no_ttl == [], f"keys without TTL: {no_ttl}"
    assert raw.pttl(c.redis_key("hits:1")) == -1


async def test_set_none_without_negative_ttl_leaves_no_immortal_key(
    c: Api, raw: redis.Redis
) -> None:
    policy = Policy(60, negative_ttl=0)
    await c.set("user:gone", None, ttl=policy)
    await c.write_through("user:gone2", None, lambda v: None, ttl=policy)
    immortal = [k for k in ("user:gone", "user:gone2") if raw.pttl(c.redis_key(k)) == -1]
    assert immortal == [], "written with no TTL (and already logically expired)"
