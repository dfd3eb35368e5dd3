"""A consistency checker for caches in front of a database (used by test_consistency.py and
benchmarks/stampede.py).

Readers and writers run concurrently over a few hot keys. The database stand-in gives every
committed write the next version number of its row (like ``UPDATE .. SET version =
version + 1 RETURNING *``) and its reads take random milliseconds, with the row read at a
random point in between, as a slow query does. Every operation is logged with its start
and end time and the version it saw or wrote. The property checked: **no read that starts
after a write completed returns a version older than that write**.
"""

from __future__ import annotations

import bisect
import json
import random
import threading
import time
from dataclasses import dataclass
from typing import Any

import redis


@dataclass(frozen=True)
class Op:
    kind: str  # "read" or "write"
    key: str
    start: float
    end: float
    version: int


class VersionedDB:
    """Rows of ``{"key", "version"}``; slow, randomly timed reads; versioned commits."""

    def __init__(self, keys: list[str], seed: int = 0, max_delay: float = 0.003) -> None:
        self.rows = dict.fromkeys(keys, 0)
        self.lock = threading.Lock()
        self.max_delay = max_delay
        self.reads = 0
        self._rng = random.Random(seed)

    def _pause(self) -> None:
        with self.lock:
            delay = self._rng.uniform(0, self.max_delay)
        time.sleep(delay)

    def read(self, key: str) -> dict[str, Any]:
        self._pause()
        with self.lock:
            version = self.rows[key]
            self.reads += 1
        self._pause()
        return {"key": key, "version": version}

    def save(self, row: dict[str, Any]) -> dict[str, Any]:
        """Commit a write of ``row``; returns the stored row with its new version."""
        self._pause()
        with self.lock:
            self.rows[row["key"]] += 1
            stored = {"key": row["key"], "version": self.rows[row["key"]]}
        self._pause()
        return stored


def violations(log: list[Op], lag: float = 0.0) -> int:
    """Reads that started after some write completed yet returned an older version
    (*lag*: only reads that started at least that many seconds after it completed)."""
    count = 0
    by_key: dict[str, list[Op]] = {}
    for op in log:
        by_key.setdefault(op.key, []).append(op)
    for ops in by_key.values():
        writes = sorted((o for o in ops if o.kind == "write"), key=lambda o: o.end)
        ends = [w.end + lag for w in writes]
        newest: list[int] = []
        best = -1
        for w in writes:
            best = max(best, w.version)
            newest.append(best)
        for r in (o for o in ops if o.kind == "read"):
            i = bisect.bisect_left(ends, r.start)  # writes with end < read start
            if i and r.version < newest[i - 1]:
                count += 1
    return count


class NaiveCache:
    """The ten-line cache-aside and write-through that most code bases have."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.r, self.prefix = client, prefix

    def get_or_fetch(self, key: str, fetch: Any, ttl: int = 60) -> Any:
        cached = self.r.get(self.prefix + key)
        if cached is not None:
            return json.loads(cached)
        data = fetch()
        self.r.set(self.prefix + key, json.dumps(data), ex=ttl)
        return data

    def write_through(self, key: str, value: Any, save: Any, ttl: int = 60) -> Any:
        stored = save(value)
        self.r.set(self.prefix + key, json.dumps(stored), ex=ttl)
        return stored

    def invalidate(self, *keys: str) -> int:
        return int(self.r.delete(*(self.prefix + k for k in keys)))


def run_workload(
    cache: Any,
    db: VersionedDB,
    keys: list[str],
    *,
    readers: int = 8,
    writers: int = 3,
    seconds: float = 1.5,
    seed: int = 1,
) -> list[Op]:
    """Threads reading through ``cache.get_or_fetch`` and writing through
    ``cache.write_through`` or save + ``cache.invalidate``, for ``seconds``."""
    log: list[Op] = []
    log_lock = threading.Lock()
    stop = time.monotonic() + seconds

    def reader(n: int) -> None:
        rng = random.Random(seed * 1000 + n)
        while time.monotonic() < stop:
            key = rng.choice(keys)
            t0 = time.monotonic()
            row = cache.get_or_fetch(key, lambda key=key: db.read(key))
            t1 = time.monotonic()
            with log_lock:
                log.append(Op("read", key, t0, t1, row["version"]))

    def writer(n: int) -> None:
        rng = random.Random(seed * 2000 + n)
        while time.monotonic() < stop:
            key = rng.choice(keys)
            t0 = time.monotonic()
            if rng.random() < 0.5:
                stored = cache.write_through(key, {"key": key}, db.save)
            else:
                stored = db.save({"key": key})
                cache.invalidate(key)
            t1 = time.monotonic()
            with log_lock:
                log.append(Op("write", key, t0, t1, stored["version"]))
            time.sleep(rng.uniform(0, 0.004))

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(readers)]
    threads += [threading.Thread(target=writer, args=(i,)) for i in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return log
