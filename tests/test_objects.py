"""The hash object cache (``cache.objects``) on real servers, sync and async."""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import threading
import time
import uuid
from typing import Any

import pytest
import redis

import hitrate
from hitrate import MISSING, Cache, Policy

from .structs import Caches, calls, delta, keys_under, settle

pytest_plugins = ["tests.structs_plugin"]  # fixtures: c (sync and async), raw, dead_url

ROW: dict[str, Any] = {
    "name": "Zoë",
    "age": 36,
    "score": 2.5,
    "admin": True,
    "banned": False,
    "nickname": None,
    "born": dt.date(1815, 12, 10),
    "seen": dt.datetime(2026, 11, 26, 8, 14, 8, 123456, tzinfo=dt.UTC),
    "naive": dt.datetime(2026, 1, 2, 3, 4, 5),
    "wakes": dt.time(6, 30),
    "balance": decimal.Decimal("19.99"),
    "uid": uuid.UUID("1b4e28ba-2fa1-11d2-883f-0016d3cca427"),
    "avatar": b"\x89PNG\x00\xff",
    "tags": ["a", "b"],
    "prefs": {"theme": "dark", "n": 3},
    "big": 2**70,
    "inf": float("inf"),
    "empty": "",
    "zero": 0,
}


@dataclasses.dataclass
class User:
    id: int
    name: str
    born: dt.date
    active: bool = True


class PydanticLike:
    """What hitrate relies on from pydantic: ``model_dump()`` (duck-typed)."""

    def __init__(self, **fields: Any) -> None:
        self.fields = fields

    def model_dump(self) -> dict[str, Any]:
        return dict(self.fields)


async def test_put_get_round_trips_every_type(c: Caches) -> None:
    users = c.objects("user")
    assert await users.put(42, ROW) is True
    got = await users.get(42)
    assert got == ROW
    assert {k: type(v) for k, v in got.items()} == {k: type(v) for k, v in ROW.items()}
    assert await users.get(43) is None
    assert await users.get("42") == ROW  # ids are compared by their text


async def test_put_accepts_dataclasses_and_pydantic_models(c: Caches) -> None:
    users = c.objects("user")
    await users.put(1, User(1, "Ada", dt.date(1815, 12, 10)))
    assert await users.get(1) == {
        "id": 1,
        "name": "Ada",
        "born": dt.date(1815, 12, 10),
        "active": True,
    }
    await users.put(2, PydanticLike(id=2, when=dt.date(2020, 1, 1)))
    assert await users.get(2) == {"id": 2, "when": dt.date(2020, 1, 1)}
    pydantic = pytest.importorskip("pydantic")

    class Model(pydantic.BaseModel):
        id: int
        email: str
        joined: dt.datetime
        ratio: float | None = None

    joined = dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.UTC)
    await users.put(3, Model(id=3, email="a@b.c", joined=joined))
    assert await users.get(3) == {"id": 3, "email": "a@b.c", "joined": joined, "ratio": None}


async def test_put_replaces_the_whole_object(c: Caches) -> None:
    users = c.objects("user")
    await users.put(1, {"a": 1, "b": 2})
    await users.put(1, {"c": 3})
    assert await users.get(1) == {"c": 3}


async def test_fields_are_readable_in_redis_cli(c: Caches, raw: redis.Redis) -> None:
    users = c.objects("user")
    await users.put(42, {"name": "Ada", "age": 36, "admin": True, "nick": None})
    assert users.redis_key(42) == f"{c.prefix}:~obj:{{user:42}}"
    assert raw.hgetall(users.redis_key(42)) == {
        b"name": b"sAda",
        b"age": b"i36",
        b"admin": b"?1",
        b"nick": b"-",
    }


async def test_get_field_reads_and_decodes_only_that_field(c: Caches, raw: redis.Redis) -> None:
    users = c.objects("user")
    await users.put(42, ROW)
    rkey = users.redis_key(42)
    # A field no decoder understands: get_field must never touch it.
    raw.hset(rkey, "poison", b"\x01garbage")
    watched = ("hget", "hmget", "hgetall", "exists", "evalsha")
    before = calls(raw, *watched)
    assert await users.get_field(42, "born") == dt.date(1815, 12, 10)
    assert delta(before, calls(raw, *watched)) == {**dict.fromkeys(watched, 0), "hget": 1}
    assert await users.get_field(42, "nickname", default="x") is None
    assert await users.get_field(42, "nickname", default=MISSING) is None
    assert await users.get_field(42, "absent", default=MISSING) is MISSING
    assert await users.get_field(99, "born") is None
    assert await users.get_field(99, "born", default="d") == "d"


async def test_get_fields_one_round_trip(c: Caches, raw: redis.Redis) -> None:
    users = c.objects("user")
    await users.put(42, ROW)
    raw.hset(users.redis_key(42), "poison", b"\x01garbage")
    watched = ("hget", "hmget", "hgetall", "exists")
    before = calls(raw, *watched)
    assert await users.get_fields(42, "age", "balance", "absent") == {
        "age": 36,
        "balance": decimal.Decimal("19.99"),
    }
    # EXISTS and HMGET, pipelined: one round trip, and the other fields are not read.
    assert delta(before, calls(raw, *watched)) == {"hget": 0, "hmget": 1, "hgetall": 0, "exists": 1}
    assert await users.get_fields(42, "absent") == {}
    assert await users.get_fields(99, "age") is None
    with pytest.raises(hitrate.InvalidArgumentError):
        await users.get_fields(42)


async def test_update_changes_fields_keeps_others_and_the_ttl(c: Caches, raw: redis.Redis) -> None:
    users = c.objects("user", ttl=100)
    await users.put(42, {"name": "Ada", "age": 36})
    raw.pexpire(users.redis_key(42), 50_000)
    assert await users.update(42, age=37, city="London") is True
    assert await users.update(42, {"name": "Ada L.", "id": 1}) is True  # a field named "id"
    assert await users.get(42) == {"name": "Ada L.", "age": 37, "city": "London", "id": 1}
    assert 48_000 < raw.pttl(users.redis_key(42)) <= 50_000  # kept, not renewed


async def test_update_never_resurrects(c: Caches, raw: redis.Redis) -> None:
    users = c.objects("user", ttl=0.2)
    assert await users.update(1, name="x") is False  # never cached
    await users.put(2, {"name": "Ada"})
    assert await users.invalidate(2) == 1
    assert await users.update(2, name="x") is False  # invalidated
    await users.put(3, {"name": "Ada"})
    time.sleep(0.3)
    assert await users.update(3, name="x") is False  # expired
    assert keys_under(raw, c.prefix) == []


def test_update_racing_invalidate_never_leaves_a_partial_object(
    cache: Cache, raw: redis.Redis
) -> None:
    """put writes {a, b}; update writes {b}; invalidate deletes. A non-atomic update (check,
    then HSET) would leave an object holding only b."""
    users = cache.objects("race", ttl=60)
    rkey = users.redis_key(1)
    stop = threading.Event()

    def loop(step: Any) -> None:
        while not stop.is_set():
            step()

    threads = [
        threading.Thread(target=loop, args=(lambda: users.put(1, {"a": 1, "b": 0}),)),
        threading.Thread(target=loop, args=(lambda: users.update(1, b=1),)),
        threading.Thread(target=loop, args=(lambda: users.update(1, b=2),)),
        threading.Thread(target=loop, args=(lambda: users.invalidate(1),)),
    ]
    for t in threads:
        t.start()
    samples = []
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:
        samples.append(raw.hgetall(rkey))
    stop.set()
    for t in threads:
        t.join()
    partial = [s for s in samples if s and b"a" not in s]
    assert partial == []
    assert any(samples) and not all(samples)  # the race really happened


@pytest.mark.ttl_audit_exempt  # COUNTER-policy objects have no TTL by design
async def test_ttl_follows_the_policy(c: Caches, raw: redis.Redis) -> None:
    policed = c.on(c.make(policies={"user": Policy(120), "plan": hitrate.COUNTER}))
    await policed.objects("user").put(1, {"a": 1})
    assert 118_000 <= raw.pttl(policed.objects("user").redis_key(1)) <= 120_000
    await policed.objects("user", ttl=30).put(2, {"a": 1})
    assert 28_000 <= raw.pttl(policed.objects("user").redis_key(2)) <= 30_000
    await policed.objects("plan").put(3, {"a": 1})
    assert raw.pttl(policed.objects("plan").redis_key(3)) == -1
    await policed.objects("other").put(4, {"a": 1})  # the cache's default: USER, 5-10 min
    assert 298_000 <= raw.pttl(policed.objects("other").redis_key(4)) <= 600_000


async def test_get_or_fetch_loads_once_and_counts(c: Caches) -> None:
    users = c.objects("member")
    loads: list[int] = []

    def load() -> User:
        loads.append(1)
        return User(7, "Ada", dt.date(1815, 12, 10))

    first = await users.get_or_fetch(7, load)
    assert first == {"id": 7, "name": "Ada", "born": dt.date(1815, 12, 10), "active": True}
    assert await users.get_or_fetch(7, load) == first
    assert await users.get(7) == first
    assert await users.get_field(7, "name") == "Ada"
    assert await users.get_field(7, "nope") is None
    assert len(loads) == 1
    counts = c.inner.counters.snapshot()["member"]
    assert (counts.hits, counts.misses, counts.loads, counts.fills) == (3, 2, 1, 1)


async def test_get_or_fetch_accepts_an_async_loader(acache: hitrate.AsyncCache) -> None:
    async def load() -> dict[str, Any]:
        return {"n": 1}

    assert await acache.objects("user").get_or_fetch(1, load) == {"n": 1}
    assert await acache.objects("user").get(1) == {"n": 1}


async def test_get_or_fetch_none_or_empty_is_not_cached(c: Caches, raw: redis.Redis) -> None:
    users = c.objects("user")
    assert await users.get_or_fetch(1, lambda: None) is None
    assert await users.get_or_fetch(2, dict) == {}
    assert keys_under(raw, c.prefix) == []  # nor a lease left behind


async def test_get_or_fetch_loader_error_propagates_and_frees_the_lease(
    c: Caches, raw: redis.Redis
) -> None:
    users = c.objects("user")

    def boom() -> None:
        raise KeyError("db down")

    with pytest.raises(KeyError, match="db down"):
        await users.get_or_fetch(1, boom)
    # No lease left behind; the error text stays briefly, for waiters in other processes.
    err = users.redis_key(1) + ":err"
    assert keys_under(raw, c.prefix) == [err]
    assert 0 < raw.pttl(err) <= 2000
    assert b"db down" in raw.get(err)
    assert await users.get_or_fetch(1, lambda: {"a": 1}) == {"a": 1}


def test_get_or_fetch_waiters_in_other_processes_see_the_loader_error(
    url: str, prefix: str
) -> None:
    """Object fills use the entries' lease plan: a waiter elsewhere is shown the error
    instead of waiting out the lease and loading again."""
    first, second = Cache.from_url(url, prefix=prefix), Cache.from_url(url, prefix=prefix)
    started, fail = threading.Event(), threading.Event()
    calls: list[int] = []
    errors: list[BaseException] = []

    def boom() -> None:
        started.set()
        fail.wait(5)
        raise KeyError("db down")

    def hold() -> None:
        try:
            first.objects("user").get_or_fetch(1, boom)
        except KeyError as exc:
            errors.append(exc)

    holder = threading.Thread(target=hold)
    holder.start()
    assert started.wait(5)
    threading.Timer(0.1, fail.set).start()
    with pytest.raises(hitrate.LoaderError, match="db down"):
        second.objects("user").get_or_fetch(1, lambda: calls.append(1) or {"a": 1})
    holder.join()
    assert len(errors) == 1
    assert calls == []  # the waiter did not load again
    first.close()
    second.close()


@pytest.mark.parametrize("write", ["invalidate", "update", "put"])
async def test_a_write_during_the_load_refuses_the_fill(c: Caches, url: str, write: str) -> None:
    """The stale-set race: a reader loads row v1, a writer saves v2 and tells the cache,
    then the reader's fill would cache v1. The write revokes the lease: v1 is not cached."""
    users = c.objects("user")
    writer = Cache.from_url(url, prefix=c.prefix).objects("user")

    def load_v1_while_v2_is_written() -> dict[str, Any]:
        if write == "invalidate":
            writer.invalidate(5)
        elif write == "update":
            writer.update(5, v=2)  # not cached: changes nothing, but revokes the lease
        else:
            writer.put(5, {"v": 2})
        return {"v": 1}

    assert await users.get_or_fetch(5, load_v1_while_v2_is_written) == {"v": 1}
    assert await users.get(5) == (None if write != "put" else {"v": 2})
    assert c.inner.counters.snapshot()["user"].fills_refused == 1


def test_one_load_for_many_threads_and_a_second_process(cache: Cache, url: str) -> None:
    users = cache.objects("hot")
    other = Cache.from_url(url, prefix=cache.prefix).objects("hot")  # another "process"
    loads: list[int] = []
    gate = threading.Barrier(17)

    def slow_load() -> dict[str, int]:
        loads.append(1)
        time.sleep(0.2)
        return {"n": len(loads)}

    results: list[Any] = []

    def read(objs: Any) -> None:
        gate.wait()
        results.append(objs.get_or_fetch(1, slow_load))

    threads = [threading.Thread(target=read, args=(users,)) for _ in range(8)]
    threads += [threading.Thread(target=read, args=(other,)) for _ in range(8)]
    for t in threads:
        t.start()
    gate.wait()
    for t in threads:
        t.join()
    assert loads == [1]
    assert results == [{"n": 1}] * 16


async def test_bad_input_is_refused_and_nothing_written(c: Caches, raw: redis.Redis) -> None:
    users = c.objects("user")
    with pytest.raises(hitrate.SerializationError, match="dict, a dataclass"):
        await users.put(1, ["not", "an", "object"])
    with pytest.raises(hitrate.SerializationError, match="field names"):
        await users.put(1, {1: "a"})
    with pytest.raises(hitrate.InvalidArgumentError, match="no fields"):
        await users.put(1, {})
    with pytest.raises(hitrate.SerializationError, match=r"user:1\.d"):
        await users.put(1, {"ok": 1, "d": {1, 2}})  # a set: not JSON
    with pytest.raises(hitrate.InvalidKeyError, match="empty"):
        await users.put("", {"a": 1})
    with pytest.raises(hitrate.InvalidKeyError):
        await users.get(None)
    with pytest.raises(hitrate.InvalidArgumentError):
        await users.update(1)
    with pytest.raises(hitrate.ValueTooLargeError, match="user:1"):
        await users.put(1, {"blob": "x" * (2 * 1024 * 1024)})
    with pytest.raises(hitrate.InvalidKeyError):
        c.objects("")
    assert keys_under(raw, c.prefix) == []


async def test_families_and_ids_cannot_collide(c: Caches, raw: redis.Redis) -> None:
    await c.objects("a:b").put("c", {"x": 1})
    await c.objects("a").put("b:c", {"x": 2})
    await c.objects("{a}").put("}", {"x": 3})
    assert await c.objects("a:b").get("c") == {"x": 1}
    assert await c.objects("a").get("b:c") == {"x": 2}
    assert len(keys_under(raw, c.prefix)) == 3
    # Nor with cache entries, even for the same text.
    await settle(c.inner.set("~obj:{a:b}", "entry"))
    assert await settle(c.inner.invalidate_pattern("*")) == 1
    assert await c.objects("a:b").get("c") == {"x": 1}


async def test_undecodable_hash_is_a_miss_and_deleted(c: Caches, raw: redis.Redis) -> None:
    users = c.objects("user")
    raw.hset(users.redis_key(1), mapping={"a": "i not a number"})
    assert await users.get(1) is None
    assert raw.exists(users.redis_key(1)) == 0
    assert c.inner.counters.snapshot()["user"].decode_errors == 1


async def test_redis_down_is_a_miss_and_the_loader_serves(c: Caches, dead_url: str) -> None:
    down = c.on(c.make(url=dead_url))
    users = down.objects("user")
    assert await users.get(1) is None
    assert await users.get_field(1, "a", default="d") == "d"
    assert await users.put(1, {"a": 1}) is False
    assert await users.update(1, a=2) is False
    assert await users.get_or_fetch(1, lambda: {"a": 3}) == {"a": 3}
    assert down.inner.counters.snapshot()["user"].fail_open >= 4
    strict = c.on(c.make(url=dead_url, strict=True)).objects("user")
    with pytest.raises(hitrate.CacheUnavailableError):
        await strict.get(1)


async def test_a_write_lost_to_an_outage_is_invalidated_once_redis_is_back(
    c: Caches, raw: redis.Redis
) -> None:
    """CLIENT PAUSE WRITE stalls the update past the socket timeout (fail-open: False). The
    cached object is now older than the source of truth, so it is owed a delete, delivered
    by the next call once Redis answers again."""
    users = c.on(c.make(timeout=0.1)).objects("user")
    await users.put(1, {"name": "old"})
    raw.execute_command("CLIENT", "PAUSE", 400, "WRITE")
    try:
        assert await users.update(1, name="new") is False
    finally:
        time.sleep(0.45)
    assert await users.get(1) is None  # the owed invalidation went first
    assert raw.exists(users.redis_key(1)) == 0
