"""The libraries compared by ``peers.py``, each behind one small adapter.

An adapter builds, for each path it supports, a loop ``async def loop(n)`` that makes n
calls (sync libraries never await), warms its keys, and names the Redis key of its warm
entry for the memory row. Each library is configured with its fastest documented settings
for JSON-able dicts (``SETTINGS`` says which, and the report prints them); every key it
writes starts with the run's prefix, so the run deletes exactly what it wrote.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Awaitable, Callable
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import orjson
import redis
import redis.asyncio as aredis

PAYLOAD: dict[str, Any] = {
    "id": 42, "username": "ada.lovelace1815", "email": "ada.lovelace@example.com",
    "display_name": "Augusta Ada King, Countess of Lovelace",
    "created_at": "2021-03-14T09:26:53Z", "last_login": "2025-11-02T18:04:11Z",
    "is_active": True, "locale": "en-GB", "timezone": "Europe/London",
    "avatar_url": "https://cdn.example.com/avatars/42/7f3a9c.png",
}  # fmt: skip
assert len(PAYLOAD) == 10, "10 fields"
assert len(orjson.dumps(PAYLOAD)) == 324, "324 B as JSON"
UID = 42
MANY = 100
TTL = 3600  # longer than any run, so warm keys stay warm on a loaded machine
Loop = Callable[[int], Awaitable[None]]

SETTINGS = {
    "redis-py": "`GET` + `json.loads` (the × baseline); `GET` + `orjson.loads` shown for reference",
    "hitrate": "`Cache(client, prefix=..., default_ttl=3600)` / `AsyncCache`, `get_or_fetch`, "
    "orjson codec (default), leases (always on), counting on (default)",
    "dogpile.cache": "`make_region(serializer=orjson.dumps, deserializer=orjson.loads)`, "
    "`dogpile.cache.redis` with `distributed_lock=True, thread_local_lock=False`, "
    "`get_or_create` / `get_multi` (sync only)",
    "cashews": "`cache.setup(url)`, pickle (its default, and its fastest built-in pickler), "
    "`@cache(ttl=3600, key=...)` (no stampede control); *cashews lock*: the same with `lock=True`; "
    "near cache: `setup(url + '?client_side=true')` (its BCAST-tracked local copy)",
    "aiocache": "`RedisCache(serializer=<orjson BaseSerializer subclass>, timeout=None)`, "
    "`get` + `set` (no stampede control), `multi_get`; expiry test: `@cached_stampede(lease=2)`",
    "cachekit": "`@cache.minimal(backend=RedisBackend(url), serializer=OrjsonSerializer("
    "enable_integrity_checking=False), l1=L1CacheConfig(enabled=False))`; near cache: the "
    "same with its L1 on",
}


def lib_version(dist: str) -> str:
    try:
        return version(dist)
    except PackageNotFoundError:
        return "-"


def never(*_: Any) -> Any:
    raise AssertionError("loader called: the benchmark key was not warm")


def payload(*_: Any) -> dict[str, Any]:
    return PAYLOAD


class Adapter:
    """One library: ``loops[path]`` for each path it supports; ``key`` of its warm entry."""

    name = ""
    dist = ""

    def __init__(self, url: str, run: str) -> None:
        self.url, self.run = url, run
        self.loops: dict[str, Loop] = {}
        self.key = ""  # the Redis key of its warm entry (memory row)
        self.fresh = itertools.count()

    async def start(self) -> None:
        """Connect, write the warm entries, build ``loops``."""

    async def close(self) -> None:
        """Release connections."""


class Raw(Adapter):
    name, dist = "redis-py", "redis"

    async def start(self) -> None:
        r, ar = redis.Redis.from_url(self.url), aredis.Redis.from_url(self.url)
        self.r, self.ar = r, ar
        hot = f"{self.run}:raw:user:{UID}"
        many = [f"{self.run}:raw:many:{i}" for i in range(MANY)]
        r.set(hot, json.dumps(PAYLOAD))
        r.mset({k: json.dumps(PAYLOAD) for k in many})
        self.key = f"{self.run}:orjson:user:{UID}"
        r.set(self.key, orjson.dumps(PAYLOAD))
        fresh, run = self.fresh, self.run
        jl, ol, jd = json.loads, orjson.loads, json.dumps

        async def hit_sync(n: int) -> None:
            get = r.get
            for _ in range(n):
                jl(get(hot))

        async def hit_orjson(n: int) -> None:
            get = r.get
            for _ in range(n):
                ol(get(hot))

        async def hit_async(n: int) -> None:
            get = ar.get
            for _ in range(n):
                jl(await get(hot))

        async def hit_async_orjson(n: int) -> None:
            get = ar.get
            for _ in range(n):
                ol(await get(hot))

        async def miss_sync(n: int) -> None:
            for _ in range(n):
                k = f"{run}:raw:miss:{next(fresh)}"
                if r.get(k) is None:
                    r.set(k, jd(payload()), ex=TTL)

        async def miss_async(n: int) -> None:
            for _ in range(n):
                k = f"{run}:raw:miss:{next(fresh)}"
                if await ar.get(k) is None:
                    await ar.set(k, jd(payload()), ex=TTL)

        async def many_sync(n: int) -> None:
            for _ in range(n):
                [jl(v) for v in r.mget(many)]

        async def many_orjson(n: int) -> None:
            for _ in range(n):
                [ol(v) for v in r.mget(many)]

        async def many_async(n: int) -> None:
            for _ in range(n):
                [jl(v) for v in await ar.mget(many)]

        self.loops = {
            "hit_sync": hit_sync, "hit_sync/orjson": hit_orjson,
            "hit_async": hit_async, "hit_async/orjson": hit_async_orjson,
            "miss_sync": miss_sync, "miss_async": miss_async,
            "many_sync": many_sync, "many_sync/orjson": many_orjson, "many_async": many_async,
        }  # fmt: skip

    async def close(self) -> None:
        self.r.close()
        await self.ar.aclose()


class Hitrate(Adapter):
    name, dist = "hitrate", "hitrate"

    def __init__(self, url: str, run: str, near: bool = False) -> None:
        super().__init__(url, run)
        self.near = near
        if near:
            self.name = "hitrate near"

    async def start(self) -> None:
        from hitrate import AsyncCache, Cache
        from hitrate.keys import KeySpace

        extra: dict[str, Any] = {}
        if self.near:
            from hitrate import NearCache  # type: ignore[attr-defined]

            extra = {"near": lambda: NearCache(max_entries=10_000)}
        self.r, self.ar = redis.Redis.from_url(self.url), aredis.Redis.from_url(self.url)
        prefix = f"{self.run}-hr{'n' if self.near else ''}"
        opts = {k: v() for k, v in extra.items()}
        cache = Cache(self.r, prefix=prefix, default_ttl=TTL, **opts)
        opts = {k: v() for k, v in extra.items()}
        acache = AsyncCache(self.ar, prefix=prefix, default_ttl=TTL, **opts)
        self.cache, self.acache = cache, acache
        hot, many = f"user:{UID}", [f"many:{i}" for i in range(MANY)]
        cache.set(hot, PAYLOAD)
        cache.set_many(dict.fromkeys(many, PAYLOAD))
        assert cache.get_or_fetch(hot, never) == await acache.get_or_fetch(hot, never) == PAYLOAD
        self.key = KeySpace(prefix).entry(hot)
        fresh = self.fresh

        async def hit_sync(n: int) -> None:
            gof = cache.get_or_fetch
            for _ in range(n):
                gof(hot, never)

        async def hit_async(n: int) -> None:
            gof = acache.get_or_fetch
            for _ in range(n):
                await gof(hot, never)

        async def miss_sync(n: int) -> None:
            gof = cache.get_or_fetch
            for _ in range(n):
                gof(f"miss:{next(fresh)}", payload)

        async def miss_async(n: int) -> None:
            gof = acache.get_or_fetch
            for _ in range(n):
                await gof(f"miss:{next(fresh)}", payload)

        async def many_sync(n: int) -> None:
            gm = cache.get_many
            for _ in range(n):
                gm(many)

        async def many_async(n: int) -> None:
            gm = acache.get_many
            for _ in range(n):
                await gm(many)

        if self.near:
            self.loops = {"near_sync": hit_sync, "near_async": hit_async}
        else:
            self.loops = {
                "hit_sync": hit_sync, "hit_async": hit_async,
                "miss_sync": miss_sync, "miss_async": miss_async,
                "many_sync": many_sync, "many_async": many_async,
            }  # fmt: skip

    def misses(self) -> int:
        return int(self.cache.counters.total().misses + self.acache.counters.total().misses)

    async def close(self) -> None:
        self.r.close()
        await self.ar.aclose()


class Dogpile(Adapter):
    name, dist = "dogpile.cache", "dogpile.cache"

    async def start(self) -> None:
        from dogpile.cache import make_region

        run = self.run
        region = make_region(
            serializer=orjson.dumps,
            deserializer=orjson.loads,
            key_mangler=lambda k: f"{run}-dp:{k}",
        ).configure(
            "dogpile.cache.redis",
            expiration_time=TTL,
            arguments={
                "url": self.url,
                "redis_expiration_time": TTL * 2,
                "distributed_lock": True,
                "thread_local_lock": False,
            },
        )
        self.region = region
        hot, many = f"user:{UID}", [f"many:{i}" for i in range(MANY)]
        region.set(hot, PAYLOAD)
        region.set_multi(dict.fromkeys(many, PAYLOAD))
        assert region.get_or_create(hot, never) == PAYLOAD
        self.key = f"{run}-dp:{hot}"
        fresh = self.fresh

        async def hit_sync(n: int) -> None:
            goc = region.get_or_create
            for _ in range(n):
                goc(hot, never)

        async def miss_sync(n: int) -> None:
            goc = region.get_or_create
            for _ in range(n):
                goc(f"miss:{next(fresh)}", payload)

        async def many_sync(n: int) -> None:
            gm = region.get_multi
            for _ in range(n):
                gm(many)

        self.loops = {"hit_sync": hit_sync, "miss_sync": miss_sync, "many_sync": many_sync}


class Cashews(Adapter):
    name, dist = "cashews", "cashews"

    def __init__(self, url: str, run: str, near: bool = False, lock: bool = False) -> None:
        super().__init__(url, run)
        self.near, self.lock = near, lock
        if near:
            self.name = "cashews client_side"
        elif lock:
            self.name = "cashews lock"

    async def start(self) -> None:
        from cashews import Cache

        cache = Cache()
        cache.setup(f"{self.url}?client_side=true" if self.near else self.url)
        await cache.init()
        self.cache = cache
        ns = f"{self.run}-cw{'n' if self.near else ''}{'l' if self.lock else ''}"

        @cache(ttl=TTL, key=ns + ":user:{uid}", lock=self.lock)
        async def hot_user(uid: int) -> dict[str, Any]:
            return never()

        @cache(ttl=TTL, key=ns + ":miss:{uid}", lock=self.lock)
        async def load_user(uid: int) -> dict[str, Any]:
            return payload()

        many = [f"{ns}:many:{i}" for i in range(MANY)]
        await cache.set(f"{ns}:user:{UID}", PAYLOAD, expire=TTL)
        await cache.set_many(dict.fromkeys(many, PAYLOAD), expire=TTL)
        assert await hot_user(UID) == PAYLOAD
        self.key = f"{ns}:user:{UID}"
        fresh = self.fresh

        async def hit_async(n: int) -> None:
            for _ in range(n):
                await hot_user(UID)

        async def miss_async(n: int) -> None:
            for _ in range(n):
                await load_user(next(fresh))

        async def many_async(n: int) -> None:
            gm = cache.get_many
            for _ in range(n):
                await gm(*many)

        if self.near:
            self.loops = {"near_async": hit_async}
        elif self.lock:
            self.loops = {"hit_async": hit_async, "miss_async": miss_async}
        else:
            self.loops = {
                "hit_async": hit_async,
                "miss_async": miss_async,
                "many_async": many_async,
            }

    async def close(self) -> None:
        await self.cache.close()


class Aiocache(Adapter):
    name, dist = "aiocache", "aiocache"

    @staticmethod
    def serializer() -> Any:
        from aiocache.serializers import BaseSerializer

        class OrjsonSerializer(BaseSerializer):  # aiocache's documented way: own serializer
            DEFAULT_ENCODING = None

            def dumps(self, value: Any) -> bytes:
                return orjson.dumps(value)

            def loads(self, value: bytes | None) -> Any:
                return None if value is None else orjson.loads(value)

        return OrjsonSerializer()

    async def start(self) -> None:
        from aiocache import RedisCache

        host, port = self.url.split("//")[1].split("/")[0].split(":")
        ns = f"{self.run}-ac"
        cache = RedisCache(
            endpoint=host, port=int(port), namespace=ns, serializer=self.serializer(), timeout=None
        )
        self.cache = cache
        hot, many = f"user:{UID}", [f"many:{i}" for i in range(MANY)]
        await cache.set(hot, PAYLOAD, ttl=TTL)
        await cache.multi_set([(k, PAYLOAD) for k in many], ttl=TTL)
        assert await cache.get(hot) == PAYLOAD
        self.key = f"{ns}:{hot}"
        fresh = self.fresh

        async def hit_async(n: int) -> None:
            get = cache.get
            for _ in range(n):
                v = await get(hot)
                if v is None:
                    never()

        async def miss_async(n: int) -> None:
            get, set_ = cache.get, cache.set
            for _ in range(n):
                k = f"miss:{next(fresh)}"
                if await get(k) is None:
                    await set_(k, payload(), ttl=TTL)

        async def many_async(n: int) -> None:
            mg = cache.multi_get
            for _ in range(n):
                await mg(many)

        self.loops = {"hit_async": hit_async, "miss_async": miss_async, "many_async": many_async}

    async def close(self) -> None:
        await self.cache.close()


class Cachekit(Adapter):
    name, dist = "cachekit", "cachekit"

    def __init__(self, url: str, run: str, near: bool = False) -> None:
        super().__init__(url, run)
        self.near = near
        if near:
            self.name = "cachekit L1"

    async def start(self) -> None:
        from cachekit import cache
        from cachekit.backends.redis import RedisBackend
        from cachekit.config.nested import L1CacheConfig
        from cachekit.serializers import OrjsonSerializer

        backend = RedisBackend(self.url)
        ns = f"{self.run}-ck{'n' if self.near else ''}"
        opts = {
            "backend": backend,
            "ttl": TTL,
            "serializer": OrjsonSerializer(enable_integrity_checking=False),
            "l1": L1CacheConfig(enabled=self.near),
        }
        calls = {"n": 0}

        @cache.minimal(namespace=f"{ns}-hot", **opts)
        def hot_user(uid: int) -> dict[str, Any]:
            calls["n"] += 1
            return payload()

        @cache.minimal(namespace=f"{ns}-ahot", **opts)
        async def ahot_user(uid: int) -> dict[str, Any]:
            calls["n"] += 1
            return payload()

        @cache.minimal(namespace=f"{ns}-miss", **opts)
        def load_user(uid: int) -> dict[str, Any]:
            return payload()

        @cache.minimal(namespace=f"{ns}-amiss", **opts)
        async def aload_user(uid: int) -> dict[str, Any]:
            return payload()

        hot_user(UID)
        await ahot_user(UID)
        warmed = calls["n"]
        assert hot_user(UID) == await ahot_user(UID) == PAYLOAD
        self.check = lambda: calls["n"] == warmed
        fresh = self.fresh

        async def hit_sync(n: int) -> None:
            for _ in range(n):
                hot_user(UID)

        async def hit_async(n: int) -> None:
            for _ in range(n):
                await ahot_user(UID)

        async def miss_sync(n: int) -> None:
            for _ in range(n):
                load_user(next(fresh))

        async def miss_async(n: int) -> None:
            for _ in range(n):
                await aload_user(next(fresh))

        if self.near:
            self.loops = {"near_sync": hit_sync, "near_async": hit_async}
        else:
            self.loops = {
                "hit_sync": hit_sync, "hit_async": hit_async,
                "miss_sync": miss_sync, "miss_async": miss_async,
            }  # fmt: skip
        r = redis.Redis.from_url(self.url)
        found = [k.decode() for k in r.scan_iter(match=f"*{ns}-hot*", count=1000)]
        r.close()
        self.key = found[0] if len(found) == 1 else ""


def near_available() -> bool:
    try:
        from hitrate import NearCache  # type: ignore[attr-defined]  # noqa: F401
    except ImportError:
        return False
    return True


def adapters(url: str, run: str) -> list[Adapter]:
    libs: list[Adapter] = [
        Raw(url, run), Hitrate(url, run), Dogpile(url, run), Cashews(url, run),
        Cashews(url, run, lock=True), Aiocache(url, run), Cachekit(url, run),
    ]  # fmt: skip
    if near_available():
        libs.append(Hitrate(url, run, near=True))
    libs += [Cachekit(url, run, near=True), Cashews(url, run, near=True)]
    return libs


async def started(url: str, run: str) -> list[Adapter]:
    libs = adapters(url, run)
    for lib in libs:
        await lib.start()
    await asyncio.sleep(0)
    return libs
