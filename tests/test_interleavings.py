"""Every interleaving of a reader's {lease, load, fill} with writers' {write, invalidate} or
{begin, save, end}, stepped one operation at a time through the real plans and the real
Lua scripts. After each schedule the cache must hold nothing or the database's current row,
and a read that began after a write finished must return that write's row or newer.

The plans are stepped by hand (no driver loop), so each schedule is exact and repeatable;
the naive cache-aside, stepped the same way, fails the same check.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from hitrate import Cache, plans
from hitrate.codec import decode_entry
from hitrate.ops import CALL, Batch, Coalesce, Eval, Publish, Sleep, Spawn

KEY = "row:1"


class DB:
    def __init__(self) -> None:
        self.version = 0

    def read(self) -> dict[str, int]:
        return {"version": self.version}

    def write(self, _row: Any = None) -> dict[str, int]:
        self.version += 1
        return {"version": self.version}


class Actor:
    """Steps one plan: each ``step()`` performs one Redis command or user call."""

    def __init__(self, name: str, cache: Cache, plan: Any, call: Callable[[], Any]) -> None:
        self.name, self.cache, self.plan, self.call = name, cache, plan, call
        self.done = False
        self.result: Any = None
        self.first_step_at: int | None = None
        self.last_step_at: int | None = None
        self.op = self._advance(None)

    def _advance(self, reply: Any) -> Any:
        try:
            op = self.plan.send(reply)
            while isinstance(op, Coalesce | Publish | Sleep | Spawn):
                op = self.plan.send(None)  # single-process, no waiting: nothing to do
            return op
        except StopIteration as stop:
            self.done, self.result = True, stop.value
            return None

    def step(self, clock: int) -> None:
        if self.done:
            return
        if self.first_step_at is None:
            self.first_step_at = clock
        op = self.op
        if op is CALL:
            reply = self.call()
        elif isinstance(op, tuple | Eval | Batch):
            reply = self.cache._driver.redis(op)
        else:  # pragma: no cover
            raise AssertionError(op)
        self.op = self._advance(reply)
        self.last_step_at = clock


def schedules(a: int, b: int) -> Iterator[tuple[int, ...]]:
    """All orders of a steps of actor 0 and b steps of actor 1."""
    for positions in itertools.combinations(range(a + b), a):
        yield tuple(0 if i in positions else 1 for i in range(a + b))


def run_schedule(make: Callable[[], list[Actor]], order: tuple[int, ...]) -> list[Actor]:
    actors = make()
    clock = 0
    for who in order:
        clock += 1
        actors[who].step(clock)
    for actor in actors:  # anything left (a refused fill's caller returning, ...)
        while not actor.done:
            clock += 1
            actor.step(clock)
    return actors


def cached_version(cache: Cache) -> int | None:
    raw = redis.Redis.from_url(cache_url(cache)).get(cache.redis_key(KEY))
    if raw is None:
        return None
    return int(decode_entry(cache._ctx.codec, KEY, raw).value["version"])


def cache_url(cache: Cache) -> str:
    kw = cache.client.connection_pool.connection_kwargs
    return f"redis://{kw['host']}:{kw['port']}/{kw.get('db', 0)}"


READER_STEPS = 4  # GET, lease, load, fill
WRITERS = {
    "save+invalidate": 2,  # save, invalidate
    "write_through": 3,  # begin, save, end
}


def make_writer(kind: str, cache: Cache, db: DB) -> Actor:
    if kind == "write_through":
        return Actor("writer", cache, plans.write_through(cache._ctx, KEY, {}, None), db.write)

    def save_then_invalidate() -> Any:
        yield CALL
        return (yield from plans.invalidate(cache._ctx, [KEY]))

    return Actor("writer", cache, save_then_invalidate(), db.write)


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_reader_against_writer_every_interleaving(cache: Cache, writer: str) -> None:
    orders = list(schedules(READER_STEPS, WRITERS[writer]))
    for order in orders:
        cache.invalidate(KEY)
        db = DB()
        cache.set(KEY, db.read())  # warm entry: version 0 ...
        cache.invalidate(KEY)  # ... then expired, so the reader misses
        reader = Actor("reader", cache, plans.get_or_fetch(cache._ctx, KEY, None), db.read)

        def make(reader: Actor = reader, db: DB = db) -> list[Actor]:
            return [reader, make_writer(writer, cache, db)]

        r, w = run_schedule(make, order)
        held = cached_version(cache)
        assert held in (None, db.version), f"{order}: cache holds {held}, db {db.version}"
        if r.first_step_at > w.last_step_at:
            assert r.result["version"] == db.version, order
    assert len(orders) == len(list(schedules(READER_STEPS, WRITERS[writer])))


def test_two_write_throughs_every_interleaving(cache: Cache) -> None:
    for order in schedules(3, 3):
        cache.invalidate(KEY)
        db = DB()

        def make(db: DB = db) -> list[Actor]:
            return [make_writer("write_through", cache, db) for _ in range(2)]

        actors = run_schedule(make, order)
        held = cached_version(cache)
        assert held in (None, db.version), f"{order}: cache holds {held}, db {db.version}"
        assert [a.done for a in actors] == [True, True]


def test_naive_cache_aside_fails_the_same_check(cache: Cache) -> None:
    """The ten-line version, stepped the same way: GET, load, SET vs. save, DELETE."""
    raw = redis.Redis.from_url(cache_url(cache))
    rkey = f"{cache.prefix}:naive"
    stale = 0
    for order in schedules(3, 2):
        raw.delete(rkey)
        db = DB()

        def reader(db: DB = db) -> Any:
            got = yield ("GET", rkey)
            if got is not None:
                return json.loads(got)
            row = yield CALL
            yield ("SET", rkey, json.dumps(row), "EX", 60)
            return row

        def writer() -> Any:
            yield CALL
            yield ("DEL", rkey)

        actors = run_schedule(
            lambda db=db, reader=reader, writer=writer: [
                Actor("r", cache, reader(), db.read),
                Actor("w", cache, writer(), db.write),
            ],
            order,
        )
        got = raw.get(rkey)
        if got is not None and json.loads(got)["version"] != db.version:
            stale += 1
        assert all(a.done for a in actors)
    assert stale > 0  # the stale set: load old row, writer saves + deletes, reader SETs


def test_fill_during_tag_invalidation_stays_tagged(cache: Cache) -> None:
    """A reader that refills a tagged entry while invalidate_tag runs: either the refill is
    deleted by it, or it stays in the tag set for the next invalidation (never orphaned)."""
    for step in range(4):
        cache.invalidate_tag("users")
        cache.get_or_fetch("user:1", lambda: "v1", ttl=60, tags=["users"])
        plan = plans.invalidate_tag(cache._ctx, "users")
        reply: Any = None
        n = 0
        while True:
            try:
                op = plan.send(reply)
            except StopIteration:
                break
            if n == step:
                cache.get_or_fetch("user:1", lambda: "v2", ttl=60, tags=["users"])
            reply = cache._driver.redis(op)
            n += 1
        cache.invalidate_tag("users")
        assert cache.get_or_fetch("user:1", lambda: "v3", ttl=60, tags=["users"]) == "v3", step
