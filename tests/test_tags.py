"""Tags hold whatever Redis evicts: an entry is served only while its tags' versions are
current, so losing a tag's member set (or its version) never brings an invalidated entry
back. And prefixes cannot overlap, so two caches never share a key."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from hitrate import AsyncCache, Cache, ConfigurationError
from hitrate.server import EmbeddedServer

from .conftest import FLAVOURS


def _raw(url: str) -> redis.Redis:
    return redis.Redis.from_url(url)


def test_an_evicted_tag_set_does_not_bring_invalidated_entries_back(url: str, prefix: str) -> None:
    cache = Cache.from_url(url, prefix=prefix)
    raw = _raw(url)
    for i in range(3):
        cache.get_or_fetch(f"post:{i}", lambda i=i: f"v{i}", tags=["feed"])
    raw.delete(f"{prefix}:~tag:{{feed}}")  # what eviction does to a cold tag set
    assert cache.invalidate_tag("feed") == 0  # no member set: nothing deleted at once...
    assert raw.exists(cache._ctx.keys.entry("post:1"))  # ...the entries are still there
    # ...but none is served, by any read.
    assert cache.get("post:1") is None
    assert cache.get_many([f"post:{i}" for i in range(3)]) == {}
    assert cache.get_or_fetch("post:1", lambda: "new", tags=["feed"]) == "new"
    assert cache.get_or_fetch("post:2", lambda: "new2") == "new2"  # read without tags=
    assert cache.get("post:1") == "new"
    raw.close()
    cache.close()


async def test_an_evicted_tag_set_async(url: str, prefix: str) -> None:
    cache = AsyncCache.from_url(url, prefix=prefix)
    raw = _raw(url)
    await cache.get_or_fetch("post:1", lambda: "old", tags=["feed"])
    raw.delete(f"{prefix}:~tag:{{feed}}")
    await cache.invalidate_tag("feed")
    assert await cache.get("post:1") is None
    assert await cache.get_or_fetch("post:1", lambda: "new", tags=["feed"]) == "new"
    raw.close()
    await cache.close()


def test_an_evicted_tag_version_makes_its_entries_misses(url: str, prefix: str) -> None:
    cache = Cache.from_url(url, prefix=prefix)
    raw = _raw(url)
    cache.get_or_fetch("post:1", lambda: "old", tags=["feed", "author:9"])
    assert cache.get("post:1") == "old"
    raw.delete(f"{prefix}:~tag:{{author:9}}:v")
    assert cache.get("post:1") is None
    loads = []
    assert cache.get_or_fetch("post:1", lambda: loads.append(1) or "new", tags=["feed"]) == "new"
    assert loads == [1]
    assert cache.get_or_fetch("post:1", lambda: "unused", tags=["feed"]) == "new"  # a hit now
    raw.close()
    cache.close()


def test_a_fill_that_began_before_invalidate_tag_is_never_served(url: str, prefix: str) -> None:
    """The version an entry records is the one from before its load began: a tag
    invalidation during the load makes the entry a miss even if its fill got through."""
    cache = Cache.from_url(url, prefix=prefix)
    other = Cache.from_url(url, prefix=prefix)

    def load() -> str:
        other.invalidate_tag("feed")  # the write happens while we load
        return "loaded-before-the-write"

    assert cache.get_or_fetch("post:1", load, tags=["feed"]) == "loaded-before-the-write"
    assert other.get("post:1") is None
    assert other.get_or_fetch("post:1", lambda: "after", tags=["feed"]) == "after"
    other.close()
    cache.close()


@pytest.fixture(scope="module")
def small_server() -> Iterator[EmbeddedServer]:
    srv = EmbeddedServer.start(
        FLAVOURS[0], extra_args=("--maxmemory", "3mb", "--maxmemory-policy", "allkeys-lru")
    )
    yield srv
    srv.stop()


def test_tag_invalidation_is_exact_under_allkeys_lru_pressure(small_server: EmbeddedServer) -> None:
    """1,000 tags over 6,000 entries on a 3 MB server that evicts any key: after every tag
    is invalidated, no tagged entry is served, although eviction took tag sets while their
    entries lived (counted, so the test shows it exercised what it guards against)."""
    cache = Cache.from_url(small_server.url, prefix="lru")
    raw = _raw(small_server.url)
    blob = "x" * 300
    keys = [f"item:{i}" for i in range(6000)]
    for i, key in enumerate(keys):
        cache.get_or_fetch(key, lambda: blob, tags=[f"t{i % 1000}"])
        if i % 3 == 0:  # keep some entries hot, so LRU evicts their cold tag sets first
            cache.get(keys[i // 2])
    missing_sets = sum(
        1
        for t in range(1000)
        if not raw.exists(f"lru:~tag:{{t{t}}}")
        and any(raw.exists(cache._ctx.keys.entry(k)) for k in keys[t::1000])
    )
    for t in range(1000):
        cache.invalidate_tag(f"t{t}")
    still_stored = sum(1 for k in keys if raw.exists(cache._ctx.keys.entry(k)))
    served = cache.get_many(keys)
    assert served == {}
    assert all(cache.get(k) is None for k in keys[::50])
    print(
        f"tag sets evicted while their entries lived: {missing_sets}; entries left in "
        f"Redis after invalidating every tag: {still_stored}; served: {len(served)}"
    )
    assert missing_sets > 0 or still_stored > 0, "the run did not evict any tag set"
    raw.close()
    cache.close()


def test_prefixes_cannot_overlap(url: str) -> None:
    for bad in ("app:~x", "~app", "app::x", "app:"):
        with pytest.raises(ConfigurationError, match="prefix"):
            Cache.from_url(url, prefix=bad)
    a = Cache.from_url(url, prefix="ovl")
    b = Cache.from_url(url, prefix="ovl:tag")
    raw = _raw(url)
    b.get_or_fetch("x", lambda: "b's", tags=["x"])
    a.get_or_fetch("x", lambda: "a's", tags=["x"])
    assert a.invalidate_tag("x") == 1
    assert b.get("x") == "b's"
    assert a.invalidate_pattern("*") == 0
    assert b.get("x") == "b's"
    a_keys = {k.decode() for k in raw.scan_iter(match="ovl:*")}
    b_keys = {k.decode() for k in raw.scan_iter(match="ovl:tag:*")}
    assert b_keys and all(k.startswith(("ovl:{", "ovl:~")) for k in a_keys - b_keys)
    for k in a_keys | b_keys:
        raw.delete(k)
    raw.close()
    a.close()
    b.close()


def test_an_untagged_write_replaces_the_tags_whatever_was_evicted(url: str, prefix: str) -> None:
    """A value written without tags (set, write_through, an untagged fill) carries none:
    invalidate_tag leaves it alone, whether or not the tag's member set was evicted."""
    cache = Cache.from_url(url, prefix=prefix)
    raw = _raw(url)
    for evicted in (False, True):
        cache.get_or_fetch("post:1", lambda: "tagged", tags=["feed"])
        cache.set("post:1", "untagged")
        if evicted:
            raw.delete(f"{prefix}:~tag:{{feed}}")
        cache.invalidate_tag("feed")
        assert cache.get("post:1") == "untagged", f"evicted={evicted}"
        cache.invalidate("post:1")
    raw.close()
    cache.close()


def test_a_damaged_tag_section_is_a_miss_and_is_deleted(url: str, prefix: str) -> None:
    from hitrate.codec import make_codec
    from hitrate.codec.entry import HEADER

    cache = Cache.from_url(url, prefix=prefix)
    raw = _raw(url)
    rkey = cache._ctx.keys.entry("post:1")
    codec = make_codec("json")
    header = HEADER.pack(2, codec.id, 4, 0.0, 0.0, 0)
    for section in (b"\x01\x00\x00" + b"\x01t", b"\x01\xff\xff" + b"a" * 70000):
        raw.set(rkey, header + section + b'"x"')
        assert cache.get("post:1") is None
        assert not raw.exists(rkey)  # not one of ours: deleted, not served
        raw.set(rkey, header + section + b'"x"')
        assert cache.get_many(["post:1", "post:2"]) == {}
        assert cache.get_or_fetch("post:1", lambda: "loaded", tags=["feed"]) == "loaded"
    raw.close()
    cache.close()


def test_tags_that_cannot_be_stored_are_refused_before_loading(url: str, prefix: str) -> None:
    from hitrate import ConfigurationError, InvalidKeyError

    cache = Cache.from_url(url, prefix=prefix)
    raw = _raw(url)
    loads: list[int] = []

    def load() -> str:
        loads.append(1)
        return "v"

    with pytest.raises(ConfigurationError, match="at most 255"):
        cache.get_or_fetch("k:1", load, tags=[f"t{i}" for i in range(256)])
    with pytest.raises(InvalidKeyError, match="bytes"):
        cache.get_or_fetch("k:1", load, tags=["\U0001f600" * 16384])
    with pytest.raises(InvalidKeyError, match="list of tags"):
        cache.get_or_fetch("k:1", load, tags="group")
    with pytest.raises(InvalidKeyError, match="list of tags"):
        cache.cached(key="k:{x}", tags="group")
    assert loads == []
    assert not list(raw.scan_iter(match=f"{prefix}:~tag:*"))
    raw.close()
    cache.close()
