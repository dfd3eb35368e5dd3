"""Shared helpers for the data-structure suites (test_objects, test_leaderboard, test_sets,
test_ratelimit): each scenario is written once and run with a sync ``Cache`` and an
``AsyncCache`` (the ``c`` fixture), on every server flavour (conftest's ``url``/``prefix``).

``c.leaderboard("x")`` returns a :class:`Twin` whose verbs are always awaited, whatever the
cache underneath; Redis-side facts are checked with a raw redis-py client (``raw``). The
fixtures are in :mod:`tests.structs_plugin` (``pytest_plugins`` in each suite).
"""

from __future__ import annotations

import inspect
from typing import Any

import redis

import hitrate
from hitrate.structures._base import verb_of

# Generous timeouts: a loaded test machine must not turn into silent fail-open.
TIMEOUTS = {"timeout": 5.0, "connect_timeout": 5.0}


async def settle(result: Any) -> Any:
    return await result if inspect.isawaitable(result) else result


class Twin:
    """``await twin.verb(...)`` on a sync or an async structure; other attributes (such
    as ``redis_key``) are passed through."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if verb_of(getattr(type(self.inner), name, None)) is None:
            return attr

        async def call(*args: Any, **kwargs: Any) -> Any:
            return await settle(attr(*args, **kwargs))

        return call


class Caches:
    """``c.objects(...)`` etc. on a sync or an async cache, as a :class:`Twin`."""

    FACTORIES = frozenset({"objects", "leaderboard", "seen", "unique", "rate_limiter"})

    def __init__(self, kind: type[Any], url: str, prefix: str) -> None:
        self.kind, self.url, self.prefix = kind, url, prefix
        self.is_async = kind is hitrate.AsyncCache
        self.made: list[Any] = []
        self.inner = self.make()

    def make(self, **options: Any) -> Any:
        """A new cache of this kind (same server and prefix unless ``url=``/``prefix=``)."""
        url = options.pop("url", self.url)
        options.setdefault("prefix", self.prefix)
        for name, value in TIMEOUTS.items():
            options.setdefault(name, value)
        inner = self.kind.from_url(url, **options)
        self.made.append(inner)
        return inner

    def __getattr__(self, name: str) -> Any:
        if name not in self.FACTORIES:
            raise AttributeError(name)
        factory = getattr(self.inner, name)
        return lambda *args, **kwargs: Twin(factory(*args, **kwargs))

    def on(self, inner: Any) -> Any:
        """Factories of another cache made with :meth:`make`, wrapped the same way."""
        other = Caches.__new__(Caches)
        other.__dict__.update(self.__dict__, inner=inner)
        return other


def calls(raw: redis.Redis, *commands: str) -> dict[str, int]:
    """Server-wide call counts of *commands* from INFO commandstats (0 when never run)."""
    stats = raw.info("commandstats")
    return {cmd: stats.get(f"cmdstat_{cmd}", {}).get("calls", 0) for cmd in commands}


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {cmd: after[cmd] - before[cmd] for cmd in before}


def keys_under(raw: redis.Redis, prefix: str) -> list[str]:
    return sorted(k.decode() for k in raw.scan_iter(match=f"{prefix}:*", count=1000))
