"""The direct path: ``GET``, ``MGET`` and ``EVALSHA`` sent straight on a pooled connection
of a plain ``redis.Redis`` / ``redis.asyncio.Redis``, past redis-py's per-command layers.

A warm hit is one short round trip, and redis-py spends more time around it than hitrate
does: ``execute_command`` builds a retry closure and records observability metrics, the
pool records two more on checkout and two on release, polls the socket, and checks the
connection through another retry closure. Here a connection is taken from the pool's idle
list, the command packed by hiredis, the reply read by the connection's own parser (hiredis
when it is installed) and the connection put back: about 9 µs less per call.

It is used only where it is known to be exact - a plain client (not a subclass) with no
single connection, on a ``ConnectionPool`` or ``BlockingConnectionPool`` of redis-py's own
connection classes, no client-side cache, no streaming credentials. Replies are read by
the connection's own ``read_response``, so RESP3 push messages (maintenance notifications)
are handled as on the general path, and a connection they mark for reconnection is
reconnected when it goes back. Anything else (Cluster, Sentinel, a custom pool or
connection) goes through ``execute_command`` as before, and so does a call that finds no
idle connection (redis-py then makes one, or waits for one, within its limits).

Failures behave as on the general path:

* an error reply (``WRONGTYPE``...) was read in full: the connection goes back clean;
* anything else between the send and the end of the reply - a timeout, a reset, asyncio
  cancellation, ``KeyboardInterrupt`` - disconnects the connection before it goes back, so
  no half-read reply is ever left for the next caller;
* for reads, the pool's checkout poll, which reconnects a connection the server has
  closed while it sat idle, is replaced by a retry: a connection error on a connection
  that was already open is sent once more through ``execute_command`` (a read, safe to
  repeat), which connects afresh. A script may have run before its connection failed, so
  it is never sent again: its connection is polled at checkout, as the pool does. Any
  connection error or timeout is sent again when the client's own retry policy retries
  them (redis-py's default), as ``execute_command`` would. A timeout with hitrate's
  clients (no retries) is raised at once: fail-open does not wait twice.
"""

from __future__ import annotations

import os
from queue import Empty
from typing import Any

import redis
import redis.asyncio as aredis
import redis.exceptions as rexc

_hiredis_pack: Any
try:
    from hiredis import pack_command as _hiredis_pack
except ImportError:  # pragma: no cover - hiredis is a dependency (redis[hiredis])
    _hiredis_pack = None

__all__ = ["DIRECT_COMMANDS", "AsyncDirect", "SyncDirect", "async_direct", "sync_direct"]

#: The commands sent directly (none has a response callback in redis-py).
DIRECT_COMMANDS = frozenset({"GET", "MGET", "EVALSHA"})
#: Those safe to send twice: reads. A script is never sent again after a failure (it may
#: have run); its connection is polled at checkout instead, as the pool does.
_REPEATABLE = frozenset({"GET", "MGET"})

_SYNC_CONNECTIONS = (redis.Connection, redis.UnixDomainSocketConnection, redis.SSLConnection)
_ASYNC_CONNECTIONS = (
    aredis.Connection,
    aredis.UnixDomainSocketConnection,
    aredis.SSLConnection,
)
_RETRIED = (rexc.ConnectionError, rexc.TimeoutError)


def _plain_pool(pool: Any, classes: tuple[type, ...], names: tuple[str, ...]) -> bool:
    """The pool's connections are redis-py's own, with nothing that hooks into each command
    or each checkout (a client-side cache, streaming credentials), and it has the parts the
    direct path uses."""
    kwargs = getattr(pool, "connection_kwargs", None)
    if not isinstance(kwargs, dict) or getattr(pool, "connection_class", None) not in classes:
        return False
    if kwargs.get("credential_provider") or getattr(pool, "cache", None) is not None:
        return False
    return all(hasattr(pool, name) for name in names)


def _pack(args: tuple[Any, ...]) -> list[bytes]:
    return [_hiredis_pack(args)]


def _retries(conn: Any) -> int:
    retry = getattr(conn, "retry", None)
    get = getattr(retry, "get_retries", None)
    return int(get()) if get is not None else 0


def _again(exc: BaseException, conn: Any, reused: bool, command: str) -> bool:
    """Whether a failed direct call is sent once more through ``execute_command``."""
    if not isinstance(exc, _RETRIED):
        return False
    if _retries(conn) > 0:  # the client's own policy retries it: let it
        return True
    # A connection the server closed while idle (what the pool's checkout poll catches).
    return reused and command in _REPEATABLE and not isinstance(exc, rexc.TimeoutError)


def _stale(conn: Any) -> None:
    """The pool's checkout poll, for a command that is not sent twice: a connection with
    something to read (the server closed it while idle) is closed, so the send connects
    afresh."""
    try:
        if conn.can_read():
            conn.disconnect()
    except (rexc.ConnectionError, rexc.TimeoutError, OSError):
        conn.disconnect()


class SyncDirect:
    """``GET``/``MGET`` on a connection of a plain ``redis.Redis``'s pool (see the module)."""

    __slots__ = ("blocking", "client", "pool")

    def __init__(self, client: Any, pool: Any, blocking: bool) -> None:
        self.client, self.pool, self.blocking = client, pool, blocking

    def _take(self) -> Any:
        """An idle connection, marked in use; None when there is none (or the process
        forked, or the pool is in maintenance): ``execute_command`` then does it all."""
        pool = self.pool
        if pool.pid != os.getpid() or self.client.connection_pool is not pool:
            return None
        if self.blocking:
            if getattr(pool, "_in_maintenance", False):
                return None
            queue = pool.pool
            try:
                conn = queue.get_nowait()
            except Empty:
                return None
            if conn is None:  # a slot for a connection not made yet: redis-py makes it
                queue.put_nowait(None)
            return conn
        with pool._lock:
            idle = pool._available_connections
            if not idle:
                return None
            conn = idle.pop()
            pool._in_use_connections.add(conn)
        return conn

    def _give(self, conn: Any) -> None:
        pool = self.pool
        should_reconnect = getattr(conn, "should_reconnect", None)
        if should_reconnect is not None and should_reconnect():
            conn.disconnect()
        if self.blocking:
            pool.pool.put_nowait(conn)
            return
        with pool._lock:
            try:
                pool._in_use_connections.remove(conn)
            except KeyError:  # the pool was reset meanwhile: not one of its own any more
                conn.disconnect()
                return
            pool._available_connections.append(conn)

    def call(self, args: tuple[Any, ...]) -> Any:
        """The reply to *args* (a command of :data:`DIRECT_COMMANDS`); an error reply
        (``NOSCRIPT``...) is raised as redis-py raises it."""
        conn = self._take()
        if conn is None:
            return self.client.execute_command(*args)
        reused = conn._sock is not None
        try:
            if reused and args[0] not in _REPEATABLE:
                _stale(conn)
            conn.send_packed_command(_pack(args))
            reply = conn.read_response()
        except rexc.ResponseError:  # an error reply, read in full: the connection is clean
            self._give(conn)
            raise
        except BaseException as exc:  # the reply may be half read: never reuse the socket
            try:
                conn.disconnect()
            finally:
                self._give(conn)
            if _again(exc, conn, reused, args[0]):
                return self.client.execute_command(*args)
            raise
        self._give(conn)
        return reply


class AsyncDirect:
    """``GET``/``MGET`` on a connection of a plain ``redis.asyncio.Redis``'s pool. The
    pool is read from the client on each call: the driver swaps it when the program moves
    to another event loop."""

    __slots__ = ("client", "ok_pool")

    def __init__(self, client: Any) -> None:
        self.client = client
        self.ok_pool: Any = None  # the last pool found fit for the direct path

    def _pool(self) -> Any:
        pool = self.client.connection_pool
        if pool is self.ok_pool:
            return pool
        if _async_pool_ok(pool):
            self.ok_pool = pool
            return pool
        return None

    async def _give(self, pool: Any, conn: Any) -> None:
        should_reconnect = getattr(conn, "should_reconnect", None)
        if (should_reconnect is not None and should_reconnect()) or _waiters(pool):
            await pool.release(conn)  # the pool's own way: reconnects, or wakes a waiter
            return
        try:
            pool._in_use_connections.remove(conn)
        except KeyError:  # not the pool's any more
            return
        pool._available_connections.append(conn)

    async def call(self, args: tuple[Any, ...]) -> Any:
        """The reply to *args* (a command of :data:`DIRECT_COMMANDS`)."""
        pool = self._pool()
        if (
            pool is None
            or not pool._available_connections
            or getattr(pool, "_in_maintenance", False)
        ):
            return await self.client.execute_command(*args)
        # No await between taking the connection and marking it in use: no other task
        # can see it in between.
        conn = pool._available_connections.pop()
        pool._in_use_connections.add(conn)
        reused = conn.is_connected
        try:
            if reused and args[0] not in _REPEATABLE:
                await _astale(conn)
            await conn.send_packed_command(_pack(args))
            reply = await conn.read_response()
        except rexc.ResponseError:  # an error reply, read in full: the connection is clean
            await self._give(pool, conn)
            raise
        except BaseException as exc:  # timeout, reset, cancellation: never reuse the socket
            try:
                await conn.disconnect(nowait=True)
            finally:
                await self._give(pool, conn)
            if _again(exc, conn, reused, args[0]):
                return await self.client.execute_command(*args)
            raise
        await self._give(pool, conn)
        return reply


async def _astale(conn: Any) -> None:
    """:func:`_stale` for an asyncio connection."""
    try:
        if await conn.can_read():
            await conn.disconnect()
    except (rexc.ConnectionError, rexc.TimeoutError, OSError):
        await conn.disconnect()


def _waiters(pool: Any) -> bool:
    """Tasks wait for a connection of this (blocking) pool: the release must wake one."""
    condition = getattr(pool, "_condition", None)
    return bool(getattr(condition, "_waiters", None))


def _async_pool_ok(pool: Any) -> bool:
    if type(pool) not in (aredis.ConnectionPool, aredis.BlockingConnectionPool):
        return False
    if type(pool) is aredis.BlockingConnectionPool and not hasattr(
        getattr(pool, "_condition", None), "_waiters"
    ):
        return False
    return _plain_pool(
        pool, _ASYNC_CONNECTIONS, ("_available_connections", "_in_use_connections", "release")
    )


def _plain_client(client: Any, cls: type) -> bool:
    return (
        _hiredis_pack is not None
        and type(client) is cls
        and getattr(client, "connection", True) is None  # no single-connection client
        and not getattr(client, "_single_connection_client", False)
    )


def sync_direct(client: Any) -> SyncDirect | None:
    """The direct path for *client*, or None where it does not apply (see the module)."""
    if not _plain_client(client, redis.Redis):
        return None
    pool = client.connection_pool
    if type(pool) is redis.BlockingConnectionPool:
        names: tuple[str, ...] = ("pool", "pid")
        blocking = True
    elif type(pool) is redis.ConnectionPool:
        names = ("_lock", "_available_connections", "_in_use_connections", "pid")
        blocking = False
    else:
        return None
    if not _plain_pool(pool, _SYNC_CONNECTIONS, names):
        return None
    return SyncDirect(client, pool, blocking)


def async_direct(client: Any) -> AsyncDirect | None:
    """The direct path for the asyncio *client*, or None where it does not apply."""
    if not _plain_client(client, aredis.Redis):
        return None
    if not _async_pool_ok(client.connection_pool):
        return None
    return AsyncDirect(client)
