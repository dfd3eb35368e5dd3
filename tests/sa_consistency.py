"""The consistency checker (tests/consistency.py) run through the ORM: writer threads
commit versioned rows through sessions, reader threads (and a reader process) read them
through ``FromCache`` queries and through ``get_or_fetch`` keys invalidated by a model
rule. The property: no read that starts after a commit returned sees an older version.

Run as a module, it is the reader process: ``python -m tests.sa_consistency REDIS_URL
PREFIX DB_URL SECONDS`` prints its log as JSON lines.
"""

from __future__ import annotations

import json
import random
import sys
import threading
import time
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.orm.exc import StaleDataError

from hitrate import Cache
from hitrate.contrib.sqlalchemy import FromCache, ORMCache

from .consistency import Op
from .sa_models import Row, make_engine

KEYS = [1, 2, 3]


def setup(cache: Cache, db_url: str, orm_class: type[ORMCache] = ORMCache) -> sessionmaker[Session]:
    engine = make_engine(db_url)
    maker = sessionmaker(engine)
    orm = orm_class(cache)
    orm.model(Row, "rowv:{id}")
    orm.attach(maker)
    return maker


def seed(db_url: str) -> None:
    engine = make_engine(db_url)
    with Session(engine) as s:
        s.add_all([Row(id=k, version=0) for k in KEYS])
        s.commit()
    engine.dispose()


def read_one(cache: Cache, maker: sessionmaker[Session], k: int, way: int) -> int:
    with maker() as s:
        if way == 0:  # a cached query
            stmt = select(Row).where(Row.id == k).options(FromCache(key=f"row:{k}"))
            return s.scalars(stmt).one().version

        def load() -> int:  # cache-aside of a value, invalidated by the model rule
            return s.get_one(Row, k).version

        return int(cache.get_or_fetch(f"rowv:{k}", load))


def run(
    cache: Cache,
    maker: sessionmaker[Session],
    *,
    readers: int = 6,
    writers: int = 2,
    seconds: float = 2.0,
    commit_delay: float = 0.002,
    seed: int = 1,
    min_writes: int = 20,
) -> list[Op]:
    """Readers and writers for *seconds*, and on (up to 4 times as long, for a loaded
    machine) until the writers have committed *min_writes* times; returns the log.
    Writers wait *commit_delay* between their flush and their commit (a commit's round
    trip)."""
    log: list[Op] = []
    lock = threading.Lock()
    started = time.monotonic()
    done = threading.Event()
    committed = [0]
    errors: list[BaseException] = []

    def writing() -> bool:
        now = time.monotonic()
        if now < started + seconds or (committed[0] < min_writes and now < started + 4 * seconds):
            return True
        done.set()
        return False

    def reader(n: int) -> None:
        rng = random.Random(seed * 1000 + n)
        try:
            while not done.is_set() and (writers or time.monotonic() < started + seconds):
                k = rng.choice(KEYS)
                t0 = time.monotonic()
                version = read_one(cache, maker, k, n % 2)
                with lock:
                    log.append(Op("read", str(k), t0, time.monotonic(), version))
        except BaseException as exc:  # pragma: no cover - reported by the test
            errors.append(exc)

    def writer(n: int) -> None:
        rng = random.Random(seed * 2000 + n)
        try:
            while writing():
                k = rng.choice(KEYS)
                t0 = time.monotonic()
                with maker() as s:
                    row = s.get_one(Row, k, with_for_update=True)
                    row.note = f"{n}-{t0}"
                    try:
                        s.flush()
                    except StaleDataError:  # another writer committed it first (SQLite)
                        continue
                    version = row.version
                    time.sleep(commit_delay)
                    s.commit()
                with lock:
                    log.append(Op("write", str(k), t0, time.monotonic(), version))
                    committed[0] += 1
                time.sleep(rng.uniform(0, 0.004))
        except BaseException as exc:  # pragma: no cover - reported by the test
            errors.append(exc)
        finally:
            done.set()

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(readers)]
    threads += [threading.Thread(target=writer, args=(i,)) for i in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return log


def main(argv: list[str]) -> None:
    url, prefix, db_url, seconds = argv
    cache = Cache.from_url(url, prefix=prefix, timeout=2.0)
    maker = setup(cache, db_url)
    log = run(cache, maker, readers=3, writers=0, seconds=float(seconds), seed=7)
    for op in log:
        print(json.dumps(op.__dict__))
    cache.close()


def ops_from(lines: str) -> list[Op]:
    out: list[Op] = []
    for line in lines.splitlines():
        d: dict[str, Any] = json.loads(line)
        out.append(Op(**d))
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
