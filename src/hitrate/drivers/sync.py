"""The driver for redis-py's sync client (see :mod:`hitrate.drivers`)."""

from __future__ import annotations

import contextvars
import inspect
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import redis.exceptions as rexc

from ..breaker import Breaker
from ..errors import (
    CacheUnavailableError,
)
from ..health import server_url
from ..keys import tags_of
from ..ops import Batch, EachNode, Eval, Plan, Spawn
from ..owed import RETRY_INTERVAL, OwedDeliveryInProgress
from ..plans import LEAN_AT, MISSING, Context, fresh_value, get_or_fetch
from ..plans import owed as owed_plan
from ..policy import TTLLike
from ..slots import is_cluster, route, slot
from ._common import (
    _NOT_READ,
    CALL_USER,
    REDIS,
    SLEEP,
    _Base,
    _eval_args,
    _redis_error,
    _refuse_awaitable,
    log,
    pools_of,
    scan_next,
    scan_start,
)
from .direct import DIRECT_COMMANDS, sync_direct

__all__ = ["SyncDriver"]


class SyncDriver(_Base):
    """Runs plans with a ``redis.Redis`` (or ``RedisCluster``) client."""

    def __init__(self, client: Any, ctx: Context, *, strict: bool, breaker: Breaker) -> None:
        super().__init__(ctx, strict=strict, breaker=breaker)
        self.client = client
        self.cluster = is_cluster(client)
        self._direct = sync_direct(client)  # GET and MGET past redis-py's layers (.direct)
        self.sleep: Callable[[float], None] = time.sleep  # injectable, as ctx.monotonic is
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
            if self._direct is not None:
                return self._direct.call(("EVALSHA", *_eval_args(op)))
            return self.client.execute_command("EVALSHA", *_eval_args(op))
        except rexc.NoScriptError:
            return self.client.execute_command(
                "EVAL", op.script.source, len(op.keys), *op.keys, *op.args
            )

    def _target(self, item: Eval) -> dict[str, Any]:
        """A script's node in a Cluster pipeline, which redis-py 8 would otherwise ask the
        server for (COMMAND GETKEYS: a round trip per script)."""
        if not self.cluster or not item.keys:
            return {}
        return {"target_nodes": self.client.nodes_manager.get_node_from_slot(slot(item.keys[0]))}

    def _batch(self, op: Batch) -> list[Any]:
        pipe = self.client.pipeline(transaction=False)
        for item in op.ops:
            if isinstance(item, Eval):
                pipe.execute_command("EVALSHA", *_eval_args(item), **self._target(item))
            else:
                pipe.execute_command(*item)
        replies: list[Any] = pipe.execute(raise_on_error=False)
        unknown = [i for i, r in enumerate(replies) if isinstance(r, rexc.NoScriptError)]
        if unknown:  # a server that lost its scripts (or a node new to them): one more
            pipe = self.client.pipeline(transaction=False)  # round trip, by EVAL
            for i in unknown:
                item = op.ops[i]
                assert isinstance(item, Eval)
                pipe.execute_command(
                    "EVAL", item.script.source, len(item.keys), *item.keys, *item.args,
                    **self._target(item),
                )  # fmt: skip
            for i, reply in zip(unknown, pipe.execute(raise_on_error=False), strict=True):
                replies[i] = reply
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies

    def _scan(self, op: tuple[Any, ...]) -> tuple[Any, list[Any]]:
        """SCAN on Cluster: every primary in turn (see :class:`ClusterCursor`)."""
        nodes, i, cursor = scan_start(op[1], self.client.get_primaries)
        reply, found = self.client.execute_command("SCAN", cursor, *op[2:], target_nodes=nodes[i])
        return scan_next(nodes, i, reply, found)

    def _each_node(self, op: EachNode) -> list[tuple[str, Any]]:
        client = self.client
        if not self.cluster:
            return [(server_url(client), client.execute_command(*op.command))]
        return [
            (node.name, client.execute_command(*op.command, target_nodes=node))
            for node in client.get_primaries()
        ]

    def _send_cluster(self, op: Any) -> Any:
        if isinstance(op, tuple) and op[0] == "SCAN":
            return self._scan(op)
        cut = route(op)
        if cut is not None:
            return cut[1](self._batch(cut[0]))
        if isinstance(op, tuple):
            return self.client.execute_command(*op)
        return self._eval(op) if isinstance(op, Eval) else self._batch(op)

    def _send(self, op: Any) -> Any:
        try:
            if isinstance(op, tuple) and not self.cluster:  # a hit's GET: first
                direct = self._direct
                if direct is not None and op[0] in DIRECT_COMMANDS:
                    reply = direct.call(op)
                else:
                    reply = self.client.execute_command(*op)
            elif isinstance(op, EachNode):
                reply = self._each_node(op)
            elif self.cluster:
                reply = self._send_cluster(op)
            elif isinstance(op, Eval):
                reply = self._eval(op)
            else:
                reply = self._batch(op)
        except BaseException as exc:
            if isinstance(exc, Exception) and _redis_error(exc):
                err = self._failed(exc, op)
                if err.outage and self.breaker.is_open:
                    self._drop_idle()
                raise err from exc
            self.breaker.abandon()
            raise
        if self.breaker.failures:
            self.breaker.success()
        return reply

    def _drop_idle(self) -> None:
        """Redis is down: close the idle pooled connections, so none that died with it is
        reused (each would fail once more, and open the breaker again) when it is back."""
        try:
            for pool in pools_of(self.client):
                pool.disconnect(inuse_connections=False)
        except Exception:  # pragma: no cover - a client without a pool
            log.debug("hitrate: could not close idle connections", exc_info=True)

    def _deliver_owed(self) -> None:
        """Deliver what is owed before anything else is sent (raises if it cannot)."""
        self._claim_owed()
        try:
            self._run_owed(owed_plan(self.ctx))
        finally:
            self.ctx.owed.release()

    def _run_owed(self, plan: Plan) -> None:
        """Drive an owed-work plan: a failure is thrown into it, which drops what Redis
        refused and raises the rest."""
        send: Any = None
        throw: CacheUnavailableError | None = None
        while True:
            try:
                op = plan.throw(throw) if throw is not None else plan.send(send)
            except StopIteration:
                return
            send, throw = None, None
            try:
                send = self._send(op)
            except CacheUnavailableError as exc:  # the plan decides: drop, or raise
                throw = exc

    def deliver_owed(self) -> None:
        """The timer's delivery (on a driver and breaker of its own): the owed
        invalidations - unless calls of this process are delivering them (they do before
        anything else, and a slow background thread must not keep them waiting) - then
        the lease releases, which need no claim. Raises if Redis cannot be reached."""
        owed = self.ctx.owed
        self._check(("PING",))
        if owed.pending and time.monotonic() - owed.foreground_at >= RETRY_INTERVAL:
            try:
                self._deliver_owed()
            except OwedDeliveryInProgress:
                pass
            except BaseException:
                self.breaker.abandon()
                raise
        self._send(("PING",))  # answers this driver's probe
        self._run_owed(owed_plan(self.ctx, leases=True))

    def redis(self, op: Any) -> Any:
        self._check(op)
        if self.ctx.owed.pending:
            self.ctx.owed.foreground_at = time.monotonic()
            try:
                self._deliver_owed()
            except OwedDeliveryInProgress:
                self.breaker.abandon()  # nothing was sent: a probe slot goes back
                raise
        return self._send(op)

    def fetch(
        self,
        key: str,
        fetch: Callable[[], Any],
        ttl: TTLLike = None,
        tags: Sequence[str] = (),
        *,
        unless: Callable[[Any], object] | None = None,
        type: Any = None,
    ) -> Any:
        """``Cache.get_or_fetch`` (bound to the cache as that method, so a hit costs no extra
        call): one GET, decided by :func:`~hitrate.plans.fresh_value` (a hit ends here),
        else the plan, handed the GET's reply so it is not sent twice."""
        ctx = self.ctx
        rkey, family = ctx.keys.locate(key)
        if tags or ctx.lean.get(family, 0) >= LEAN_AT:
            tags = tags_of(tags)
            # Tagged: the plan reads the entry and its tags' versions in one round trip.
            # Misses likely: it starts with the lease script (see Context.likely_miss).
            leasing = ctx.likely_miss(family)
            plan = get_or_fetch(ctx, key, ttl, tags, unless=unless, vtype=type, leasing=leasing)
            return self.run(plan, fetch)
        try:
            first: Any = self.redis(("GET", rkey))
        except CacheUnavailableError as exc:
            if self.strict:
                raise
            first = exc
        else:
            policy = ctx.family_policy(family, ttl)
            value = fresh_value(ctx, key, family, first, policy, type)
            if value is not MISSING:
                return value
        plan = get_or_fetch(ctx, key, ttl, checked=True, unless=unless, vtype=type)
        return self.run(plan, fetch, first)

    # -- the trampoline: the shared loop's I/O, done synchronously -------------------------
    def run(self, plan: Plan, call: Callable[[], Any] | None = None, first: Any = _NOT_READ) -> Any:
        """Run *plan*; *call* is the user's function for CALL. *first*, when given, is the
        reply (or :class:`CacheUnavailableError`) to the plan's first Redis command, which
        the caller already sent (the hit fast path), so it is not sent twice."""
        steps = self._steps(plan, call, first)
        reply: Any = None
        throw: BaseException | None = None
        while True:
            try:
                request = steps.throw(throw) if throw is not None else steps.send(reply)
            except StopIteration as stop:
                return stop.value
            reply, throw = None, None
            kind = request[0]
            try:
                if kind is REDIS:
                    reply = self.redis(request[1])
                elif kind is CALL_USER:
                    reply = request[1]()
                    if inspect.isawaitable(reply):
                        _refuse_awaitable(reply)
                elif kind is SLEEP:
                    self.sleep(request[1])
                else:  # JOIN
                    reply = request[1].done.wait(request[2])
            except BaseException as exc:
                throw = exc

    def _event(self) -> threading.Event:
        return threading.Event()
