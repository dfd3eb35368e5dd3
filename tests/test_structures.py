"""What every data structure promises alike: each atomic step touches one Redis Cluster hash
slot, and the sync and async classes have the same verbs."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
from redis.crc import key_slot

from hitrate import Cache
from hitrate.ops import Batch, Eval
from hitrate.structures import (
    AsyncLeaderboard,
    AsyncObjects,
    AsyncRateLimiter,
    AsyncSeen,
    AsyncUnique,
    Leaderboard,
    Objects,
    RateLimiter,
    Seen,
    Unique,
)
from hitrate.structures._base import verb_of

TWINS = [
    (Objects, AsyncObjects),
    (Leaderboard, AsyncLeaderboard),
    (Seen, AsyncSeen),
    (Unique, AsyncUnique),
    (RateLimiter, AsyncRateLimiter),
]


@pytest.mark.parametrize(("sync", "asyn"), TWINS, ids=lambda cls: cls.__name__)
def test_twins_have_the_same_verbs_from_one_definition(sync: type, asyn: type) -> None:
    verbs = {n for n in dir(sync) if verb_of(getattr(sync, n)) is not None}
    assert verbs
    assert verbs == {n for n in dir(asyn) if verb_of(getattr(asyn, n)) is not None}
    for name in verbs:
        # one plan, two drivers: both methods run the same definition
        assert verb_of(getattr(sync, name)) is verb_of(getattr(asyn, name))
        assert getattr(sync, name).__doc__, name
        assert inspect.iscoroutinefunction(getattr(asyn, name)), name


def test_async_verbs_return_awaitables(cache: Cache) -> None:
    board = cache.aio.leaderboard("aw")
    pending = board.size()
    assert inspect.isawaitable(pending)
    pending.close()  # type: ignore[attr-defined]


def _slots(op: Any) -> list[set[int]]:
    """The hash slots each atomic step of *op* touches."""
    if isinstance(op, Batch):
        return [s for item in op.ops for s in _slots(item)]
    if isinstance(op, Eval):
        return [{key_slot(k.encode()) for k in op.keys}]
    return [{key_slot(op[1].encode())}] if len(op) > 1 else []


def test_every_atomic_step_touches_one_hash_slot(cache: Cache) -> None:
    """Run every verb on a real server, recording each operation at the driver, so a key
    without the shared hash tag (CROSSSLOT on Redis Cluster) is caught without a cluster."""
    seen_ops: list[Any] = []
    driver = cache._driver
    send = driver.redis

    def record(op: Any) -> Any:
        seen_ops.append(op)
        return send(op)

    driver.redis = record  # type: ignore[method-assign]
    users = cache.objects("user")
    users.put(1, {"a": 1})
    users.get(1)
    users.get_field(1, "a")
    users.get_fields(1, "a", "b")
    users.update(1, a=2)
    users.invalidate(1, 2, 3)
    users.get_or_fetch(4, lambda: {"a": 4})
    board = cache.leaderboard("b", keep=10, ttl=60)
    board.add("x", 1)
    board.add_many({f"m{i}": i for i in range(20)})
    board.incr("x", 2)
    board.top(3)
    board.page(2, 3)
    board.rank("x")
    board.score("x")
    board.around("x", 2)
    board.remove("x")
    board.size()
    seen = cache.seen("s", ttl=60)
    seen.add("a")
    seen.add_many(["b", "c"])
    assert "a" in seen
    seen.count()
    seen.remove("a")
    cache.seen("w", window=60).add("a")
    day1, day2 = cache.unique("d1"), cache.unique("d2")
    day1.add("a", "b")
    day2.add("c")
    cache.unique("week", ttl=60).merge("d1", day2)
    day1.count()
    for algorithm in ("fixed_window", "sliding_window", "gcra"):
        limiter = cache.rate_limiter("api", limit=2, per=1, algorithm=algorithm)
        limiter.hit("alice")
        limiter.peek("alice")
        limiter.reset("alice")
    steps = [s for op in seen_ops for s in _slots(op)]
    assert len(steps) > 40
    assert [s for s in steps if len(s) != 1] == []
