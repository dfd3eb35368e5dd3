"""Type-checked by ``make typecheck`` (mypy --strict), never run: ``@cache.cached`` keeps
the wrapped function's parameters and return type, and ``.key`` / ``.invalidate`` take the
same parameters. The ``type: ignore`` lines are errors mypy must report (strict mode
flags an ignore that is not needed)."""

from __future__ import annotations

from typing import assert_type

from hitrate import AsyncCache, Cache


def sync_cache(cache: Cache) -> None:
    @cache.cached(key="user:{user_id}")
    def get_user(user_id: int, *, full: bool = False) -> dict[str, int]:
        return {"id": user_id}

    assert_type(get_user(1), dict[str, int])
    assert_type(get_user(1, full=True), dict[str, int])
    assert_type(get_user.key(1), str)
    assert_type(get_user.invalidate(user_id=1), int)
    get_user("1")  # type: ignore[arg-type]
    get_user.invalidate(user=1)  # type: ignore[call-arg]
    get_user.key()  # type: ignore[call-arg]

    @cache.cached(unless=lambda row: row is None)
    async def load(n: int) -> str | None:
        return None

    async def use() -> None:
        assert_type(await load(1), str | None)
        assert_type(await load.invalidate(1), int)
        assert_type(load.key(n=1), str)

    class Repo:
        @cache.cached(key=lambda self, order_id: f"order:{order_id}")
        def order(self, order_id: int) -> list[str]:
            return []

    repo = Repo()
    assert_type(repo.order(7), list[str])
    assert_type(repo.order.invalidate(7), int)
    assert_type(repo.order.key(order_id=7), str)
    assert_type(Repo.order.key(repo, 7), str)
    repo.order("7")  # type: ignore[arg-type]


def async_cache(acache: AsyncCache) -> None:
    @acache.cached(key="item:{item_id}", tags=["items"])
    async def item(item_id: int) -> float:
        return 1.0

    class Shop:
        @acache.cached()
        async def price(self, sku: str) -> int:
            return 1

    async def use() -> None:
        assert_type(await item(1), float)
        assert_type(await item.invalidate(item_id=1), int)
        assert_type(item.key(1), str)
        assert_type(await Shop().price("x"), int)
        assert_type(await Shop().price.invalidate("x"), int)
        await item(item_id="1")  # type: ignore[arg-type]

    def plain(n: int) -> int:
        return n

    acache.cached()(plain)  # type: ignore[arg-type]


def clients_are_typed() -> None:
    import redis
    import redis.asyncio as aredis

    from hitrate import AsyncCache, Cache

    Cache(redis.Redis())
    AsyncCache(aredis.Redis())
    Cache(aredis.Redis())  # type: ignore[arg-type]
