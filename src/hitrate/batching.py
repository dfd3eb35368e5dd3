"""``@cache.cached_many(key="user:{id}")``: batch cache-aside for a function that loads
many ids at once (``def load_users(ids: list[int]) -> dict[int, User]``).

The wrapper takes an iterable of ids and returns ``{id: value}`` for every id (``None``
for an id the function left out): the cached ones from one round trip, the others from
ONE call of the function with just the ids that missed (see ``Cache.get_or_fetch_many``)::

    @cache.cached_many(key="user:{id}", ttl=USER)
    def load_users(ids: list[int]) -> dict[int, dict]:
        return {row.id: row for row in db.users_by_ids(ids)}

    load_users([1, 2, 3])             # {1: {...}, 2: {...}, 3: None}
    load_users.invalidate(2)          # drop one id's entry

An id is put into the template as a key part is by :func:`hitrate.key` (a ``:``, ``{``,
``}`` or ``%`` in it is percent-encoded), so every id has a key of its own.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from .errors import ConfigurationError, InvalidKeyError
from .keys import _text, encode_part, tags_of
from .policy import TTLLike

if TYPE_CHECKING:
    from .cache import AsyncCache, Cache

__all__ = ["AsyncCachedMany", "CachedMany", "key_template"]

ID = TypeVar("ID", bound=Hashable)
V = TypeVar("V")


def key_template(key: str) -> Callable[[Any], str]:
    if not isinstance(key, str) or key.count("{id}") != 1 or key.replace("{id}", "").count("{"):
        raise ConfigurationError(
            f"cached_many(key={key!r}): give a template with exactly one {{id}}, e.g. "
            "key='user:{id}'"
        )
    head, tail = key.split("{id}")

    def make(id: Any) -> str:
        text = _text(id, f"an id of cached_many(key={key!r})")
        if not text:
            raise InvalidKeyError(f"cached_many(key={key!r}): an id is empty")
        return head + encode_part(text) + tail

    return make


class _Many(Generic[ID, V]):
    def __init__(self, func: Callable[..., Any], key: str, ttl: TTLLike, tags: Sequence[str],
                 value_type: Any) -> None:  # fmt: skip
        self.func = func
        self.key = key_template(key)
        self.ttl = ttl
        self.tags = tags_of(tags)
        self.value_type = value_type
        for name in ("__module__", "__name__", "__qualname__", "__doc__"):
            setattr(self, name, getattr(func, name, None))
        self.__wrapped__ = func

    def _keys(self, ids: Iterable[ID]) -> dict[ID, str]:
        """Each id's key (ids that are one key, ``1`` and ``"1"``, share its entry)."""
        if isinstance(ids, str | bytes):
            raise InvalidKeyError(
                f"{self.func.__qualname__} takes a list of ids, got one string {ids!r}"
            )
        return {i: self.key(i) for i in ids}

    @staticmethod
    def _ids(key_of: Mapping[ID, str]) -> dict[str, ID]:
        """One id per key: the one the function is asked for."""
        by_key: dict[str, ID] = {}
        for i, k in key_of.items():
            by_key.setdefault(k, i)
        return by_key

    def _loader(self, by_key: Mapping[ID, str], result: Mapping[ID, V]) -> dict[str, V]:
        if not isinstance(result, Mapping):
            raise TypeError(
                f"{self.func.__qualname__} must return a mapping of id -> value, "
                f"got {type(result).__name__}"
            )
        return {by_key[i]: v for i, v in result.items() if i in by_key}


class CachedMany(_Many[ID, V]):
    """A function of many ids cached by :meth:`Cache.cached_many`."""

    def __init__(self, cache: Cache, func: Callable[[list[ID]], Mapping[ID, V]], key: str,
                 ttl: TTLLike, tags: Sequence[str], value_type: Any) -> None:  # fmt: skip
        super().__init__(func, key, ttl, tags, value_type)
        self.cache = cache

    def __call__(self, ids: Iterable[ID]) -> dict[ID, V | None]:
        key_of = self._keys(ids)
        by_key = self._ids(key_of)

        def load(keys: list[str]) -> dict[str, V]:
            return self._loader(key_of, self.func([by_key[k] for k in keys]))

        got = self.cache.get_or_fetch_many(by_key, load, self.ttl, self.tags, type=self.value_type)
        return {i: got.get(k) for i, k in key_of.items()}

    def invalidate(self, *ids: ID) -> int:
        """Drop the entries of *ids*; returns how many existed."""
        return self.cache.invalidate(*set(self._keys(ids).values()))


class AsyncCachedMany(_Many[ID, V]):
    """A coroutine function of many ids cached by :meth:`AsyncCache.cached_many`."""

    def __init__(self, cache: AsyncCache,
                 func: Callable[[list[ID]], Awaitable[Mapping[ID, V]]], key: str,
                 ttl: TTLLike, tags: Sequence[str], value_type: Any) -> None:  # fmt: skip
        super().__init__(func, key, ttl, tags, value_type)
        self.cache = cache

    async def __call__(self, ids: Iterable[ID]) -> dict[ID, V | None]:
        key_of = self._keys(ids)
        by_key = self._ids(key_of)

        async def load(keys: list[str]) -> dict[str, V]:
            return self._loader(key_of, await self.func([by_key[k] for k in keys]))

        got = await self.cache.get_or_fetch_many(
            by_key, load, self.ttl, self.tags, type=self.value_type
        )
        return {i: got.get(k) for i, k in key_of.items()}

    async def invalidate(self, *ids: ID) -> int:
        """Drop the entries of *ids*; returns how many existed."""
        return await self.cache.invalidate(*set(self._keys(ids).values()))
