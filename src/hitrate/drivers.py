"""Run plans against Redis: one driver for redis-py's sync client, one for its asyncio client.

The drivers are the only place that talks to redis-py. They translate its errors (once,
via :func:`hitrate.errors.translate`), keep the circuit breaker, run Lua by EVALSHA with
EVAL on NOSCRIPT, coalesce concurrent fills of one key inside the process, and retry
invalidations that failed while Redis was down.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import redis.exceptions as rexc

from .breaker import Breaker
from .errors import CacheUnavailableError, CircuitOpenError, ConfigurationError, translate
from .keys import family_of
from .ops import CALL, Batch, Coalesce, Eval, Plan, Publish, Sleep, Spawn
from .plans import Context
from .plans import owed as owed_plan

__all__ = ["AsyncDriver", "SyncDriver"]

log = logging.getLogger("hitrate")


def _eval_args(op: Eval) -> tuple[Any, ...]:
    return (op.script.sha, len(op.keys), *op.keys, *op.args)


def _redis_error(exc: BaseException) -> bool:
    return isinstance(exc, rexc.RedisError | OSError) and not isinstance(exc, rexc.NoScriptError)


class _Flight:
    """One in-process fill that other threads wait on."""

    __slots__ = ("done", "error", "published", "sent_at", "value")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: Any = None
        self.published = False
        self.sent_at = 0.0  # when the Redis command that vouched for the value was sent
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

    def _describe(self, op: Any) -> str:
        if isinstance(op, tuple):
            return f"{op[0]} {op[1]!r}" if len(op) > 1 else str(op[0])
        if isinstance(op, Eval):
            return f"script {op.script.name} on {op.keys[0]!r}"
        if isinstance(op, Batch):
            return f"a pipeline of {len(op.ops)} commands"
        return repr(op)

    def _failed(self, exc: BaseException, op: Any) -> CacheUnavailableError:
        err = translate(exc, self._describe(op))
        assert err is not None
        self.breaker.failure()
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


class SyncDriver(_Base):
    """Runs plans with a ``redis.Redis`` (or ``RedisCluster``) client."""

    def __init__(self, client: Any, ctx: Context, *, strict: bool, breaker: Breaker) -> None:
        super().__init__(ctx, strict=strict, breaker=breaker)
        self.client = client
        self._flights: dict[str, _Flight] = {}
        self._flights_lock = threading.Lock()
        self._workers: ThreadPoolExecutor | None = None

    def _background(self, plan: Plan, call: Callable[[], Any] | None) -> None:
        if self._workers is None:
            with self._flights_lock:
                if self._workers is None:
                    self._workers = ThreadPoolExecutor(4, thread_name_prefix="hitrate-refresh")
        self._workers.submit(self._run_logged, plan, call)

    def _run_logged(self, plan: Plan, call: Callable[[], Any] | None) -> None:
        try:
            self.run(plan, call)
        except Exception:
            log.exception("hitrate: background refresh failed")

    def close(self) -> None:
        """Wait for background refreshes to finish."""
        if self._workers is not None:
            self._workers.shutdown(wait=True)
            self._workers = None

    # -- Redis steps --------------------------------------------------------------------
    def _eval(self, op: Eval) -> Any:
        try:
            return self.client.execute_command("EVALSHA", *_eval_args(op))
        except rexc.NoScriptError:
            return self.client.execute_command(
                "EVAL", op.script.source, len(op.keys), *op.keys, *op.args
            )

    def _batch(self, op: Batch) -> list[Any]:
        pipe = self.client.pipeline(transaction=False)
        for item in op.ops:
            if isinstance(item, Eval):
                pipe.execute_command("EVALSHA", *_eval_args(item))
            else:
                pipe.execute_command(*item)
        replies: list[Any] = pipe.execute(raise_on_error=False)
        for i, (item, reply) in enumerate(zip(op.ops, replies, strict=True)):
            if isinstance(reply, rexc.NoScriptError) and isinstance(item, Eval):
                replies[i] = self._eval(item)
            elif isinstance(reply, Exception):
                raise reply
        return replies

    def redis(self, op: Any) -> Any:
        if not self.breaker.allow():
            raise CircuitOpenError(f"Redis is down (circuit open); skipped {self._describe(op)}")
        try:
            if isinstance(op, tuple):
                reply = self.client.execute_command(*op)
            elif isinstance(op, Eval):
                reply = self._eval(op)
            else:
                reply = self._batch(op)
        except BaseException as exc:
            if isinstance(exc, Exception) and _redis_error(exc):
                raise self._failed(exc, op) from exc
            self.breaker.abandon()
            raise
        if self.breaker._failures:
            self.breaker.success()
        if self.ctx.owes:
            self.run(owed_plan(self.ctx))
        return reply

    # -- the loop -------------------------------------------------------------------------
    def run(self, plan: Plan, call: Callable[[], Any] | None = None, first: Any = _NOT_READ) -> Any:
        """Run *plan*; *call* is the user's function for CALL. *first*, when given, is the
        reply (or :class:`CacheUnavailableError`) to the plan's first Redis command, which
        the caller already sent (the hit fast path), so it is not sent twice."""
        flight: _Flight | None = None
        flight_key = ""
        sent_at = 0.0
        send: Any = None
        throw: BaseException | None = None
        try:
            while True:
                try:
                    op = plan.throw(throw) if throw is not None else plan.send(send)
                except StopIteration as stop:
                    return stop.value
                send, throw = None, None
                if type(op) is tuple or isinstance(op, Eval | Batch):
                    try:
                        if flight is not None:
                            sent_at = time.monotonic()
                        if first is _NOT_READ:
                            send = self.redis(op)
                        else:
                            send, first = _replay(first), _NOT_READ
                    except CacheUnavailableError as exc:
                        if self.strict:
                            raise
                        throw = exc
                elif op is CALL:
                    assert call is not None
                    try:
                        send = call()
                        if inspect.isawaitable(send):
                            _refuse_awaitable(send)
                    except Exception as exc:
                        throw = exc
                elif isinstance(op, Sleep):
                    time.sleep(op.seconds)
                elif isinstance(op, Spawn):
                    self._background(op.plan, call)
                elif isinstance(op, Coalesce):
                    with self._flights_lock:
                        leader = self._flights.get(op.rkey)
                        if leader is None:
                            flight_key = op.rkey
                            flight = self._flights[op.rkey] = _Flight()
                    if leader is not None:
                        joined = time.monotonic()
                        if not leader.done.wait(op.wait):
                            send = True  # waited the lease time: the plan loads by itself
                            continue
                        # Only a value vouched for by Redis after we arrived is fresh for
                        # us: a write may have completed between an earlier read and now.
                        if leader.published and leader.sent_at > joined:
                            plan.close()
                            return leader.value
                        if leader.error is not None:
                            raise leader.error
                        # Unpublished: go on alone (lease, wait or load).
                elif isinstance(op, Publish):
                    if flight is not None:
                        flight.value, flight.published = op.value, True
                        flight.sent_at = sent_at
                else:  # pragma: no cover - a plan bug
                    raise TypeError(f"plan yielded {op!r}")
        except Exception as exc:
            if flight is not None:
                flight.error = exc
            raise
        finally:
            if flight is not None:
                with self._flights_lock:
                    self._flights.pop(flight_key, None)
                flight.done.set()


class AsyncDriver(_Base):
    """Runs plans with a ``redis.asyncio.Redis`` client."""

    def __init__(self, client: Any, ctx: Context, *, strict: bool, breaker: Breaker) -> None:
        super().__init__(ctx, strict=strict, breaker=breaker)
        self.client = client
        self._flights: dict[str, asyncio.Future[Any]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    async def _run_logged(self, plan: Plan, call: Callable[[], Any] | None) -> None:
        try:
            await self.run(plan, call)
        except Exception:
            log.exception("hitrate: background refresh failed")

    async def close(self) -> None:
        """Wait for background refreshes to finish."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _eval(self, op: Eval) -> Any:
        try:
            return await self.client.execute_command("EVALSHA", *_eval_args(op))
        except rexc.NoScriptError:
            return await self.client.execute_command(
                "EVAL", op.script.source, len(op.keys), *op.keys, *op.args
            )

    async def _batch(self, op: Batch) -> list[Any]:
        pipe = self.client.pipeline(transaction=False)
        for item in op.ops:
            if isinstance(item, Eval):
                pipe.execute_command("EVALSHA", *_eval_args(item))
            else:
                pipe.execute_command(*item)
        replies: list[Any] = await pipe.execute(raise_on_error=False)
        for i, (item, reply) in enumerate(zip(op.ops, replies, strict=True)):
            if isinstance(reply, rexc.NoScriptError) and isinstance(item, Eval):
                replies[i] = await self._eval(item)
            elif isinstance(reply, Exception):
                raise reply
        return replies

    async def redis(self, op: Any) -> Any:
        if not self.breaker.allow():
            raise CircuitOpenError(f"Redis is down (circuit open); skipped {self._describe(op)}")
        try:
            if isinstance(op, tuple):
                reply = await self.client.execute_command(*op)
            elif isinstance(op, Eval):
                reply = await self._eval(op)
            else:
                reply = await self._batch(op)
        except BaseException as exc:
            if isinstance(exc, Exception) and _redis_error(exc):
                raise self._failed(exc, op) from exc
            self.breaker.abandon()
            raise
        if self.breaker._failures:
            self.breaker.success()
        if self.ctx.owes:
            await self.run(owed_plan(self.ctx))
        return reply

    async def run(
        self, plan: Plan, call: Callable[[], Any] | None = None, first: Any = _NOT_READ
    ) -> Any:
        """Run *plan*; *call* is the user's function for CALL. *first*, when given, is the
        reply (or :class:`CacheUnavailableError`) to the plan's first Redis command, which
        the caller already sent (the hit fast path), so it is not sent twice."""
        flight: asyncio.Future[Any] | None = None
        flight_key = ""
        sent_at = 0.0
        send: Any = None
        throw: BaseException | None = None
        try:
            while True:
                try:
                    op = plan.throw(throw) if throw is not None else plan.send(send)
                except StopIteration as stop:
                    if flight is not None and not flight.done():
                        flight.set_result(_UNPUBLISHED)
                    return stop.value
                send, throw = None, None
                if type(op) is tuple or isinstance(op, Eval | Batch):
                    try:
                        if flight is not None:
                            sent_at = time.monotonic()
                        if first is _NOT_READ:
                            send = await self.redis(op)
                        else:
                            send, first = _replay(first), _NOT_READ
                    except CacheUnavailableError as exc:
                        if self.strict:
                            raise
                        throw = exc
                elif op is CALL:
                    assert call is not None
                    try:
                        send = call()
                        if inspect.isawaitable(send):
                            send = await send
                    except (Exception, asyncio.CancelledError) as exc:
                        throw = exc  # on cancellation the plan gives its lease back first
                elif isinstance(op, Sleep):
                    await asyncio.sleep(op.seconds)
                elif isinstance(op, Spawn):
                    task = asyncio.get_running_loop().create_task(self._run_logged(op.plan, call))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                elif isinstance(op, Coalesce):
                    leader = self._flights.get(op.rkey)
                    if leader is None:
                        flight_key = op.rkey
                        flight = self._flights[op.rkey] = asyncio.get_running_loop().create_future()
                        continue
                    joined = time.monotonic()
                    try:
                        result = await asyncio.wait_for(asyncio.shield(leader), op.wait)
                    except TimeoutError:
                        send = True  # waited the lease time: the plan loads by itself
                        continue
                    except _LeaderGone:
                        continue  # cancelled leader: go on alone
                    # As in the sync driver: only a value vouched for after we arrived.
                    if result is not _UNPUBLISHED and result[1] > joined:
                        plan.close()
                        return result[0]
                elif isinstance(op, Publish):
                    if flight is not None and not flight.done():
                        flight.set_result((op.value, sent_at))
                else:  # pragma: no cover - a plan bug
                    raise TypeError(f"plan yielded {op!r}")
        except BaseException as exc:
            if flight is not None and not flight.done():
                # A cancelled leader hands the fill over to a waiter instead of failing it.
                flight.set_exception(exc if isinstance(exc, Exception) else _LeaderGone())
                flight.exception()  # mark retrieved: there may be no waiters
            raise
        finally:
            if flight is not None:
                self._flights.pop(flight_key, None)
