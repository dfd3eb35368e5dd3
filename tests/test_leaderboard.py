"""Leaderboards (``cache.leaderboard``) on real servers, sync and async."""

from __future__ import annotations

import math
import threading
import time

import pytest
import redis

import hitrate
from hitrate import Cache, InvalidArgumentError, Ranked

from .structs import Caches, calls, delta, keys_under

pytest_plugins = ["tests.structs_plugin"]  # fixtures: c (sync and async), raw, dead_url


async def test_add_top_rank_score_size_remove(c: Caches) -> None:
    board = c.leaderboard("weekly")
    assert await board.add("ada", 50) == 1
    assert await board.add("bob", 70) == 1
    assert await board.add("cy", 20.5) == 3
    assert await board.top(2) == [Ranked("bob", 70.0, 1), Ranked("ada", 50.0, 2)]
    assert await board.top(10, offset=1) == [Ranked("ada", 50.0, 2), Ranked("cy", 20.5, 3)]
    assert await board.top(0) == []
    assert await board.rank("bob") == 1
    assert await board.rank("cy") == 3
    assert await board.rank("nobody") is None
    assert await board.score("cy") == 20.5
    assert await board.score("nobody") is None
    assert await board.size() == 3
    assert await board.add("ada", 80) == 1  # set, not add: ada moves up
    assert await board.score("ada") == 80.0
    assert await board.remove("bob", "nobody") == 1
    assert await board.size() == 2
    assert await board.clear() is True
    assert await board.size() == 0


async def test_incr_starts_at_zero_and_returns_the_new_score(c: Caches) -> None:
    board = c.leaderboard("points")
    assert await board.incr("ada") == 1.0
    assert await board.incr("ada", 10) == 11.0
    assert await board.incr("ada", -2.5) == 8.5
    assert await board.incr("bob", 0) == 0.0
    assert await board.top() == [Ranked("ada", 8.5, 1), Ranked("bob", 0.0, 2)]
    assert str((await board.top())[1].score) == "0.0"  # not -0.0


async def test_ties_rank_by_member_ascending_everywhere(c: Caches) -> None:
    board = c.leaderboard("ties")
    # Inserted in an order unrelated to the tie-break, with equal scores.
    for member in ["dan", "bob", "eve", "ada", "cy"]:
        await board.add(member, 10)
    await board.add("zed", 11)
    await board.add("aaa", 9)
    expected = ["zed", "ada", "bob", "cy", "dan", "eve", "aaa"]
    assert [r.member for r in await board.top(10)] == expected
    assert [await board.rank(m) for m in expected] == list(range(1, 8))
    assert [r.member for r in await board.around("cy", 1)] == ["bob", "cy", "dan"]
    assert [r.member for r in await board.page(2, 3)] == ["cy", "dan", "eve"]


async def test_around_clips_at_the_edges(c: Caches) -> None:
    board = c.leaderboard("edges")
    await board.add_many({f"m{i:02d}": 100 - i for i in range(10)})  # m00 best ... m09
    assert await board.around("m05", 2) == [
        Ranked("m03", 97.0, 4),
        Ranked("m04", 96.0, 5),
        Ranked("m05", 95.0, 6),
        Ranked("m06", 94.0, 7),
        Ranked("m07", 93.0, 8),
    ]
    assert [r.rank for r in await board.around("m00", 2)] == [1, 2, 3]
    assert [r.rank for r in await board.around("m09", 2)] == [8, 9, 10]
    assert await board.around("m05", 0) == [Ranked("m05", 95.0, 6)]
    assert await board.around("absent", 2) == []


async def test_page_is_one_based(c: Caches) -> None:
    board = c.leaderboard("pages")
    assert await board.add_many({f"p{i}": i for i in range(1, 8)}) == 7
    assert [r.member for r in await board.page(1, 3)] == ["p7", "p6", "p5"]
    assert [r.rank for r in await board.page(3, 3)] == [7]
    assert await board.page(4, 3) == []


async def test_keep_trims_to_the_best_n_on_every_write(c: Caches, raw: redis.Redis) -> None:
    board = c.leaderboard("best", keep=3)
    assert await board.add("a", 1) == 1
    assert await board.add_many({"b": 2, "c": 3, "d": 4}) == 3
    assert [r.member for r in await board.top(10)] == ["d", "c", "b"]
    assert await board.add("low", 0) is None  # trimmed at once: not on the board
    assert await board.incr("b", 10) == 12.0
    assert await board.incr("e", 1) == 1.0  # counted, then trimmed away
    assert [r.member for r in await board.top(10)] == ["b", "d", "c"]
    assert raw.zcard(board.redis_key) == 3


def test_keep_holds_under_concurrent_writers(cache: Cache, raw: redis.Redis) -> None:
    board = cache.leaderboard("race", keep=5)
    stop = threading.Event()
    sizes: list[int] = []
    written: list[int] = []

    def write(n: int) -> None:
        i, mine = 0, []
        while not stop.is_set():
            board.add(f"w{n}-{i}", i % 97)
            mine.append(i % 97)
            i += 1
        written.extend(mine)

    writers = [threading.Thread(target=write, args=(n,)) for n in range(8)]
    for t in writers:
        t.start()
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:
        sizes.append(raw.zcard(board.redis_key))
    stop.set()
    for t in writers:
        t.join()
    assert max(sizes) <= 5, "a write was seen before its trim"
    assert [r.score for r in board.top(10)] == sorted(written, reverse=True)[:5]


async def test_ttl_is_none_by_default_and_renewed_by_writes(c: Caches, raw: redis.Redis) -> None:
    plain = c.leaderboard("forever")
    await plain.add("a", 1)
    assert raw.pttl(plain.redis_key) == -1
    daily = c.leaderboard("daily", ttl=60)
    await daily.add("a", 1)
    raw.pexpire(daily.redis_key, 5000)
    await daily.incr("a", 1)
    assert 58_000 <= raw.pttl(daily.redis_key) <= 60_000
    await daily.add_many({"b": 2})
    assert 58_000 <= raw.pttl(daily.redis_key) <= 60_000


async def test_family_policy_gives_the_ttl(c: Caches, raw: redis.Redis) -> None:
    board = c.on(c.make(policies={"games": 120})).leaderboard("games:chess")
    await board.add("a", 1)
    assert 118_000 <= raw.pttl(board.redis_key) <= 120_000


@pytest.mark.parametrize("score", ["10", None, float("nan"), True, b"1", [1]], ids=repr)
async def test_non_numeric_score_is_refused_and_nothing_written(
    c: Caches, raw: redis.Redis, score: object
) -> None:
    board = c.leaderboard("bad")
    with pytest.raises(InvalidArgumentError, match="number"):
        await board.add("a", score)
    with pytest.raises(InvalidArgumentError, match="number"):
        await board.incr("a", score)
    with pytest.raises(InvalidArgumentError, match="'b'"):
        await board.add_many({"a": 1, "b": score, "c": 3})
    assert keys_under(raw, c.prefix) == []


async def test_bad_arguments_are_refused(c: Caches, raw: redis.Redis) -> None:
    board = c.leaderboard("bad")
    for member in ["", 42, None]:
        with pytest.raises(InvalidArgumentError, match="member"):
            await board.add(member, 1)
    with pytest.raises(InvalidArgumentError, match="n must be >= 0"):
        await board.top(-1)
    with pytest.raises(InvalidArgumentError, match="page number"):
        await board.page(0)
    for keep in [0, -5, 2.5, True]:
        with pytest.raises(hitrate.ConfigurationError, match="keep"):
            c.leaderboard("bad", keep=keep)
    with pytest.raises(hitrate.InvalidKeyError, match="empty"):
        c.leaderboard("")
    assert keys_under(raw, c.prefix) == []


async def test_infinite_scores_are_allowed(c: Caches) -> None:
    board = c.leaderboard("inf")
    await board.add("top", math.inf)
    await board.add("bottom", -math.inf)
    await board.add("mid", 0)
    assert await board.top() == [
        Ranked("top", math.inf, 1),
        Ranked("mid", 0.0, 2),
        Ranked("bottom", -math.inf, 3),
    ]


async def test_100k_members_top_rank_around_are_single_round_trips(
    c: Caches, raw: redis.Redis
) -> None:
    board = c.leaderboard("big")
    members = {f"player:{i:06d}": (i * 7919) % 100_003 for i in range(100_000)}
    assert await board.add_many(members) == 100_000
    assert await board.size() == 100_000
    expected = sorted(members.items(), key=lambda kv: (-kv[1], kv[0]))
    await board.around("player:000000", 1)  # load the script (EVAL on NOSCRIPT) first

    watched = ("zrange", "zrank", "zscore", "zcard", "evalsha", "eval", "hgetall")
    before = calls(raw, *watched)
    top = await board.top(10)
    assert delta(before, calls(raw, *watched)) == {**dict.fromkeys(watched, 0), "zrange": 1}
    assert [(r.member, r.score) for r in top] == [(m, float(s)) for m, s in expected[:10]]

    member, _ = expected[54_321]
    before = calls(raw, *watched)
    assert await board.rank(member) == 54_322
    assert delta(before, calls(raw, *watched)) == {**dict.fromkeys(watched, 0), "zrank": 1}

    before = calls(raw, *watched)
    around = await board.around(member, 3)
    # One EVALSHA from the client; the ZRANK and ZRANGE ran inside that script.
    assert delta(before, calls(raw, *watched)) == {
        **dict.fromkeys(watched, 0),
        "evalsha": 1,
        "zrank": 1,
        "zrange": 1,
    }
    assert [(r.member, r.rank) for r in around] == [
        (m, i + 1) for i, (m, _) in enumerate(expected) if 54_318 <= i <= 54_324
    ]


async def test_redis_down_raises_even_without_strict(c: Caches, dead_url: str) -> None:
    board = c.on(c.make(url=dead_url)).leaderboard("down")
    with pytest.raises(hitrate.CacheUnavailableError):
        await board.top(3)
    with pytest.raises(hitrate.CacheUnavailableError):
        await board.add("a", 1)
