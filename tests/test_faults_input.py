"""Hostile input and many tenants, on a real server, with property tests (hypothesis).

* bytes planted under hitrate's keys by someone else (a pickle that would run code,
  garbage, a truncated or foreign header) are read as a miss and never executed;
* keys with control characters, 10 kB keys, braces, ``%`` and glob characters round-trip,
  and invalidating one of them touches nothing else;
* :func:`hitrate.key` is injective (different parts, different keys), :func:`escape_glob`
  makes a pattern that matches exactly its text on Redis, ``invalidate_prefix`` over
  tenants with hostile ids deletes 0 keys of other tenants and leaves 0 of its own;
* values round-trip through the codecs and Redis equal and of the same type;
* a loader result over ``max_value_size`` is served to every concurrent caller, async too.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import secrets
import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hitrate
from hitrate import AsyncCache, Cache, escape_glob
from hitrate.server import EmbeddedServer
from hitrate.testing import delete_prefix, unique_prefix

PROPERTY = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
HOSTILE = st.text(
    alphabet=st.sampled_from([*":*?[]\\{}%^-!", "a", "b", "\n", "\x00", "é", " "]),
    min_size=1,
    max_size=8,
)


@pytest.fixture
def raw(url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(url)
    yield client
    client.close()


class Boom:
    """Unpickling this runs code: it creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (Path.touch, (self.marker,))


def planted(marker: Path) -> list[bytes]:
    evil = pickle.dumps(Boom(marker))
    return [
        evil,  # a bare pickle
        b"\x01\x03" + evil,  # dressed up with what might pass for a header
        b"\x00" * 3,  # shorter than the header
        os.urandom(64),
        b"\xff" * 40 + evil,
        b'{"json": "without a header"}',
    ]


@pytest.mark.ttl_audit_exempt  # plants raw bytes
@pytest.mark.parametrize("codec", ["json", "msgpack", "pickle"])
def test_planted_bytes_are_a_miss_and_never_executed(
    url: str, prefix: str, raw: redis.Redis, tmp_path: Path, codec: str
) -> None:
    marker = tmp_path / "executed"
    options: dict[str, Any] = {"pickle_secret": b"s" * 32} if codec == "pickle" else {}
    with Cache.from_url(url, prefix=prefix, codec=codec, **options) as cache:
        for n, payload in enumerate(planted(marker)):
            key = f"user:{n}"
            raw.set(cache.redis_key(key), payload)
            assert cache.get(key, "miss") == "miss"
            assert cache.get_or_fetch(key, lambda: {"fresh": n}) == {"fresh": n}
            # (bytes that look like another app version's entry are left alone, so the key
            # may stay uncached: served from the loader, never from the planted bytes)
        assert all(
            v == {"fresh": int(k[5:])} for k, v in cache.get_many(["user:0", "user:2"]).items()
        )
    assert not marker.exists(), "a planted pickle was executed"


ODD_KEYS = [
    "ctl:\x00\x01\x07\x1b[31m\r\n\t",
    "big:" + "k" * 10_000,
    "brace:{x}:}{:{{",
    "glob:*?[a-z]\\",
    "pct:%7B%25%",
    "colon:a:b::c",
    "uni:ключ:键:🔑",
]


def test_odd_keys_round_trip_and_invalidate_alone(cache: Cache, raw: redis.Redis) -> None:
    for n, key in enumerate(ODD_KEYS):
        assert cache.set(key, n)
    assert [cache.get(k) for k in ODD_KEYS] == list(range(len(ODD_KEYS)))
    for n, key in enumerate(ODD_KEYS):
        assert cache.invalidate_pattern(escape_glob(key)) == 1, key
        assert cache.get(key, "gone") == "gone"
        assert [cache.get(k) for k in ODD_KEYS[n + 1 :]] == list(range(n + 1, len(ODD_KEYS)))
    for key in ODD_KEYS:  # each hash tag holds its own key: the first "}" closes it
        assert cache.redis_key(key).count("{") == 1


@PROPERTY
@given(st.lists(st.lists(HOSTILE, min_size=1, max_size=3), min_size=2, max_size=6, unique_by=tuple))
def test_key_builder_is_injective(part_lists: list[list[str]]) -> None:
    built = [hitrate.key(*parts) for parts in part_lists]
    assert len(set(built)) == len(built)
    for parts, k in zip(part_lists, built, strict=True):
        assert k.count(":") == len(parts) - 1  # separators are only the joins


@PROPERTY
@given(text=HOSTILE, others=st.lists(HOSTILE, max_size=5))
def test_escape_glob_matches_exactly_its_text_on_redis(
    raw: redis.Redis, text: str, others: list[str]
) -> None:
    base = unique_prefix("glob")
    names = {text, *others}
    pipe = raw.pipeline()
    for name in names:
        pipe.set(f"{base}:{name}", 1, ex=60)
    pipe.execute()
    found = {k.decode() for k in raw.scan_iter(match=f"{base}:{escape_glob(text)}", count=1000)}
    raw.delete(*(f"{base}:{name}" for name in names))
    assert found == {f"{base}:{text}"}


@pytest.fixture(scope="module")
def tenants_url(server: EmbeddedServer) -> str:
    return server.url


@PROPERTY
@given(ids=st.lists(HOSTILE, min_size=2, max_size=6, unique=True), pick=st.integers(0, 5))
def test_prefix_invalidation_is_exact_for_hostile_tenant_ids(
    tenants_url: str, ids: list[str], pick: int
) -> None:
    name = unique_prefix("tenants")
    victim = ids[pick % len(ids)]
    with Cache.from_url(tenants_url, prefix=name, count=False, flush_interval=0) as cache:
        for tid in ids:
            for n in range(2):
                cache.set(hitrate.key("tenant", tid, "item", n), [tid, n])
            cache.set(hitrate.key("tenant", tid), [tid])
        cache.invalidate_prefix("tenant", victim)
        for tid in ids:
            keys = [hitrate.key("tenant", tid, "item", n) for n in range(2)]
            keys.append(hitrate.key("tenant", tid))
            got = [cache.get(k, None) for k in keys]
            if tid == victim:
                assert got == [None, None, None], f"tenant {tid!r} kept keys"
            else:
                assert got == [[tid, 0], [tid, 1], [tid]], f"{victim!r} deleted {tid!r}'s keys"
    delete_prefix(tenants_url, name)


JSONISH = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(string.printable + "é\x00🔑", max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@PROPERTY
@given(value=JSONISH, codec=st.sampled_from(["json", "msgpack"]))
def test_values_round_trip_through_codec_and_redis(
    tenants_url: str, value: Any, codec: str
) -> None:
    name = unique_prefix("codec")
    with Cache.from_url(tenants_url, prefix=name, codec=codec, flush_interval=0) as cache:
        try:
            stored = cache.set("v:1", value)
        except hitrate.SerializationError:
            return  # refused up front (a value the codec cannot give back exactly): fine
        assert stored
        got = cache.get("v:1", hitrate.MISSING)
        assert got == value and type(got) is type(value)
    delete_prefix(tenants_url, name)


async def test_oversized_result_is_served_to_concurrent_tasks(url: str, prefix: str) -> None:
    """(The threaded case is in test_hardening.py.)"""
    cache = AsyncCache.from_url(url, prefix=prefix, max_value_size=64 * 1024)
    big = {"blob": secrets.token_urlsafe(1536 * 1024)}  # zstd cannot bring it under 64 KiB
    loads = 0

    async def load() -> dict[str, str]:
        nonlocal loads
        loads += 1
        await asyncio.sleep(0.05)
        return big

    got = await asyncio.gather(*(cache.get_or_fetch("blob:2", load) for _ in range(16)))
    assert got == [big] * 16
    assert loads <= 16 and await cache.get("blob:2") is None
    await cache.close()


def test_the_property_catches_the_naive_tenant_scheme(cache: Cache) -> None:
    """What the property above guards against: keys built with f-strings and removed
    with an escaped pattern, which deletes tenant ``a:b``'s keys along with ``a``'s."""
    for tid in ("a", "a:b"):
        cache.set(f"tenant:{tid}:item:0", tid)
    cache.invalidate_pattern(f"tenant:{escape_glob('a')}:*")
    assert cache.get("tenant:a:b:item:0") is None  # the naive scheme's collateral damage
    for tid in ("a", "a:b"):
        cache.set(hitrate.key("tenant", tid, "item", 0), tid)
    cache.invalidate_prefix("tenant", "a")
    assert cache.get(hitrate.key("tenant", "a:b", "item", 0)) == "a:b"
