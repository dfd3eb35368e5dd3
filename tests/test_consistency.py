"""No stale sets: the consistency checker against a naive cache (must find violations)
and against hitrate (must find none), sync threads and asyncio tasks."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from hitrate import AsyncCache, Cache
from hitrate.testing import raw_client

from .consistency import NaiveCache, Op, VersionedDB, run_workload, violations

KEYS = ["row:1", "row:2", "row:3"]


def test_checker_catches_the_naive_cache(url: str, prefix: str) -> None:
    db = VersionedDB(KEYS)
    naive = NaiveCache(raw_client(url), prefix + ":")
    log = run_workload(naive, db, KEYS, seconds=1.5)
    found = violations(log)
    print(f"naive cache-aside: {found} stale reads in {len(log)} operations")
    assert found > 0


def test_hitrate_has_no_stale_reads(url: str, prefix: str) -> None:
    db = VersionedDB(KEYS)
    cache = Cache.from_url(url, prefix=prefix, timeout=2.0)
    log = run_workload(cache, db, KEYS, seconds=1.5)
    reads = sum(op.kind == "read" for op in log)
    writes = len(log) - reads
    print(f"hitrate: {violations(log)} stale reads, {reads} reads, {writes} writes")
    assert reads > 200 and writes > 50
    assert violations(log) == 0
    # The cache was doing its job, not just deleting everything.
    assert db.reads < reads
    cache.close()


def test_hitrate_versioned_write_through_has_no_stale_reads(url: str, prefix: str) -> None:
    db = VersionedDB(KEYS)
    cache = Cache.from_url(url, prefix=prefix, timeout=2.0)

    class Versioned:
        def get_or_fetch(self, key: str, fetch: object) -> object:
            return cache.get_or_fetch(key, fetch)  # type: ignore[arg-type]

        def write_through(self, key: str, value: object, save: object) -> object:
            return cache.write_through(
                key,
                value,
                save,
                version=lambda row: row["version"],  # type: ignore[arg-type]
            )

        def invalidate(self, *keys: str) -> int:
            return cache.invalidate(*keys)

    log = run_workload(Versioned(), db, KEYS, seconds=1.0, seed=3)
    assert violations(log) == 0
    cache.close()


async def test_async_hitrate_has_no_stale_reads(url: str, prefix: str) -> None:
    db = VersionedDB(KEYS)
    cache = AsyncCache.from_url(url, prefix=prefix, timeout=2.0)
    log: list[Op] = []
    stop = time.monotonic() + 1.5

    async def slow_read(key: str) -> dict[str, object]:
        await asyncio.sleep(random.uniform(0, 0.003))
        row = db.read(key)
        await asyncio.sleep(random.uniform(0, 0.003))
        return row

    async def slow_save(row: dict[str, object]) -> dict[str, object]:
        await asyncio.sleep(random.uniform(0, 0.003))
        stored = db.save(row)
        await asyncio.sleep(random.uniform(0, 0.003))
        return stored

    async def reader(n: int) -> None:
        rng = random.Random(n)
        while time.monotonic() < stop:
            key = rng.choice(KEYS)
            t0 = time.monotonic()
            row = await cache.get_or_fetch(key, lambda key=key: slow_read(key))
            log.append(Op("read", key, t0, time.monotonic(), row["version"]))

    async def writer(n: int) -> None:
        rng = random.Random(100 + n)
        while time.monotonic() < stop:
            key = rng.choice(KEYS)
            t0 = time.monotonic()
            if rng.random() < 0.5:
                stored = await cache.write_through(key, {"key": key}, slow_save)
            else:
                stored = await slow_save({"key": key})
                await cache.invalidate(key)
            log.append(Op("write", key, t0, time.monotonic(), stored["version"]))
            await asyncio.sleep(rng.uniform(0, 0.004))

    await asyncio.gather(*(reader(i) for i in range(8)), *(writer(i) for i in range(3)))
    await cache.close()
    assert sum(op.kind == "write" for op in log) > 50
    assert violations(log) == 0


def test_checker_logic() -> None:
    log = [
        Op("write", "k", 0.0, 1.0, 5),
        Op("read", "k", 1.5, 2.0, 4),  # started after the write ended, saw older: stale
        Op("read", "k", 0.5, 2.0, 4),  # overlapped the write: allowed
        Op("read", "k", 1.5, 2.0, 5),
    ]
    assert violations(log) == 1


@pytest.mark.parametrize("n", [0])
def test_checker_empty(n: int) -> None:
    assert violations([]) == n
