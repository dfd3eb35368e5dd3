"""Looking at the keys under a prefix, by SCAN (never KEYS): for ``hitrate keys``,
``hitrate bigkeys`` and ``hitrate invalidate --dry-run``. Synchronous and read-only."""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .flush import stats_root
from .keys import KeySpace, escape_glob, family_of

__all__ = ["KeyInfo", "big_keys", "family_keys", "matching_entries"]

BATCH = 500


@dataclass(frozen=True)
class KeyInfo:
    """One Redis key under the prefix."""

    redis_key: str
    key: str  #: the cache key (``user:42``) for an entry; the Redis key otherwise
    family: str
    memory_bytes: int | None  #: MEMORY USAGE (None: it expired meanwhile)
    ttl: float | None  #: seconds left; None: no expiry (or gone)
    type: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "redis_key": self.redis_key,
            "key": self.key,
            "family": self.family,
            "memory_bytes": self.memory_bytes,
            "ttl": self.ttl,
            "type": self.type,
        }


def _text(raw: Any) -> str:
    return raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)


def _scan(client: Any, match: str, budget: int = 0) -> Iterator[str]:
    """Keys matching *match*, at most *budget* of them (0: all)."""
    for seen, raw in enumerate(client.scan_iter(match=match, count=1000), 1):
        yield _text(raw)
        if budget and seen >= budget:
            return


def describe(keys: KeySpace, rkey: str) -> tuple[str, str]:
    """``(cache key or Redis key, family)`` of a Redis key under the prefix."""
    entry = keys.entry_of(rkey)
    if entry is not None:
        user_key = keys.user_key(entry)
        return (user_key if entry == rkey else rkey), family_of(user_key)
    rest = rkey[len(keys.root) :]
    if rkey.startswith(stats_root(keys.prefix)):
        return rkey, "(hitrate stats)"
    head, _, _ = rest.partition(":")
    return rkey, f"({head or 'other'})"


def _measure(client: Any, rkeys: list[str], with_type: bool = False) -> list[tuple[Any, ...]]:
    pipe = client.pipeline(transaction=False)
    for rkey in rkeys:
        pipe.execute_command("MEMORY", "USAGE", rkey)
        pipe.execute_command("PTTL", rkey)
        if with_type:
            pipe.execute_command("TYPE", rkey)
    replies = pipe.execute()
    step = 3 if with_type else 2
    return [tuple(replies[i : i + step]) for i in range(0, len(replies), step)]


def _info(keys: KeySpace, rkey: str, reply: tuple[Any, ...]) -> KeyInfo:
    size, pttl = reply[0], reply[1]
    key, family = describe(keys, rkey)
    ttl = round(int(pttl) / 1000, 3) if pttl is not None and int(pttl) >= 0 else None
    kind = _text(reply[2]) if len(reply) > 2 else ""
    return KeyInfo(rkey, key, family, None if size is None else int(size), ttl, kind)


def family_keys(client: Any, keys: KeySpace, family: str, limit: int = 20) -> list[KeyInfo]:
    """Up to *limit* entries of *family* (keys ``family:...``), with size and TTL."""
    # Keys without a ":" are in family "default": for it, look at every entry.
    match = keys.root + "{*" if family == "default" else keys.pattern(escape_glob(family) + ":*")
    found: list[str] = []
    for rkey in _scan(client, match):
        if (
            keys.entry_of(rkey) == rkey
            and family_of(keys.user_key(rkey)) == family
            and rkey not in found
        ):
            found.append(rkey)
            if len(found) >= limit:
                break
    return [
        _info(keys, rkey, reply) for rkey, reply in zip(found, _measure(client, found), strict=True)
    ]


def big_keys(client: Any, keys: KeySpace, top: int = 10, budget: int = 0) -> list[KeyInfo]:
    """The *top* keys under the prefix by MEMORY USAGE (entries, tag sets, anything),
    examining at most *budget* keys (0: all of them)."""
    best: list[tuple[int, str]] = []

    def consider(batch: list[str]) -> None:
        pipe = client.pipeline(transaction=False)
        for rkey in batch:
            pipe.execute_command("MEMORY", "USAGE", rkey)
        for rkey, size in zip(batch, pipe.execute(), strict=True):
            if size is not None:
                heapq.heappush(best, (int(size), rkey))
                if len(best) > top:
                    heapq.heappop(best)

    batch: list[str] = []
    for rkey in _scan(client, keys.root + "*", budget):
        if not rkey.startswith((keys.root + "{", keys.root + "~")):
            continue  # another cache's, under a longer prefix (app:v2 under app)
        batch.append(rkey)
        if len(batch) >= BATCH:
            consider(batch)
            batch = []
    if batch:
        consider(batch)
    ranked = [rkey for _, rkey in sorted(best, reverse=True)]
    return [
        _info(keys, rkey, reply)
        for rkey, reply in zip(ranked, _measure(client, ranked, True), strict=True)
    ]


def matching_entries(client: Any, keys: KeySpace, pattern: str) -> list[str]:
    """The cache keys that ``invalidate_pattern(pattern)`` would invalidate now."""
    entries: dict[str, None] = {}
    for rkey in _scan(client, keys.pattern(pattern)):
        if keys.entry_of(rkey) == rkey:  # an entry, not a lease or bookkeeping key
            entries[rkey] = None
    return [keys.user_key(entry) for entry in entries]
