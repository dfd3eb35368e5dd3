"""``cache.leaderboard(name)``: a sorted-set leaderboard, highest score first.

**Ties.** Members with equal scores are ordered by member name, ascending (``"ada"`` ranks
above ``"bob"``), the same in ``top``, ``rank``, ``around`` and ``page`` — like SQL's
``ORDER BY score DESC, member ASC``. To make it so, scores are stored negated in Redis
(``ZRANGE`` ascending is then best first, and Redis orders equal scores by member); the
verbs negate them back, so this only shows in ``redis-cli``. For "first to reach a score
ranks higher", fold the time into the score yourself (``points + 1 - t / 1e10``).

Scores are IEEE doubles (Redis's): integers are exact up to 2**53.

**Cost.** ``top``, ``page``, ``rank`` and ``score`` are one command each and ``around`` is
one Lua call: a single round trip, O(log n + k) on the server, whatever the size.
``keep=N`` trims the board to its best N inside the same Lua call as each write.

A leaderboard is data, not a copy of data: it has no expiry unless ``ttl=`` (or a policy
for the name's family) is given, and then every write renews it. When Redis is
unreachable the verbs raise :class:`~hitrate.CacheUnavailableError` (there is nothing to
fall back on).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any, NamedTuple

from .. import scripts
from ..errors import ConfigurationError, InvalidArgumentError
from ..ops import Batch, Eval
from ..plans import Context
from ..policy import TTLLike
from ._base import (
    CHUNK,
    Awaited,
    PlanOf,
    Structure,
    Synced,
    expiry_ms,
    integer,
    structure_policy,
    text,
    verb,
)

__all__ = ["AsyncLeaderboard", "Leaderboard", "Ranked"]


class Ranked(NamedTuple):
    """One leaderboard entry: ``member, score, rank = row`` (rank 1 is the best)."""

    member: str
    score: float
    rank: int


def _score(value: Any, what: str = "score") -> str:
    """A score as the (negated) text Redis stores; refuses anything but a real number."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidArgumentError(
            f"{what} must be a number (int or float), not {type(value).__name__} {value!r}"
        )
    number = float(value)
    if math.isnan(number):
        raise InvalidArgumentError(f"{what} must be a number, not NaN")
    return repr(-number)


def _member(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidArgumentError(
            f"leaderboard members are non-empty strings, got {type(value).__name__} {value!r}"
        )
    return value


def _unstored(raw: Any) -> float:
    """A score as Redis returned it (the negated text, or a float) as the real score."""
    number = -float(raw.decode() if isinstance(raw, bytes) else raw)
    return number + 0.0  # -0.0 -> 0.0


def _rows(reply: list[Any], first_rank: int) -> list[Ranked]:
    """ZRANGE WITHSCORES as entries ranked from *first_rank*. The reply is flat
    ``[member, score, ...]`` (RESP2, and from Lua) or ``[[member, score], ...]`` (RESP3)."""
    pairs = (
        reply
        if reply and isinstance(reply[0], list | tuple)
        else zip(reply[::2], reply[1::2], strict=True)
    )
    return [
        Ranked(text(member), _unstored(score), first_rank + i)
        for i, (member, score) in enumerate(pairs)
    ]


class _Leaderboard(Structure):
    __slots__ = ("_keep", "_key", "_policy", "name")

    def __init__(
        self, ctx: Context, driver: Any, name: str, *, keep: int | None, ttl: TTLLike
    ) -> None:
        super().__init__(ctx, driver)
        self._key = ctx.keys.structure("lb", name, "leaderboard name")
        if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 1):
            raise ConfigurationError(f"keep must be a positive int (the best N), not {keep!r}")
        self.name = name
        self._keep = keep or 0
        self._policy = structure_policy(ctx, name, ttl)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, keep={self._keep or None})"

    @property
    def redis_key(self) -> str:
        """The sorted set's Redis key, e.g. ``app:~lb:{weekly}``."""
        return self._key

    def _write(self, mode: str, pairs: list[str]) -> Eval:
        px = expiry_ms(self._ctx, self._policy)
        return Eval(scripts.LB_WRITE, [self._key], (self._keep, px, mode, *pairs))

    @verb
    def add(self, member: str, score: float) -> PlanOf[int | None]:
        """Set *member*'s score (adding it if new). Returns its rank afterwards (1 = best),
        or None when ``keep=`` trimmed it off the board."""
        pair = [_score(score), _member(member)]
        _, *rank = yield self._write("set", pair)
        return None if not rank or rank[0] is None else int(rank[0]) + 1

    @verb
    def add_many(self, scores: Mapping[str, float]) -> PlanOf[int]:
        """Set many scores at once (pipelined; each chunk of 5,000 is atomic with its trim
        and expiry). Returns how many members were new."""
        pairs: list[str] = []
        for member, score in scores.items():
            pairs += (_score(score, f"score of {member!r}"), _member(member))
        if not pairs:
            return 0
        step = CHUNK * 10
        replies = yield Batch(
            [self._write("set", pairs[i : i + step]) for i in range(0, len(pairs), step)]
        )
        return sum(int(reply[0]) for reply in replies)

    @verb
    def incr(self, member: str, by: float = 1) -> PlanOf[float]:
        """Add *by* to *member*'s score (from 0 if new); returns the new score."""
        pair = [_score(by, "by"), _member(member)]
        stored, *_ = yield self._write("incr", pair)
        return _unstored(stored)

    @verb
    def top(self, n: int = 10, offset: int = 0) -> PlanOf[list[Ranked]]:
        """The best *n* entries after skipping *offset*, best first. One ``ZRANGE``."""
        integer(n, "n")
        integer(offset, "offset")
        if n == 0:
            return []
        flat = yield ("ZRANGE", self._key, offset, offset + n - 1, "WITHSCORES")
        return _rows(flat, offset + 1)

    @verb
    def page(self, k: int, size: int = 10) -> PlanOf[list[Ranked]]:
        """Page *k* (1 = the first) of *size* entries: ``top(size, offset=(k - 1) * size)``."""
        integer(k, "page number k", minimum=1)
        integer(size, "page size", minimum=1)
        offset = (k - 1) * size
        flat = yield ("ZRANGE", self._key, offset, offset + size - 1, "WITHSCORES")
        return _rows(flat, offset + 1)

    @verb
    def rank(self, member: str) -> PlanOf[int | None]:
        """*member*'s rank, 1 = the best, or None if it is not on the board. One ``ZRANK``."""
        found = yield ("ZRANK", self._key, _member(member))
        return None if found is None else int(found) + 1

    @verb
    def score(self, member: str) -> PlanOf[float | None]:
        """*member*'s score, or None if it is not on the board."""
        found = yield ("ZSCORE", self._key, _member(member))
        return None if found is None else _unstored(found)

    @verb
    def around(self, member: str, n: int = 5) -> PlanOf[list[Ranked]]:
        """*member*'s entry with up to *n* entries above and *n* below it (fewer at the top
        or bottom of the board), best first; ``[]`` if it is not on the board. One Lua call."""
        integer(n, "n")
        found = yield Eval(scripts.LB_AROUND, [self._key], (_member(member), n))
        if found is None:
            return []
        return _rows(found[1], int(found[0]) + 1)

    @verb
    def remove(self, *members: str) -> PlanOf[int]:
        """Take members off the board; returns how many were on it."""
        if not members:
            return 0
        removed = yield ("ZREM", self._key, *(_member(m) for m in members))
        return int(removed)

    @verb
    def size(self) -> PlanOf[int]:
        """How many members are on the board."""
        return int((yield ("ZCARD", self._key)))

    @verb
    def clear(self) -> PlanOf[bool]:
        """Delete the whole board; returns whether it existed."""
        return bool((yield ("UNLINK", self._key)))


class Leaderboard(_Leaderboard, Synced):
    """A leaderboard for :class:`~hitrate.Cache`::

    board = cache.leaderboard("weekly", keep=1000)
    board.incr("ada", 50)
    board.top(3)              # [Ranked(member='ada', score=50.0, rank=1), ...]
    board.rank("ada")         # 1
    board.around("ada", 2)    # ada with two entries above and two below
    """

    __slots__ = ()


class AsyncLeaderboard(_Leaderboard, Awaited):
    """The asyncio twin of :class:`Leaderboard`: the same verbs, awaited."""

    __slots__ = ()
