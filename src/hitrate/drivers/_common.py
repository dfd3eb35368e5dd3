"""What the two drivers share: error handling, the breaker, owed delivery, in-process
flights and background-refresh bookkeeping (see :mod:`hitrate.drivers`)."""

from __future__ import annotations

import logging
import threading
from typing import Any

import redis.exceptions as rexc

from ..breaker import Breaker
from ..errors import (
    CacheUnavailableError,
    CircuitOpenError,
    ConfigurationError,
    MisconfiguredError,
    translate,
)
from ..health import refused, server_url
from ..keys import family_of
from ..ops import Batch, Eval, Spawn
from ..owed import OwedDeliveryInProgress
from ..plans import Context

__all__ = ["MAX_BACKGROUND"]

log = logging.getLogger("hitrate")

MAX_BACKGROUND = 64  # background refreshes queued or running per driver; more are refused


def _eval_args(op: Eval) -> tuple[Any, ...]:
    return (op.script.sha, len(op.keys), *op.keys, *op.args)


def _redis_error(exc: BaseException) -> bool:
    return isinstance(exc, rexc.RedisError | OSError) and not isinstance(exc, rexc.NoScriptError)


def _pool_exhausted(exc: BaseException) -> bool:
    """No pooled connection was free in time: the program is busier than its pool, which
    says nothing about Redis (the call fails open; the breaker does not count it)."""
    return isinstance(exc, rexc.MaxConnectionsError) or (
        isinstance(exc, rexc.ConnectionError) and "No connection available" in str(exc)
    )


class _Flight:
    """One in-process fill that other threads wait on."""

    __slots__ = ("done", "error", "published", "sent_at", "since", "value")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: Any = None
        self.published = False
        self.sent_at = 0.0  # when the Redis command that vouched for the value was sent
        self.since: int | None = None  # a load while Redis is down: ctx.write_seq at its call
        self.error: BaseException | None = None


_NOT_READ: Any = object()


def _replay(reply: Any) -> Any:
    if isinstance(reply, CacheUnavailableError):
        raise reply
    return reply


def _refuse_awaitable(result: Any) -> None:
    """The sync driver was handed an async loader: close what it returned (no "never
    awaited" warning) and say what to use instead."""
    close = getattr(result, "close", None) or getattr(result, "cancel", None)
    if close is not None:
        close()
    raise ConfigurationError(
        f"the loader returned {type(result).__name__} {result!r}, which the sync Cache "
        "cannot await: an async loader needs AsyncCache (or cache.aio) in async code; "
        "pass a plain function to Cache"
    )


class _LeaderGone(Exception):
    """The task filling a key was cancelled; a waiting task takes over."""


_UNPUBLISHED = object()  # the leader's value is not safe to share: waiters go on alone


class _Base:
    def __init__(self, ctx: Context, *, strict: bool, breaker: Breaker) -> None:
        self.ctx = ctx
        self.strict = strict
        self.breaker = breaker
        self._refreshing: set[str] = set()  # keys with a background refresh here

    def _describe(self, op: Any) -> str:
        if isinstance(op, tuple):
            return f"{op[0]} {op[1]!r}" if len(op) > 1 else str(op[0])
        if isinstance(op, Eval):
            return f"script {op.script.name} on {op.keys[0]!r}"
        if isinstance(op, Batch):
            return f"a pipeline of {len(op.ops)} commands"
        return repr(op)

    def _failed(self, exc: BaseException, op: Any) -> CacheUnavailableError:
        err = translate(exc, self._describe(op), server_url(getattr(self, "client", None)))
        assert err is not None
        if _pool_exhausted(exc):
            pass  # this process is busier than its pool: nothing wrong with Redis
        elif err.outage:  # only outages open the breaker; a misconfiguration is logged loudly
            self.breaker.failure(err.cause, loud=isinstance(err, MisconfiguredError))
        else:  # Redis answered (WRONGTYPE at one key, ...): it works, other keys stay cached
            self.breaker.success()
            refused(err.cause)
        family = self._family(op)
        if family is not None:
            self.ctx.stats.incr(family, "errors")
        return err

    def _family(self, op: Any) -> str | None:
        """The key family an operation was for (errors are counted per family), if any."""
        if isinstance(op, Batch):
            op = op.ops[0] if op.ops else None
        rkey = op.keys[0] if isinstance(op, Eval) and op.keys else None
        if isinstance(op, tuple) and len(op) > 1 and isinstance(op[1], str):
            rkey = op[1]
        entry = self.ctx.keys.entry_of(rkey) if rkey is not None else None
        return family_of(self.ctx.keys.user_key(entry)) if entry is not None else None

    def _check(self, op: Any) -> None:
        if not self.breaker.allow():
            raise CircuitOpenError(f"Redis is down (circuit open); skipped {self._describe(op)}")

    def _claim_owed(self) -> None:
        if not self.ctx.owed.claim():
            raise OwedDeliveryInProgress(
                "invalidations owed since Redis was unreachable are being delivered by "
                "another call; this one is served from the loader meanwhile"
            )

    def _may_spawn(self, op: Spawn, running: int) -> bool:
        if op.key in self._refreshing or running >= MAX_BACKGROUND:
            return False
        if op.key:
            self._refreshing.add(op.key)
        return True
