"""Run plans against Redis: one driver for redis-py's sync client, one for its asyncio client.

The drivers are the only place that talks to redis-py. They translate its errors (once,
via :func:`hitrate.errors.translate`), keep the circuit breaker, run Lua by EVALSHA with
EVAL on NOSCRIPT, coalesce concurrent fills of one key inside the process, deliver the
invalidations owed since an outage before anything else is sent, and run background
refreshes (bounded, one per key at a time, with the caller's ``contextvars``).

However a step ends - a reply, a Redis error, the loader raising, or an interruption
(``asyncio`` cancellation, ``KeyboardInterrupt``, a gevent timeout) - the driver throws
what happened into the plan, so the plan can give its lease back and close its write
window before the exception goes on to the caller.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import redis.exceptions as rexc

from .breaker import Breaker
from .errors import (
    CacheUnavailableError,
    CircuitOpenError,
    ConfigurationError,
    MisconfiguredError,
    translate,
)
from .health import refused, server_url
from .keys import family_of
from .ops import ALONE, CALL, LEAD, TIMEOUT, Batch, Coalesce, Eval, Plan, Publish, Sleep, Spawn
from .owed import OwedDeliveryInProgress
from .plans import MISSING, Context, fresh_value, get_or_fetch
from .plans import owed as owed_plan
from .policy import TTLLike

__all__ = ["MAX_BACKGROUND", "AsyncDriver", "SyncDriver"]

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


class SyncDriver(_Base):
    """Runs plans with a ``redis.Redis`` (or ``RedisCluster``) client."""

    def __init__(self, client: Any, ctx: Context, *, strict: bool, breaker: Breaker) -> None:
        super().__init__(ctx, strict=strict, breaker=breaker)
        self.client = client
        self._flights: dict[str, _Flight] = {}
        self._flights_lock = threading.Lock()
        self._workers: ThreadPoolExecutor | None = None
        self._background = 0

    def _spawn(self, op: Spawn, call: Callable[[], Any] | None) -> bool:
        with self._flights_lock:
            if not self._may_spawn(op, self._background):
                return False
            self._background += 1
            if self._workers is None:
                self._workers = ThreadPoolExecutor(4, thread_name_prefix="hitrate-refresh")
        context = contextvars.copy_context()  # the caller's request-scoped state
        self._workers.submit(context.run, self._run_logged, op, call)
        return True

    def _run_logged(self, op: Spawn, call: Callable[[], Any] | None) -> None:
        try:
            self.run(op.plan, call)
        except Exception:
            log.exception("hitrate: background refresh of %r failed", op.key)
        finally:
            with self._flights_lock:
                self._background -= 1
                self._refreshing.discard(op.key)

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

    def _send(self, op: Any) -> Any:
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
        if self.breaker.failures:
            self.breaker.success()
        return reply

    def _deliver_owed(self) -> None:
        """Deliver what is owed before anything else is sent (raises if it cannot)."""
        self._claim_owed()
        try:
            plan = owed_plan(self.ctx)
            send: Any = None
            while True:
                try:
                    op = plan.send(send)
                except StopIteration:
                    return
                send = self._send(op)  # a failure ends the plan and goes to the caller
        finally:
            self.ctx.owed.release()

    def redis(self, op: Any) -> Any:
        self._check(op)
        if self.ctx.owed.pending:
            self._deliver_owed()
        return self._send(op)

    def fetch(
        self,
        key: str,
        fetch: Callable[[], Any],
        ttl: TTLLike,
        tags: Sequence[str],
        unless: Callable[[Any], object] | None,
        vtype: Any,
    ) -> Any:
        """``get_or_fetch``: one GET, decided by :func:`~hitrate.plans.fresh_value` (a hit
        ends here), else the plan, handed the GET's reply so it is not sent twice."""
        ctx = self.ctx
        rkey, family = ctx.keys.locate(key)
        try:
            first: Any = self.redis(("GET", rkey))
        except CacheUnavailableError as exc:
            if self.strict:
                raise
            first = exc
        else:
            policy = ctx.family_policy(family, ttl)
            value = fresh_value(ctx, key, family, first, policy, vtype)
            if value is not MISSING:
                return value
        plan = get_or_fetch(ctx, key, ttl, tuple(tags), checked=True, unless=unless, vtype=vtype)
        return self.run(plan, fetch, first)

    # -- the loop -------------------------------------------------------------------------
    def run(self, plan: Plan, call: Callable[[], Any] | None = None, first: Any = _NOT_READ) -> Any:
        """Run *plan*; *call* is the user's function for CALL. *first*, when given, is the
        reply (or :class:`CacheUnavailableError`) to the plan's first Redis command, which
        the caller already sent (the hit fast path), so it is not sent twice."""
        flight: _Flight | None = None
        flight_key = ""
        sent_at = 0.0
        called_seq = 0
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
                    except BaseException as exc:  # interrupted: the plan cleans up first
                        throw = exc
                elif op is CALL:
                    assert call is not None
                    called_seq = self.ctx.write_seq
                    try:
                        send = call()
                        if inspect.isawaitable(send):
                            _refuse_awaitable(send)
                    except BaseException as exc:
                        throw = exc
                elif isinstance(op, Sleep):
                    try:
                        time.sleep(op.seconds)
                    except BaseException as exc:
                        throw = exc
                elif isinstance(op, Spawn):
                    send = self._spawn(op, call)
                elif isinstance(op, Coalesce):
                    with self._flights_lock:
                        leader = self._flights.get(op.rkey)
                        if leader is None:
                            flight_key = op.rkey
                            flight = self._flights[op.rkey] = _Flight()
                    if leader is None:
                        send = LEAD
                        continue
                    joined, joined_seq = time.monotonic(), self.ctx.write_seq
                    if not leader.done.wait(op.wait):
                        send = TIMEOUT  # waited the lease time: the plan loads by itself
                        continue
                    # Only a value vouched for by Redis after we arrived is fresh for us: a
                    # write may have completed between an earlier read and now. A load while
                    # Redis is down is shared unless this process wrote since it began.
                    if leader.published and (
                        leader.since == joined_seq
                        if leader.since is not None
                        else leader.sent_at > joined
                    ):
                        plan.close()
                        return leader.value
                    if leader.error is not None:
                        raise leader.error
                    send = ALONE  # unpublished, or too old for us: go on alone
                elif isinstance(op, Publish):
                    if flight is not None and not flight.done.is_set():
                        flight.value, flight.published = op.value, True
                        flight.sent_at = sent_at
                        flight.since = called_seq if op.loaded else None
                        self._land(flight_key, flight)
                else:  # pragma: no cover - a plan bug
                    raise TypeError(f"plan yielded {op!r}")
        except Exception as exc:
            if flight is not None and not flight.done.is_set():
                flight.error = exc
            raise
        finally:
            if flight is not None:
                self._land(flight_key, flight)

    def _land(self, key: str, flight: _Flight) -> None:
        """The flight is over: later callers start their own, waiters wake up."""
        with self._flights_lock:
            if self._flights.get(key) is flight:
                del self._flights[key]
        flight.done.set()


def _fresh_pool(pool: Any) -> Any:
    """A pool like *pool* for a new event loop: the old one's connections and its
    ``asyncio.Condition`` (a blocking pool's) belong to a loop that is gone."""
    options: dict[str, Any] = {"max_connections": pool.max_connections}
    if hasattr(pool, "timeout"):
        options["timeout"] = pool.timeout
    return type(pool)(connection_class=pool.connection_class, **options, **pool.connection_kwargs)


class AsyncDriver(_Base):
    """Runs plans with a ``redis.asyncio.Redis`` client. It follows the program from one
    event loop to the next (``asyncio.run`` called again, a test runner's loop per test):
    connections and in-process flights of a loop that is gone are dropped, not reused."""

    def __init__(self, client: Any, ctx: Context, *, strict: bool, breaker: Breaker) -> None:
        super().__init__(ctx, strict=strict, breaker=breaker)
        self.client = client
        self._flights: dict[str, asyncio.Future[Any]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    def _follow_loop(self) -> None:
        loop = asyncio.get_running_loop()
        if loop is self._loop:
            return
        if self._loop is not None:
            # Everything bound to the old loop is unusable here: its connections (their
            # streams), the futures of its flights, its background tasks.
            self._flights.clear()
            self._tasks.clear()
            self._refreshing.clear()
            pool = getattr(self.client, "connection_pool", None)
            if pool is not None:
                self.client.connection_pool = _fresh_pool(pool)
        self._loop = loop

    async def _run_logged(self, op: Spawn, call: Callable[[], Any] | None) -> None:
        try:
            await self.run(op.plan, call)
        except Exception:
            log.exception("hitrate: background refresh of %r failed", op.key)
        finally:
            self._refreshing.discard(op.key)

    def _spawn(self, op: Spawn, call: Callable[[], Any] | None) -> bool:
        if not self._may_spawn(op, len(self._tasks)):
            return False
        # create_task copies the caller's contextvars
        task = asyncio.get_running_loop().create_task(self._run_logged(op, call))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

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

    async def _send(self, op: Any) -> Any:
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
        if self.breaker.failures:
            self.breaker.success()
        return reply

    async def _deliver_owed(self) -> None:
        """See :meth:`SyncDriver._deliver_owed`."""
        self._claim_owed()
        try:
            plan = owed_plan(self.ctx)
            send: Any = None
            while True:
                try:
                    op = plan.send(send)
                except StopIteration:
                    return
                send = await self._send(op)
        finally:
            self.ctx.owed.release()

    async def redis(self, op: Any) -> Any:
        self._follow_loop()
        self._check(op)
        if self.ctx.owed.pending:
            await self._deliver_owed()
        return await self._send(op)

    async def fetch(
        self,
        key: str,
        fetch: Callable[[], Any],
        ttl: TTLLike,
        tags: Sequence[str],
        unless: Callable[[Any], object] | None,
        vtype: Any,
    ) -> Any:
        """See :meth:`SyncDriver.fetch`."""
        ctx = self.ctx
        rkey, family = ctx.keys.locate(key)
        try:
            first: Any = await self.redis(("GET", rkey))
        except CacheUnavailableError as exc:
            if self.strict:
                raise
            first = exc
        else:
            policy = ctx.family_policy(family, ttl)
            value = fresh_value(ctx, key, family, first, policy, vtype)
            if value is not MISSING:
                return value
        plan = get_or_fetch(ctx, key, ttl, tuple(tags), checked=True, unless=unless, vtype=vtype)
        return await self.run(plan, fetch, first)

    async def run(
        self, plan: Plan, call: Callable[[], Any] | None = None, first: Any = _NOT_READ
    ) -> Any:
        """Run *plan*; *call* is the user's function for CALL. *first*, when given, is the
        reply (or :class:`CacheUnavailableError`) to the plan's first Redis command, which
        the caller already sent (the hit fast path), so it is not sent twice."""
        self._follow_loop()
        flight: asyncio.Future[Any] | None = None
        flight_key = ""
        sent_at = 0.0
        called_seq = 0
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
                    except BaseException as exc:  # cancelled: the plan cleans up first
                        throw = exc
                elif op is CALL:
                    assert call is not None
                    called_seq = self.ctx.write_seq
                    try:
                        send = call()
                        if inspect.isawaitable(send):
                            send = await send
                    except BaseException as exc:
                        throw = exc  # on cancellation the plan gives its lease back first
                elif isinstance(op, Sleep):
                    try:
                        await asyncio.sleep(op.seconds)
                    except BaseException as exc:
                        throw = exc
                elif isinstance(op, Spawn):
                    send = self._spawn(op, call)
                elif isinstance(op, Coalesce):
                    leader = self._flights.get(op.rkey)
                    if leader is None:
                        flight_key = op.rkey
                        flight = self._flights[op.rkey] = asyncio.get_running_loop().create_future()
                        send = LEAD
                        continue
                    joined, joined_seq = time.monotonic(), self.ctx.write_seq
                    try:
                        result = await asyncio.wait_for(asyncio.shield(leader), op.wait)
                    except TimeoutError:
                        send = TIMEOUT  # waited the lease time: the plan loads by itself
                        continue
                    except _LeaderGone:
                        send = ALONE  # cancelled leader: go on alone
                        continue
                    # As in the sync driver: only a value vouched for after we arrived, or
                    # a load while Redis is down with no write of ours since it began.
                    if result is not _UNPUBLISHED and (
                        result[2] == joined_seq if result[2] is not None else result[1] > joined
                    ):
                        plan.close()
                        return result[0]
                    send = ALONE
                elif isinstance(op, Publish):
                    if flight is not None and not flight.done():
                        since = called_seq if op.loaded else None
                        flight.set_result((op.value, sent_at, since))
                        if self._flights.get(flight_key) is flight:
                            del self._flights[flight_key]
                else:  # pragma: no cover - a plan bug
                    raise TypeError(f"plan yielded {op!r}")
        except BaseException as exc:
            if flight is not None and not flight.done():
                # A cancelled leader hands the fill over to a waiter instead of failing it.
                flight.set_exception(exc if isinstance(exc, Exception) else _LeaderGone())
                flight.exception()  # mark retrieved: there may be no waiters
            raise
        finally:
            if flight is not None and self._flights.get(flight_key) is flight:
                del self._flights[flight_key]
