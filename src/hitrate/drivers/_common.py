"""What the two drivers share - everything but the I/O: the loop that runs a plan
(:meth:`_Base._steps`, which yields the I/O it needs to each driver's small trampoline),
error handling and the breaker, owed delivery, in-process flights and background-refresh
bookkeeping (see :mod:`hitrate.drivers`)."""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Generator, Sequence
from typing import Any

import redis.exceptions as rexc

from ..breaker import Breaker
from ..errors import (
    CacheUnavailableError,
    CircuitOpenError,
    ConfigurationError,
    MisconfiguredError,
    client_failure,
    translate,
)
from ..health import refused, server_url
from ..keys import family_of
from ..listener import Waiter
from ..ops import (
    ALONE,
    CALL,
    LEAD,
    TIMEOUT,
    Batch,
    CallWith,
    Coalesce,
    EachNode,
    Eval,
    Plan,
    Publish,
    Sleep,
    Spawn,
)
from ..owed import OwedDeliveryInProgress
from ..plans import Context

__all__ = ["MAX_BACKGROUND", "ClusterCursor", "pools_of", "scan_next", "scan_start"]

log = logging.getLogger("hitrate")

MAX_BACKGROUND = 64  # background refreshes queued or running per driver; more are refused


def _eval_args(op: Eval) -> tuple[Any, ...]:
    return (op.script.sha, len(op.keys), *op.keys, *op.args)


def _redis_error(exc: BaseException) -> bool:
    """A failure of Redis or of the client talking to it (see :func:`client_failure`)."""
    if isinstance(exc, rexc.NoScriptError):
        return False
    return isinstance(exc, rexc.RedisError | rexc.RedisClusterException | OSError) or (
        client_failure(exc)
    )


def _pool_exhausted(exc: BaseException) -> bool:
    """No pooled connection was free in time: the program is busier than its pool, which
    says nothing about Redis (the call fails open; the breaker does not count it)."""
    return isinstance(exc, rexc.MaxConnectionsError) or (
        isinstance(exc, rexc.ConnectionError) and "No connection available" in str(exc)
    )


class ClusterCursor(int):
    """A SCAN cursor on Redis Cluster, where a SCAN covers every primary in turn: truthy
    (so plans go on) until the last primary's scan ends, when the driver returns ``0``.
    It carries the primaries (as listed when the scan began), which one is being scanned
    and that node's own cursor. A plain non-zero cursor (an owed scan resumed) starts over:
    scanning again only deletes again what matches."""

    state: tuple[Sequence[Any], int, int]

    def __new__(cls, state: tuple[Sequence[Any], int, int]) -> ClusterCursor:
        cursor = super().__new__(cls, 1)
        cursor.state = state
        return cursor


def scan_start(
    cursor: Any, primaries: Callable[[], Sequence[Any]]
) -> tuple[Sequence[Any], int, int]:
    """Where a Cluster SCAN with *cursor* goes on: (primaries, which one, its cursor)."""
    if isinstance(cursor, ClusterCursor):
        return cursor.state
    return list(primaries()), 0, 0


def scan_next(nodes: Sequence[Any], i: int, reply: Any, found: list[Any]) -> tuple[Any, list[Any]]:
    """The cursor after one node's SCAN reply (``{node: cursor}``), and the keys found."""
    cursor = int(next(iter(reply.values())) if isinstance(reply, dict) else reply)
    if cursor == 0:
        i, cursor = i + 1, 0
    return (0 if i >= len(nodes) else ClusterCursor((nodes, i, cursor))), found


def pools_of(client: Any) -> list[Any]:
    """The connection pools of a sync client: its own, or one per node of a Cluster."""
    pool = getattr(client, "connection_pool", None)
    if pool is not None:
        return [pool]
    nodes = getattr(client, "get_nodes", None)
    if nodes is None:
        return []
    return [
        node.redis_connection.connection_pool
        for node in nodes()
        if getattr(node, "redis_connection", None) is not None
    ]


class _Flight:
    """One in-process fill that other threads (tasks) wait on; ``done`` is a
    ``threading.Event`` in the sync driver, an ``asyncio.Event`` in the async one."""

    __slots__ = ("done", "error", "published", "sent_at", "since", "value")

    def __init__(self, done: Any) -> None:
        self.done = done
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
        f"the function given to the sync Cache (a loader, or write_through's save) returned "
        f"{type(result).__name__} {result!r}, which it cannot await: async functions need "
        "AsyncCache (or cache.aio) in async code; pass a plain function to Cache"
    )


#: What the shared loop (:meth:`_Base._steps`) asks its driver to do, the only I/O there is:
#: ``(REDIS, op)``, ``(CALL_USER, fn)``, ``(SLEEP, seconds)``, ``(JOIN, flight, timeout)``
#: (wait for another caller's flight; reply True when it landed, False on timeout).
REDIS, CALL_USER, SLEEP, JOIN = "redis", "call", "sleep", "join"


class _Base:
    def __init__(self, ctx: Context, *, strict: bool, breaker: Breaker) -> None:
        self.ctx = ctx
        self.strict = strict
        self.breaker = breaker
        self._refreshing: set[str] = set()  # keys with a background refresh here
        self._flights: dict[str, _Flight] = {}
        self._flights_lock = threading.Lock()
        self.background = False  # the timer's driver (stats flushes, owed work)
        #: Wakes callers waiting for another process's fill (hitrate.listener); None: poll.
        self.listener: Any = None

    def _event(self) -> Any:
        """A fresh event for a flight (threading or asyncio)."""
        raise NotImplementedError

    def _waiter(self, rkey: str) -> Waiter:
        """A waiter for the fill of *rkey*, registered with the listener."""
        waiter = Waiter(rkey, self._event(), self._wake_loop())
        self.listener.register(waiter)
        return waiter

    def _wake_loop(self) -> Any:
        """The event loop a waiter is woken through (None: a threading event)."""
        return None

    def _spawn(self, op: Spawn, call: Callable[[], Any] | None) -> bool:
        raise NotImplementedError

    def _land(self, key: str, flight: _Flight) -> None:
        """The flight is over: later callers start their own, waiters wake up."""
        with self._flights_lock:
            if self._flights.get(key) is flight:
                del self._flights[key]
        flight.done.set()

    # -- the loop, written once: plans in, I/O requests out ---------------------------------
    def _steps(
        self, plan: Plan, call: Callable[[], Any] | None, first: Any
    ) -> Generator[Any, Any, Any]:
        """Run *plan*, yielding the I/O it needs to the driver's trampoline (``run``), which
        sends back the result or throws what the I/O raised. *first*, when given, is the
        reply (or :class:`CacheUnavailableError`) to the plan's first Redis command, which
        the caller already sent (the hit fast path), so it is not sent twice.

        However a step ends - a reply, a Redis error, the loader raising, an interruption -
        what happened is thrown into the plan, so it can give its lease back and close its
        write window before the exception goes on."""
        ctx, monotonic = self.ctx, self.ctx.monotonic
        flight: _Flight | None = None
        flight_key = ""
        sent_at = 0.0
        called_seq = 0
        send: Any = None
        throw: BaseException | None = None
        waiter: Waiter | None = None
        try:
            while True:
                try:
                    op = plan.throw(throw) if throw is not None else plan.send(send)
                except StopIteration as stop:
                    return stop.value
                send, throw = None, None
                if type(op) is tuple or isinstance(op, Eval | Batch | EachNode):
                    try:
                        if flight is not None:
                            sent_at = monotonic()
                        if first is _NOT_READ:
                            send = yield (REDIS, op)
                        else:
                            send, first = _replay(first), _NOT_READ
                    except CacheUnavailableError as exc:
                        if self.strict:
                            raise
                        throw = exc
                    except BaseException as exc:  # interrupted: the plan cleans up first
                        throw = exc
                elif op is CALL or isinstance(op, CallWith):
                    assert call is not None
                    called_seq = ctx.write_seq
                    fn = functools.partial(call, *op.args) if isinstance(op, CallWith) else call
                    try:
                        send = yield (CALL_USER, fn)
                    except BaseException as exc:
                        throw = exc
                elif isinstance(op, Sleep):
                    try:
                        if op.wake and self.listener is not None:
                            # Woken by the fill (see hitrate.listener), or polls as before.
                            if waiter is None:
                                waiter = self._waiter(op.wake)
                            yield (JOIN, waiter, op.seconds)
                            waiter.done.clear()
                        else:
                            yield (SLEEP, op.seconds)
                    except BaseException as exc:
                        throw = exc
                elif isinstance(op, Spawn):
                    send = self._spawn(op, call)
                elif isinstance(op, Coalesce):
                    with self._flights_lock:
                        leader = self._flights.get(op.rkey)
                        if leader is None:
                            flight_key = op.rkey
                            flight = self._flights[op.rkey] = _Flight(self._event())
                    if leader is None:
                        send = LEAD
                        continue
                    joined, joined_seq = monotonic(), ctx.write_seq
                    if not (yield (JOIN, leader, op.wait)):
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
                    send = ALONE  # unpublished, too old for us, or its caller was cancelled
                elif isinstance(op, Publish):
                    if flight is not None and not flight.done.is_set():
                        flight.value, flight.published = op.value, True
                        flight.sent_at = sent_at
                        flight.since = called_seq if op.loaded else None
                        self._land(flight_key, flight)
                else:  # pragma: no cover - a plan bug
                    raise TypeError(f"plan yielded {op!r}")
        except Exception as exc:  # shown to waiters; a cancelled leader's waiters go on alone
            if flight is not None and not flight.done.is_set():
                flight.error = exc
            raise
        finally:
            if flight is not None:
                self._land(flight_key, flight)
            if waiter is not None:
                self.listener.unregister(waiter)

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
        if _pool_exhausted(exc):  # this process is busier than its pool: says nothing
            self.breaker.abandon()  # about Redis (a probe slot it held goes back)
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
            if not self.background:  # callers are active: owed work is theirs to deliver
                self.ctx.owed.foreground_at = time.monotonic()
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
