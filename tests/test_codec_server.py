"""Values keep their type, on a real server (issue 9, items 11, 13 and 14): a hit returns
what the loader returned, of the same type, or the write is refused; typed decoding with
``type=``; foreign entries are left alone; the signed pickle's header MAC and rotation."""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

import hitrate
from hitrate import MISSING, AsyncCache, Cache
from hitrate.codec import HEADER, codec_type_from_annotation

NOW = dt.datetime(2024, 5, 1, 12, 30, tzinfo=dt.timezone(dt.timedelta(hours=2)))
OLD, NEW = b"old secret, 16+ bytes", b"new secret, 16+ bytes"


@dataclasses.dataclass
class Invoice:
    id: uuid.UUID
    issued: dt.date
    total: decimal.Decimal
    lines: tuple[str, ...]


INVOICE = Invoice(uuid.UUID(int=1), dt.date(2024, 2, 29), decimal.Decimal("10.50"), ("a", "b"))


@pytest.fixture
def raw(url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(url)
    yield client
    client.close()


def test_a_datetime_loader_without_a_type_is_refused_not_turned_into_str(cache: Cache) -> None:
    # before: the miss returned a datetime and every hit after it a str
    with pytest.raises(hitrate.SerializationError, match=r"'event:1'.*datetime.*type=") as info:
        cache.get_or_fetch("event:1", lambda: {"at": NOW})
    assert "value['at']" in str(info.value)
    assert cache.get("event:1", MISSING) is MISSING  # nothing was cached
    with pytest.raises(hitrate.SerializationError, match="tuple"):
        cache.set("event:2", (1, 2))
    assert cache.get("event:2", MISSING) is MISSING


def test_typed_get_or_fetch_hits_return_the_loaders_type(cache: Cache) -> None:
    calls = []

    def load() -> Invoice:
        calls.append(1)
        return INVOICE

    for _ in range(3):
        value = cache.get_or_fetch("invoice:1", load, type=Invoice)
        assert type(value) is Invoice and value == INVOICE
        assert type(value.total) is decimal.Decimal and str(value.total) == "10.50"
        assert type(value.lines) is tuple
    assert len(calls) == 1  # two of the three were hits
    assert cache.get("invoice:1", type=Invoice) == INVOICE
    # read without its type, the entry is a miss (never a dict) and is left in place
    assert cache.get("invoice:1", MISSING) is MISSING
    assert cache.get("invoice:1", type=Invoice) == INVOICE


def test_typed_set_get_many_and_write_through(cache: Cache) -> None:
    assert cache.set("when:1", NOW, type=dt.datetime)
    assert cache.set_many({"when:2": NOW, "when:3": NOW}, type=dt.datetime)
    got = cache.get_many(["when:1", "when:2", "when:3", "when:4"], type=dt.datetime)
    assert got == {"when:1": NOW, "when:2": NOW, "when:3": NOW}
    assert all(type(v) is dt.datetime and v.utcoffset() == NOW.utcoffset() for v in got.values())

    saved = cache.write_through("invoice:2", INVOICE, lambda v: None, type=Invoice)
    assert saved == INVOICE
    assert cache.get("invoice:2", type=Invoice) == INVOICE
    with pytest.raises(hitrate.SerializationError, match="not the declared type=Invoice"):
        cache.write_through("invoice:3", {"id": 1}, lambda v: pytest.fail("saved"), type=Invoice)


async def test_async_typed_round_trip_and_annotation(acache: AsyncCache) -> None:
    async def load_dates() -> list[dt.date]:
        return [dt.date(2024, 1, 1), dt.date(2024, 1, 2)]

    tp = codec_type_from_annotation(load_dates)
    assert tp == list[dt.date]
    first = await acache.get_or_fetch("dates:1", load_dates, type=tp)
    hit = await acache.get_or_fetch("dates:1", lambda: pytest.fail("a miss"), type=tp)
    assert first == hit == [dt.date(2024, 1, 1), dt.date(2024, 1, 2)]
    assert all(type(d) is dt.date for d in hit)
    with pytest.raises(hitrate.SerializationError, match="date"):
        await acache.get_or_fetch("dates:2", load_dates)


def test_two_codecs_on_one_prefix_never_delete_each_others_entries(
    url: str, prefix: str, raw: redis.Redis
) -> None:
    with (
        Cache.from_url(url, prefix=prefix, codec="msgpack") as old,
        Cache.from_url(url, prefix=prefix) as new,
    ):
        old.set("user:1", {"name": "a"})
        old.set("user:2", {"name": "b"})
        assert new.get("user:1", MISSING) is MISSING
        assert new.get_many(["user:2"]) == {}
        assert new.get_or_fetch("user:3", lambda: 3) == 3
        assert raw.exists(new.redis_key("user:1"), new.redis_key("user:2")) == 2  # left alone
        assert old.get("user:1") == {"name": "a"}
        # control: garbage under our key is still deleted
        raw.set(new.redis_key("user:4"), b"garbage")
        assert new.get("user:4", MISSING) is MISSING
        assert raw.exists(new.redis_key("user:4")) == 0


def _tamper_expiry(raw: redis.Redis, rkey: str, expires_at: float) -> None:
    data = raw.get(rkey)
    assert data is not None
    version, codec_id, flags, _, load_time, gen = HEADER.unpack_from(data)
    header = HEADER.pack(version, codec_id, flags, expires_at, load_time, gen)
    raw.set(rkey, header + data[HEADER.size :])


def test_pickle_entry_with_a_tampered_expiry_is_a_miss(
    url: str, prefix: str, raw: redis.Redis
) -> None:
    with Cache.from_url(url, prefix=prefix, codec="pickle", secrets=[NEW]) as cache:
        cache.set("session:1", {"user": 1}, ttl=60)
        rkey = cache.redis_key("session:1")
        assert cache.get("session:1") == {"user": 1}  # control
        _tamper_expiry(raw, rkey, dt.datetime.now().timestamp() + 10 * 365 * 86400)
        assert cache.get("session:1", MISSING) is MISSING  # not a hit
        assert raw.exists(rkey) == 0  # tampered: deleted
        loads = []
        cache.set("session:2", "v", ttl=60)
        _tamper_expiry(raw, cache.redis_key("session:2"), 0.0)  # 0 = "never expires"
        assert cache.get_or_fetch("session:2", lambda: loads.append(1) or "fresh") == "fresh"
        assert loads == [1]


def test_pickle_secret_rotation_on_a_server(url: str, prefix: str) -> None:
    with Cache.from_url(url, prefix=prefix, codec="pickle", pickle_secret=OLD) as before:
        before.set("cart:1", {"items": {1, 2}})
    with Cache.from_url(url, prefix=prefix, codec="pickle", secrets=[NEW, OLD]) as rotated:
        assert rotated.get("cart:1") == {"items": {1, 2}}  # signed with the old secret
        rotated.set("cart:2", ("new",))
    with Cache.from_url(url, prefix=prefix, codec="pickle", secrets=[NEW]) as after:
        assert after.get("cart:2") == ("new",)
        assert after.get("cart:1", MISSING) is MISSING  # its secret was removed


async def test_async_cache_takes_secrets(url: str, prefix: str) -> None:
    async with AsyncCache.from_url(url, prefix=prefix, codec="pickle", secrets=[NEW]) as c:
        value: Any = {"when": NOW, "n": decimal.Decimal("1.0")}
        await c.set("any:1", value)
        assert await c.get("any:1") == value


@dataclasses.dataclass(frozen=True)
class Visit:
    user: int
    at: dt.datetime


def test_cached_functions_decode_hits_as_their_return_annotation(cache: Cache) -> None:
    loads: list[int] = []

    @cache.cached(key="visit:{n}")
    def visit(n: int) -> Visit:
        loads.append(n)
        return Visit(n, dt.datetime(2026, 1, n, 12, 0))

    first, hit = visit(3), visit(3)
    assert loads == [3]  # the second call was a hit
    assert hit == first and type(hit) is Visit and type(hit.at) is dt.datetime

    @cache.cached(key="when:{n}", type=tuple[int, str])  # an explicit type= wins
    def when(n: int) -> Any:
        return (n, "x")

    assert when(1) == when(1) == (1, "x") and type(when(1)) is tuple


async def test_cached_coroutines_decode_hits_as_their_return_annotation(
    acache: AsyncCache,
) -> None:
    @acache.cached(key="at:{n}")
    async def at(n: int) -> dt.date:
        return dt.date(2026, 2, n)

    assert await at(4) == dt.date(2026, 2, 4)
    hit = await at(4)
    assert type(hit) is dt.date and hit == dt.date(2026, 2, 4)
