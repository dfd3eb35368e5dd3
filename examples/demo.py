"""hitrate's seed patterns on a real database and a real server, in a few seconds.

Run with ``make demo``. Uses HITRATE_REDIS_URL / REDIS_URL when set, otherwise starts a
private server (redis-server from PATH, or the valkey-server of ``hitrate[server]``).
"""

from __future__ import annotations

import os
import random
import sqlite3
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path

import redis

import hitrate
from hitrate import AGGREGATE, REFERENCE, USER, Cache, escape_glob
from hitrate.server import EmbeddedServer

USERS = 2_000
READS = 6_000


class Database:
    """A small SQLite shop: users with a version number bumped by every write."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.queries = 0
        self._lock = threading.Lock()
        db = self._connect()
        db.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT, plan TEXT, version INT)")
        db.executemany(
            "INSERT INTO users VALUES (?, ?, ?, 1)",
            [(i, f"user{i}", random.choice(["free", "pro"])) for i in range(USERS)],
        )
        db.commit()
        db.close()
        self._local = threading.local()

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, check_same_thread=False)

    @property
    def conn(self) -> sqlite3.Connection:
        if not hasattr(self._local, "conn"):
            self._local.conn = self._connect()
        conn: sqlite3.Connection = self._local.conn
        return conn

    def load_user(self, uid: int) -> dict[str, object] | None:
        with self._lock:
            self.queries += 1
        time.sleep(0.0005)  # a real database is not in-process
        row = self.conn.execute(
            "SELECT id, name, plan, version FROM users WHERE id = ?", (uid,)
        ).fetchone()
        return (
            None if row is None else dict(zip(("id", "name", "plan", "version"), row, strict=True))
        )

    def save_user(self, user: dict[str, object]) -> None:
        self.conn.execute(
            "UPDATE users SET name = ?, plan = ?, version = ? WHERE id = ?",
            (user["name"], user["plan"], user["version"], user["id"]),
        )
        self.conn.commit()

    def plan_counts(self) -> dict[str, int]:
        with self._lock:
            self.queries += 1
        return dict(self.conn.execute("SELECT plan, count(*) FROM users GROUP BY plan").fetchall())


def zipf_ids(n: int, rng: random.Random) -> list[int]:
    weights = [1 / (i + 1) for i in range(USERS)]
    return rng.choices(range(USERS), weights=weights, k=n)


def main() -> None:
    with ExitStack() as stack:
        url = os.environ.get("HITRATE_REDIS_URL") or os.environ.get("REDIS_URL")
        if not url:
            server = stack.enter_context(EmbeddedServer.start())
            url = server.url
            print(f"started a private {server.flavour} server at {url}")
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        db = Database(tmp / "shop.db")
        cache = Cache.from_url(
            url,
            prefix=f"demo-{os.getpid()}",
            policies={"user": USER, "config": REFERENCE, "report": AGGREGATE},
        )
        stack.callback(cache.invalidate_pattern, "*")

        # 1. cache-aside with a decorator
        @cache.cached(key="user:{uid}")
        def get_user(uid: int) -> dict[str, object] | None:
            return db.load_user(uid)

        rng = random.Random(7)
        t0 = time.perf_counter()
        for uid in zipf_ids(READS, rng):
            get_user(uid)
        elapsed = time.perf_counter() - t0
        print(
            f"\n1. cache-aside: {READS} Zipf-skewed profile reads in {elapsed:.2f}s, "
            f"{db.queries} database queries ({READS - db.queries} avoided)"
        )

        # 2. write-through keeps the cache consistent with the database
        user = get_user(3)
        assert user is not None
        user = {**user, "plan": "enterprise", "version": int(user["version"]) + 1}  # type: ignore[call-overload]
        cache.write_through("user:3", user, db.save_user)
        print(f"2. write-through: user 3 -> {get_user(3)}")

        # 3. stampede: 32 threads miss the same key at once; the loader runs once
        loads = []

        def slow_report() -> dict[str, int]:
            loads.append(1)
            time.sleep(0.05)
            return db.plan_counts()

        threads = [
            threading.Thread(target=cache.get_or_fetch, args=("report:plans", slow_report))
            for _ in range(32)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        print(f"3. stampede: 32 concurrent misses -> {len(loads)} load(s)")

        # 4. invalidation: by key, by tag, by SCAN pattern (untrusted parts escaped)
        cache.set("config:site", {"theme": "dark"}, ttl=REFERENCE)
        for i in range(5):
            cache.get_or_fetch(f"user:3:order:{i}", lambda i=i: {"order": i}, tags=["user:3"])
            cache.set(f"user:4:order:{i}", {"order": i})
        by_key = cache.invalidate("config:site")
        by_tag = cache.invalidate_tag("user:3")
        by_pattern = cache.invalidate_pattern("user:" + escape_glob("4") + ":order:*")
        print(f"4. invalidate: key={by_key}, tag={by_tag}, pattern={by_pattern}")

        # 5. monitoring
        info = redis.Redis.from_url(url).info()
        print("5. hit rate per family (this process):")
        for family, counts in sorted(cache.counters.snapshot().items()):
            if counts.hits + counts.misses:
                print(
                    f"   {family:8} {counts.hit_rate:6.2f}%  hits={counts.hits} "
                    f"misses={counts.misses} loads={counts.loads}"
                )
        print(f"   server: used_memory={info['used_memory_human']} keys={cache.client.dbsize()}")
        print(f"\nhitrate {hitrate.__version__}: done.")


if __name__ == "__main__":
    main()
