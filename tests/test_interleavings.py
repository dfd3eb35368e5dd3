"""Every interleaving of a reader's {lease, load, fill} with writers' {write, invalidate} or
{begin, save, end}, stepped one operation at a time through the real plans and the real
Lua scripts. After each schedule the cache must hold nothing or the database's current row,
and a read that began after a write finished must return that write's row or newer.

The plans are stepped by hand (no driver loop), so each schedule is exact and repeatable;
the naive cache-aside, stepped the same way, fails the same check.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from hitrate import Cache, plans
from hitrate.codec import decode_entry
from hitrate.ops import CALL, LEAD, Batch, Coalesce, Eval, Publish, Sleep, Spawn
from hitrate.policy import Policy
from hitrate.testing import FakeClock

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
    """Steps one plan: each ``step()`` performs one Redis command or user call. A plan it
    spawns (a background refresh) runs on after it, in the same actor's steps; with
    ``cancel_at=k``, a cancellation is thrown in at the k-th step instead of performing it."""

    def __init__(
        self,
        name: str,
        cache: Cache,
        plan: Any,
        call: Callable[[], Any],
        cancel_at: int | None = None,
    ) -> None:
        self.name, self.cache, self.plan, self.call = name, cache, plan, call
        self.done = False
        self.cancelled = False
        self.result: Any = None
        self.first_step_at: int | None = None
        self.last_step_at: int | None = None
        self.steps = 0
        self.cancel_at = cancel_at
        self.spawned: list[Any] = []
        self.op = self._advance(None)

    def _advance(self, reply: Any, throw: BaseException | None = None) -> Any:
        try:
            op = self.plan.throw(throw) if throw is not None else self.plan.send(reply)
            while isinstance(op, Coalesce | Publish | Sleep | Spawn):
                sent: Any = None  # single-process, no waiting: nothing to do
                if isinstance(op, Coalesce):
                    sent = LEAD
                elif isinstance(op, Spawn):
                    self.spawned.append(op.plan)
                    sent = True
                op = self.plan.send(sent)
            return op
        except StopIteration as stop:
            if self.spawned:  # the background refresh runs on
                self.plan = self.spawned.pop(0)
                return self._advance(None)
            self.done, self.result = True, stop.value
            return None
        except asyncio.CancelledError:
            self.done = self.cancelled = True
            return None

    def step(self, clock: int) -> None:
        if self.done:
            return
        if self.first_step_at is None:
            self.first_step_at = clock
        self.steps += 1
        op = self.op
        if self.steps == self.cancel_at:
            self.op = self._advance(None, asyncio.CancelledError())
            self.last_step_at = clock
            return
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


# -- pattern invalidation, cancellation and the refresh path -------------------------------


def _pattern_writer(cache: Cache, db: DB, naive: bool) -> Actor:
    """Save, then invalidate_pattern("row:*") one SCAN step at a time (COUNT 1, between
    decoy keys, so SCAN takes many calls). ``naive`` drops the fill-epoch change: the
    pattern invalidation as it was before fills were checked against it."""

    def plan() -> Any:
        yield CALL
        inner = plans.invalidate_pattern(cache._ctx, "row:*", count=1)
        reply: Any = None
        while True:
            try:
                op = inner.send(reply)
            except StopIteration as stop:
                return stop.value
            if naive and isinstance(op, tuple) and op[0] == "HSET":
                reply = 1
                continue
            reply = yield op

    return Actor("writer", cache, plan(), db.write)


def _pattern_trials(cache: Cache, naive: bool, trials: int = 250) -> int:
    rng = random.Random(7)
    raw = redis.Redis.from_url(cache_url(cache))
    for i in range(30):  # decoys outside the pattern: SCAN walks past them a call at a time
        cache.set(f"other:decoy{i}", 1)
    stale = 0
    for trial in range(trials):
        key = f"row:{trial}"  # where SCAN meets the entry and its lease varies by key
        db = DB()
        reader = Actor("reader", cache, plans.get_or_fetch(cache._ctx, key, None), db.read)
        writer = _pattern_writer(cache, db, naive)
        # The reader reads, takes the lease and loads the row before the writer's save
        # (its first step); its fill lands at a random point of the writer's steps.
        while reader.op is not CALL:
            reader.step(0)
        reader.step(0)  # loaded the old row
        order = [1] * 40
        order.insert(rng.randrange(1, 40), 0)
        run_schedule(lambda reader=reader, writer=writer: [reader, writer], tuple(order))
        held = raw.get(cache.redis_key(key))
        if held is not None and decode_entry(cache._ctx.codec, key, held).value != db.read():
            stale += 1
        cache.invalidate(key)
    raw.close()
    return stale


def test_fill_during_pattern_invalidation_is_refused(cache: Cache) -> None:
    """A value loaded before invalidate_pattern began never survives it, wherever its fill
    lands among the SCAN calls; the same schedules without the fill epoch do leave it."""
    assert _pattern_trials(cache, naive=False) == 0
    assert _pattern_trials(cache, naive=True) > 0


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_cancelled_reader_at_every_step_against_a_writer(cache: Cache, writer: str) -> None:
    """A reader cancelled at any of its steps, interleaved every way with a writer: no
    lease is left behind and the cache holds nothing or the current row."""
    raw = redis.Redis.from_url(cache_url(cache))
    lease_key = cache.redis_key(KEY) + ":lease"
    for cancel_at in range(1, READER_STEPS + 1):
        for order in schedules(READER_STEPS, WRITERS[writer]):
            cache.invalidate(KEY)
            db = DB()
            reader = Actor(
                "reader",
                cache,
                plans.get_or_fetch(cache._ctx, KEY, None),
                db.read,
                cancel_at=cancel_at,
            )

            def make(reader: Actor = reader, db: DB = db) -> list[Actor]:
                return [reader, make_writer(writer, cache, db)]

            r, _ = run_schedule(make, order)
            held = cached_version(cache)
            assert held in (None, db.version), f"{cancel_at} {order}: holds {held}"
            if r.cancelled:
                assert raw.exists(lease_key) == 0, f"{cancel_at} {order}: lease left behind"


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_background_refresh_against_a_writer_every_interleaving(
    url: str, prefix: str, writer: str
) -> None:
    """The stale-while-revalidate path: a caller served the stale row starts a refresh
    (lease, load, fill in the background) while a writer saves; the refresh never caches
    a row older than the write."""
    clock = FakeClock()
    cache = Cache.from_url(url, prefix=prefix, clock=clock)
    policy = Policy(10, stale=600)
    steps = 4  # GET, lease (refresh), load, fill
    for order in schedules(steps, WRITERS[writer]):
        cache.invalidate(KEY)
        db = DB()
        cache.set(KEY, db.read(), ttl=policy)
        clock.advance(20)  # stale: the next read serves it and refreshes
        reader = Actor("reader", cache, plans.get_or_fetch(cache._ctx, KEY, policy), db.read)

        def make(reader: Actor = reader, db: DB = db) -> list[Actor]:
            return [reader, make_writer(writer, cache, db)]

        run_schedule(make, order)
        held = cached_version(cache)
        assert held in (None, db.version), f"{order}: cache holds {held}, db {db.version}"
        clock.advance(-20)
    cache.close()
