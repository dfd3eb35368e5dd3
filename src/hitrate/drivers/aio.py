"""The driver for redis-py's asyncio client (see :mod:`hitrate.drivers`)."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import redis.exceptions as rexc

from ..breaker import Breaker
from ..errors import (
    CacheUnavailableError,
    client_failure,
)
from ..health import server_url
from ..keys import tags_of
from ..ops import Batch, EachNode, Eval, Plan, Spawn
from ..owed import OwedDeliveryInProgress
from ..plans import LEAN_AT, MISSING, Context, fresh_value, get_or_fetch
from ..plans import owed as owed_plan
from ..policy import TTLLike
from ..slots import is_cluster, route
from ._common import (
    _NOT_READ,
    CALL_USER,
    REDIS,
    SLEEP,
    _Base,
    _eval_args,
    _redis_error,
    log,
    scan_next,
    scan_start,
)
from .direct import DIRECT_COMMANDS, async_direct

__all__ = ["AsyncDriver"]

#: Commands that only read: safe to send again (see ``_send_cluster``).
_READS = frozenset({"GET", "MGET", "HGETALL", "HMGET", "EXISTS", "SMEMBERS", "SCARD"})


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
        self.cluster = is_cluster(client)
        self._direct = async_direct(client)  # GET and MGET past redis-py's layers (.direct)
        self.sleep: Callable[[float], Awaitable[None]] = asyncio.sleep  # injectable
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
            if self._direct is not None:
                return await self._direct.call(("EVALSHA", *_eval_args(op)))
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
        unknown = [i for i, r in enumerate(replies) if isinstance(r, rexc.NoScriptError)]
        if unknown:  # a server that lost its scripts (or a node new to them): one more
            pipe = self.client.pipeline(transaction=False)  # round trip, by EVAL
            for i in unknown:
                item = op.ops[i]
                assert isinstance(item, Eval)
                pipe.execute_command(
                    "EVAL", item.script.source, len(item.keys), *item.keys, *item.args
                )
            for i, reply in zip(unknown, await pipe.execute(raise_on_error=False), strict=True):
                replies[i] = reply
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies

    async def _primaries(self) -> list[Any]:
        """The cluster's primaries (an asyncio cluster client learns them on first use)."""
        client = self.client
        if not client.get_primaries():
            await client.initialize()
        return list(client.get_primaries())

    async def _scan(self, op: tuple[Any, ...]) -> tuple[Any, list[Any]]:
        """See :meth:`SyncDriver._scan`."""
        primaries = await self._primaries()
        nodes, i, cursor = scan_start(op[1], lambda: primaries)
        reply, found = await self.client.execute_command(
            "SCAN", cursor, *op[2:], target_nodes=nodes[i]
        )
        return scan_next(nodes, i, reply, found)

    async def _each_node(self, op: EachNode) -> list[tuple[str, Any]]:
        client = self.client
        if not self.cluster:
            return [(server_url(client), await client.execute_command(*op.command))]
        return [
            (node.name, await client.execute_command(*op.command, target_nodes=node))
            for node in await self._primaries()
        ]

    async def _send_cluster(self, op: Any) -> Any:
        if isinstance(op, tuple) and op[0] == "SCAN":
            return await self._scan(op)
        cut = route(op)
        if cut is not None:
            return cut[1](await self._batch(cut[0]))
        if isinstance(op, tuple):
            try:
                return await self.client.execute_command(*op)
            except Exception as exc:
                # redis-py 8.1's asyncio cluster client can lose a connection under a
                # command when many tasks open connections at once (AttributeError on its
                # writer, before anything was sent): a read is asked once more.
                if op[0] not in _READS or not client_failure(exc):
                    raise
                return await self.client.execute_command(*op)
        return await (self._eval(op) if isinstance(op, Eval) else self._batch(op))

    async def _send(self, op: Any) -> Any:
        try:
            if isinstance(op, tuple) and not self.cluster:  # a hit's GET: first
                direct = self._direct
                if direct is not None and op[0] in DIRECT_COMMANDS:
                    reply = await direct.call(op)
                else:
                    reply = await self.client.execute_command(*op)
            elif isinstance(op, EachNode):
                reply = await self._each_node(op)
            elif self.cluster:
                reply = await self._send_cluster(op)
            elif isinstance(op, Eval):
                reply = await self._eval(op)
            else:
                reply = await self._batch(op)
        except BaseException as exc:
            if isinstance(exc, Exception) and _redis_error(exc):
                err = self._failed(exc, op)
                if err.outage and self.breaker.is_open:
                    await self._drop_idle()
                raise err from exc
            self.breaker.abandon()
            raise
        if self.breaker.failures:
            self.breaker.success()
        return reply

    async def _drop_idle(self) -> None:
        """See :meth:`SyncDriver._drop_idle`."""
        client = self.client
        try:
            if self.cluster:
                for node in client.get_nodes():
                    await node.disconnect_free_connections()
            else:
                await client.connection_pool.disconnect(inuse_connections=False)
        except Exception:  # pragma: no cover - a client without a pool
            log.debug("hitrate: could not close idle connections", exc_info=True)

    async def _deliver_owed(self) -> None:
        """See :meth:`SyncDriver._deliver_owed`."""
        self._claim_owed()
        try:
            plan = owed_plan(self.ctx)
            send: Any = None
            throw: CacheUnavailableError | None = None
            while True:
                try:
                    op = plan.throw(throw) if throw is not None else plan.send(send)
                except StopIteration:
                    return
                send, throw = None, None
                try:
                    send = await self._send(op)
                except CacheUnavailableError as exc:  # the plan decides: drop, or raise
                    throw = exc
        finally:
            self.ctx.owed.release()

    async def redis(self, op: Any) -> Any:
        self._follow_loop()
        self._check(op)
        if self.ctx.owed.pending:
            self.ctx.owed.foreground_at = time.monotonic()
            try:
                await self._deliver_owed()
            except OwedDeliveryInProgress:
                self.breaker.abandon()  # nothing was sent: a probe slot goes back
                raise
        return await self._send(op)

    async def fetch(
        self,
        key: str,
        fetch: Callable[[], Any],
        ttl: TTLLike = None,
        tags: Sequence[str] = (),
        *,
        unless: Callable[[Any], object] | None = None,
        type: Any = None,
    ) -> Any:
        """``AsyncCache.get_or_fetch``; see :meth:`SyncDriver.fetch`."""
        ctx = self.ctx
        rkey, family = ctx.keys.locate(key)
        if tags or ctx.lean.get(family, 0) >= LEAN_AT:
            tags = tags_of(tags)
            # Tagged: the plan reads the entry and its tags' versions in one round trip.
            # Misses likely: it starts with the lease script (see Context.likely_miss).
            leasing = ctx.likely_miss(family)
            plan = get_or_fetch(ctx, key, ttl, tags, unless=unless, vtype=type, leasing=leasing)
            return await self.run(plan, fetch)
        try:
            first: Any = await self.redis(("GET", rkey))
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
        return await self.run(plan, fetch, first)

    async def run(
        self, plan: Plan, call: Callable[[], Any] | None = None, first: Any = _NOT_READ
    ) -> Any:
        """The trampoline of the shared loop (:meth:`_Base._steps`), with awaited I/O; see
        :meth:`SyncDriver.run`."""
        self._follow_loop()
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
                    reply = await self.redis(request[1])
                elif kind is CALL_USER:
                    reply = request[1]()
                    if inspect.isawaitable(reply):
                        reply = await reply
                elif kind is SLEEP:
                    await self.sleep(request[1])
                else:  # JOIN: a cancelled leader lands unpublished, its waiters go on alone
                    try:
                        await asyncio.wait_for(request[1].done.wait(), request[2])
                        reply = True
                    except TimeoutError:
                        reply = False
            except BaseException as exc:
                throw = exc

    def _event(self) -> asyncio.Event:
        return asyncio.Event()

    def _wake_loop(self) -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()
