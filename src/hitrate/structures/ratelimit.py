"""``cache.rate_limiter(name, limit, per, algorithm=...)``: precise, atomic rate limits.

Each decision is one Lua script on the server's clock (``TIME``), so every host agrees on
time, and every state key gets its expiry inside the same script that writes it.

``fixed_window``
    At most ``limit`` units per window of ``per`` seconds, windows aligned to the Unix
    epoch on the server clock. Exact. Up to 2 x limit can pass around a window boundary.
``sliding_window`` (the default)
    The exact *log* variant, not the two-counter approximation: each allowed unit is
    recorded with its server time, so at most ``limit`` units pass in **any** span of
    ``per`` seconds. Memory: up to ``limit`` small members per identity.
``gcra``
    The generic cell rate algorithm: a token bucket of ``burst`` tokens (default
    ``limit``) refilled at ``limit / per``, kept as one number per identity. Over any span
    of ``d`` seconds at most ``burst + d * limit / per`` units pass, spaced out instead of
    bunched at window starts.

When Redis is unreachable a limiter **fails open** by default (requests are allowed,
counted as ``fail_open`` under the family ``rl:<name>``): a rate limiter should not take
the site down with Redis. ``fail_closed=True`` denies instead (for limits that protect
something expensive, or login attempts). A cache made with ``strict=True`` raises
:class:`~hitrate.CacheUnavailableError` either way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from .. import scripts
from ..errors import CacheUnavailableError, ConfigurationError, InvalidArgumentError
from ..ops import Eval
from ..plans import Context
from ._base import Awaited, PlanOf, Structure, Synced, verb

__all__ = ["ALGORITHMS", "AsyncRateLimiter", "Decision", "RateLimiter"]

#: Algorithm names, with their short aliases.
ALGORITHMS = {
    "fixed_window": "fixed_window",
    "fixed": "fixed_window",
    "sliding_window": "sliding_window",
    "sliding": "sliding_window",
    "gcra": "gcra",
}
_SUFFIX = {"fixed_window": "fixed", "sliding_window": "sliding", "gcra": "gcra"}
US = 1_000_000  # microseconds per second: the scripts count in integer microseconds


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer to ``limiter.hit(identity)``.

    * ``allowed`` - whether the request may go ahead (also the truth value:
      ``if limiter.hit(ip): ...``)
    * ``remaining`` - units the identity may still use right now, after this request
    * ``retry_after`` - seconds until a request of this cost would be allowed (0 if it was)
    * ``reset_after`` - seconds until the identity's limit is fully available again
    """

    allowed: bool
    remaining: int
    retry_after: float
    reset_after: float

    def __bool__(self) -> bool:
        return self.allowed


def _positive_seconds(per: float | timedelta) -> float:
    seconds = per.total_seconds() if isinstance(per, timedelta) else per
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise ConfigurationError(f"per must be seconds or a timedelta, not {per!r}")
    if not math.isfinite(seconds) or seconds < 1e-3:
        raise ConfigurationError(f"per must be at least 0.001 seconds, not {per!r}")
    return float(seconds)


def _count(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{what} must be a positive int, not {value!r}")
    return value


class _RateLimiter(Structure):
    __slots__ = (
        "_family",
        "_limit_args",
        "_max_cost",
        "algorithm",
        "burst",
        "fail_closed",
        "limit",
        "name",
        "per",
    )

    def __init__(
        self,
        ctx: Context,
        driver: Any,
        name: str,
        limit: int,
        per: float | timedelta,
        algorithm: str = "sliding_window",
        *,
        burst: int | None = None,
        fail_closed: bool = False,
    ) -> None:
        super().__init__(ctx, driver)
        ctx.keys.limiter(name, "-", "x")  # validates the name
        self.name = name
        self.limit = _count(limit, "limit")
        self.per = _positive_seconds(per)
        if algorithm not in ALGORITHMS:
            raise ConfigurationError(
                f"unknown rate-limit algorithm {algorithm!r}: use 'fixed_window', "
                "'sliding_window' or 'gcra'"
            )
        self.algorithm = ALGORITHMS[algorithm]
        if burst is not None and self.algorithm != "gcra":
            raise ConfigurationError("burst= is for algorithm='gcra' only")
        self.burst = _count(burst, "burst") if burst is not None else self.limit
        self.fail_closed = bool(fail_closed)
        self._family = f"rl:{name}"
        per_us = round(self.per * US)
        if self.algorithm == "gcra":
            # T rounded up: the refill rate never exceeds limit/per.
            self._limit_args: tuple[int, ...] = (max(1, -(-per_us // self.limit)), self.burst)
            self._max_cost = self.burst
        else:
            self._limit_args = (self.limit, per_us)
            self._max_cost = self.limit

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.name!r}, limit={self.limit}, per={self.per}, "
            f"algorithm={self.algorithm!r})"
        )

    def redis_key(self, identity: str | int) -> str:
        """The Redis key of *identity*'s state, e.g. ``app:~rl:{api:alice}:sliding``."""
        return self._ctx.keys.limiter(self.name, identity, _SUFFIX[self.algorithm])

    def _decide(self, identity: str | int, cost: int, consume: bool) -> PlanOf[Decision]:
        key = self.redis_key(identity)  # validates the identity before anything is sent
        if isinstance(cost, bool) or not isinstance(cost, int) or cost < 1:
            raise InvalidArgumentError(f"cost must be a positive int, not {cost!r}")
        if cost > self._max_cost:
            raise InvalidArgumentError(
                f"cost {cost} is more than this limiter ever allows at once "
                f"({self._max_cost}); it could never be allowed"
            )
        flag = "1" if consume else "0"
        if self.algorithm == "fixed_window":
            op = Eval(scripts.RL_FIXED, [key], (*self._limit_args, cost, flag))
        elif self.algorithm == "sliding_window":
            op = Eval(scripts.RL_SLIDING, [key], (*self._limit_args, cost, flag, self._ctx.token()))
        else:
            op = Eval(scripts.RL_GCRA, [key], (*self._limit_args, cost, flag))
        try:
            allowed, remaining, retry_us, reset_us = yield op
        except CacheUnavailableError:
            self._ctx.stats.incr(self._family, "fail_open")
            if self.fail_closed:
                wait = min(self.per, 1.0)
                return Decision(False, 0, wait, wait)
            return Decision(True, self._max_cost - cost, 0.0, 0.0)
        return Decision(bool(allowed), int(remaining), int(retry_us) / US, int(reset_us) / US)

    @verb
    def hit(self, identity: str | int, cost: int = 1) -> PlanOf[Decision]:
        """Count a request of *cost* units by *identity* (a user id, an IP, an API key) if
        the limit allows it; denied requests use nothing. One atomic script."""
        return (yield from self._decide(identity, cost, True))

    @verb
    def peek(self, identity: str | int, cost: int = 1) -> PlanOf[Decision]:
        """Whether a request of *cost* would be allowed now, using nothing; ``remaining``
        is what is left now."""
        return (yield from self._decide(identity, cost, False))

    @verb
    def reset(self, identity: str | int) -> PlanOf[bool]:
        """Forget *identity*'s usage (its full limit is available again)."""
        return bool((yield ("UNLINK", self.redis_key(identity))))


class RateLimiter(_RateLimiter, Synced):
    """A rate limiter for :class:`~hitrate.Cache`::

    api = cache.rate_limiter("api", limit=100, per=60)          # sliding window
    decision = api.hit(user_id)
    if not decision:
        return 429, {"Retry-After": str(math.ceil(decision.retry_after))}
    """

    __slots__ = ()


class AsyncRateLimiter(_RateLimiter, Awaited):
    """The asyncio twin of :class:`RateLimiter`: the same verbs, awaited."""

    __slots__ = ()
