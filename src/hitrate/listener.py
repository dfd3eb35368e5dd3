"""The listener: one connection per cache that Redis talks back on, read by a daemon thread.

It serves two things:

* **the near cache** (:mod:`hitrate.near`): ``CLIENT TRACKING on REDIRECT <its own id>
  BCAST PREFIX app:{ PREFIX app:~gen PREFIX app:~tag:`` and ``SUBSCRIBE
  __redis__:invalidate`` (RESP2), so every change of one of the cache's keys, by any
  client, reaches it; the connection going down is noticed (a read error, or a PING left
  unanswered for ``ping_interval`` seconds) and the near cache is dropped and bypassed until
  tracking is on again (reconnecting with backoff);
* **wake-ups** of callers waiting for another process's fill: it subscribes to
  ``app:~wake``, where ``fill.lua`` and ``release.lua`` publish the entry key when a waiter
  marked it (``poll.lua``), and wakes the waiters of this process at once instead of
  letting them sleep out their poll interval. Started on the first wait.

A thread with a sync connection serves the asyncio cache too: invalidations are applied
while the event loop is busy (a long computation, a blocking call), so how fresh the near
cache is does not depend on how responsive the loop is, and there is one implementation.
Async waiters are woken with ``loop.call_soon_threadsafe``.

On Redis Cluster (:mod:`hitrate.listener_cluster`) a :class:`Listener` is one
connection's worth of this: one per primary tracks the keys that primary owns, and one
wake-only listener subscribes on any one node (a cluster broadcasts ``PUBLISH``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import redis

from .connect import sync_twin

__all__ = ["Listener", "Waiter", "connection_factory"]

log = logging.getLogger("hitrate")

INVALIDATE = b"__redis__:invalidate"


def connection_factory(client: Any) -> Callable[[], Any] | None:
    """A function making a RESP2 connection to *client*'s server (a sync or asyncio
    redis-py client), or None where that cannot be done (Cluster, unknown connection)."""
    twin = None
    pool: Any
    if isinstance(client, redis.Redis):
        pool = client.connection_pool
    else:
        twin = sync_twin(client)
        if twin is None:
            return None
        pool = getattr(twin, "connection_pool", None)  # none for a cluster client
    cls = getattr(pool, "connection_class", None)
    kwargs = dict(getattr(pool, "connection_kwargs", {}))
    if twin is not None:
        twin.close()
    if (
        cls is None
        or not isinstance(cls, type)
        or not issubclass(cls, redis.Connection | redis.UnixDomainSocketConnection)
    ):
        return None
    kwargs["protocol"] = 2  # pub/sub messages, not RESP3 pushes
    kwargs["socket_timeout"] = max(1.0, kwargs.get("socket_timeout") or 0.0)
    kwargs.pop("retry", None)

    def connect() -> Any:
        conn: Any = cls(**kwargs)
        conn.connect()
        return conn

    return connect


class Waiter:
    """One caller waiting for a fill of *rkey*: ``done`` is set when the fill is published
    (a ``threading.Event``, or an ``asyncio.Event`` set through its loop)."""

    __slots__ = ("done", "loop", "rkey")

    def __init__(self, rkey: str, done: Any, loop: Any = None) -> None:
        self.rkey, self.done, self.loop = rkey, done, loop

    def wake(self) -> None:
        if self.loop is None:
            self.done.set()
            return
        with contextlib.suppress(RuntimeError):  # its loop is closed: nobody waits any more
            self.loop.call_soon_threadsafe(self.done.set)


class Listener:
    """The daemon thread holding the connection (see the module). *near*: the
    :class:`~hitrate.near.NearCache` to keep coherent, or None (wake-ups only)."""

    def __init__(
        self,
        connect: Callable[[], Any],
        prefix: str,
        near: Any = None,
        *,
        ping_interval: float = 1.0,
        backoff: tuple[float, float] = (0.05, 2.0),
        wake: bool = True,
        name: str = "hitrate-listener",
    ) -> None:
        self._connect = connect
        self.channel = f"{prefix}:~wake".encode()
        self.wakes = wake  # subscribed to the wake channel (else tracking only)
        self.name = name
        self.near = near
        self.ping_interval = ping_interval
        self.backoff = backoff
        self.live = False  # subscribed (and tracking, with a near cache) right now
        self.client_id: int | None = None  # the connection's CLIENT ID while live
        self.reconnects = 0
        self.woken = 0  # waiters woken by a published fill
        self._waiters: dict[str, set[Waiter]] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._conn: Any = None
        self._pid = os.getpid()
        self._up = threading.Event()

    # -- control ------------------------------------------------------------------------
    def ensure(self) -> None:
        """Start the thread if it is not running (first use, or in a forked child)."""
        if (self._thread is not None and self._pid == os.getpid()) or self._stop.is_set():
            return
        with self._lock:
            if self._pid != os.getpid():  # a forked child: the parent's thread is not here
                self._pid, self._thread, self._conn, self.live = os.getpid(), None, None, False
                self._waiters = {}
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()

    def wait_live(self, timeout: float) -> bool:
        """Start if needed and wait up to *timeout* seconds for the connection (tests,
        and callers who want the near cache serving from the first read)."""
        self.ensure()
        return self._up.wait(timeout)

    def close(self, join: bool = True) -> None:
        """Stop the thread and close the connection (and wait for the thread, *join*)."""
        self._stop.set()
        conn = self._conn
        if conn is not None:
            with contextlib.suppress(Exception):  # closing, or gone already
                conn.disconnect()
        thread = self._thread
        if join and thread is not None and thread is not threading.current_thread():
            thread.join(2.0)

    # -- waiters ------------------------------------------------------------------------
    def register(self, waiter: Waiter) -> None:
        self.ensure()
        with self._lock:
            self._waiters.setdefault(waiter.rkey, set()).add(waiter)

    def unregister(self, waiter: Waiter) -> None:
        with self._lock:
            waiting = self._waiters.get(waiter.rkey)
            if waiting is not None:
                waiting.discard(waiter)
                if not waiting:
                    del self._waiters[waiter.rkey]

    def _wake(self, rkey: bytes) -> None:
        with self._lock:
            waiting = list(self._waiters.get(rkey.decode(errors="replace"), ()))
            self.woken += len(waiting)
        for waiter in waiting:
            waiter.wake()

    # -- the thread ---------------------------------------------------------------------
    def _run(self) -> None:
        delay = 0.0
        while not self._stop.is_set():
            try:
                self._session()
            except Exception as exc:
                if not self._stop.is_set():
                    log.debug("hitrate: listener connection lost: %r", exc)
            finally:
                self._down()
            if self._stop.is_set():
                break
            if not delay or self._connected_for > 5.0:
                delay = self.backoff[0]  # the first loss, or it held for a while: start over
            self._stop.wait(delay * (0.5 + random.random()))
            delay = min(delay * 2, self.backoff[1])
            self.reconnects += 1

    _connected_for = 0.0

    def _down(self) -> None:
        was_live = self.live
        self.live = False
        self.client_id = None
        self._up.clear()
        if self.near is not None:
            self.near.went_down()
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):  # closing, or gone already
                conn.disconnect()
        if was_live:
            with self._lock:  # waiters poll on their own until it is back
                waiting = [w for ws in self._waiters.values() for w in ws]
            for waiter in waiting:
                waiter.wake()

    def _session(self) -> None:
        self._connected_for = 0.0  # until subscribed: a failed connect is no long session
        conn = self._conn = self._connect()
        if self._stop.is_set():
            return
        conn.send_command("CLIENT", "ID")
        self.client_id = int(conn.read_response())
        channels = [self.channel] if self.wakes else []
        if self.near is not None:
            prefixes: list[str] = []
            for p in self.near.tracking_prefixes:
                prefixes += ["PREFIX", p]
            conn.send_command(
                "CLIENT", "TRACKING", "on", "REDIRECT", self.client_id, "BCAST", *prefixes
            )
            reply = conn.read_response()
            if reply not in (b"OK", "OK"):
                raise redis.ResponseError(f"CLIENT TRACKING answered {reply!r}")
            channels.append(INVALIDATE)
        conn.send_command("SUBSCRIBE", *channels)
        for _ in channels:
            conn.read_response()
        if self.near is not None:
            self.near.went_live()
        self.live = True
        self._up.set()
        started = time.monotonic()
        pinged: float | None = None
        try:
            while not self._stop.is_set():
                if conn.can_read(timeout=self.ping_interval):
                    self._handle(conn.read_response())
                    pinged = None  # anything read says the connection works
                elif pinged is None:
                    conn.send_command("PING")
                    pinged = time.monotonic()
                elif time.monotonic() - pinged >= self.ping_interval:
                    raise redis.TimeoutError("the listener's PING went unanswered")
        finally:
            self._connected_for = time.monotonic() - started

    def _handle(self, message: Any) -> None:
        if not isinstance(message, list) or len(message) < 2:
            return
        kind = message[0]
        if kind == b"message" and len(message) == 3:
            channel, data = message[1], message[2]
            if channel == INVALIDATE:
                if self.near is not None:
                    self.near.invalidated(data)
            elif channel == self.channel and isinstance(data, bytes):
                self._wake(data)
