"""Flushing per-family counters to Redis, so every process's counts add up.

Each cache's counts (:class:`hitrate.stats.Counters`) are written in batches, never per
operation: what was counted since the last flush goes out in ONE pipeline of ``HINCRBY``
to two hashes under the cache's prefix (see :mod:`hitrate.keys`)::

    app:~stats:totals          field "user|hits" etc.; TTL 30 days, renewed by every flush
    app:~stats:m:<minute>      the same fields for one epoch minute; TTL 25 hours

Fields are ``<family>|<counter>`` (``hits``, ``misses``, ``stale_hits``, ``negative_hits``,
``loads``, ``fills``, ``invalidations``, ``errors``, ``fail_open``, ...), plus
``<family>|load_seconds`` and the load-time histogram ``<family>|load_le_<bound>`` with the
fixed bounds of :data:`hitrate.stats.LOAD_BUCKETS`, so p50/p99 can be estimated from all
processes at once. A flush that fails keeps its counts for the next one (fail-open, no
loss); two flushes never send the same counts.

When: every ``flush_interval`` seconds (``Cache(..., flush_interval=5.0)``; 0 turns the
periodic flush off), in one daemon thread shared by all caches of the process and started
with the first cache; then on ``close()``, at interpreter exit (``atexit``), and when an
unclosed cache is garbage-collected. :class:`~hitrate.AsyncCache` flushes from that same
thread with a small synchronous client built from its pool's connection settings, so its
counts are flushed even while the event loop is busy or after it has stopped; its
``close()`` does the final flush in a worker thread, without blocking the loop. A forked
child starts with a fresh thread and flushes only what it counts itself.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from .errors import CacheUnavailableError
from .ops import Batch, Plan
from .stats import COUNTERS, LOAD_BUCKETS, Counters, FamilyCounts

__all__ = [
    "MINUTE_TTL",
    "TOTALS_TTL",
    "Flusher",
    "bucket_field",
    "flush_plan",
    "minute_key",
    "stats_root",
    "totals_key",
]

log = logging.getLogger("hitrate")

TOTALS_TTL = 30 * 24 * 3600  # seconds; renewed by every flush, so it lasts while in use
MINUTE_TTL = 25 * 3600  # per-minute buckets are kept at least 24 hours
BUCKET_NAMES = (*(f"load_le_{b!r}" for b in LOAD_BUCKETS), "load_le_inf")


def stats_root(prefix: str) -> str:
    """``app:~stats:``: no cache entry (``app:{...}``) or tag key can start with it."""
    return f"{prefix}:~stats:"


def totals_key(prefix: str) -> str:
    return f"{prefix}:~stats:totals"


def minute_key(prefix: str, minute: int) -> str:
    """The hash of counts flushed during epoch minute *minute* (``int(time() // 60)``)."""
    return f"{prefix}:~stats:m:{minute}"


def bucket_field(index: int) -> str:
    return BUCKET_NAMES[index]


def flush_ops(prefix: str, deltas: dict[str, FamilyCounts], minute: int) -> list[tuple[Any, ...]]:
    """The commands that add *deltas* to the totals and to *minute*'s bucket."""
    totals, bucket = totals_key(prefix), minute_key(prefix, minute)
    ops: list[tuple[Any, ...]] = []
    for family, delta in sorted(deltas.items()):
        fields: list[tuple[str, int]] = [(k, getattr(delta, k)) for k in COUNTERS]
        fields += [(BUCKET_NAMES[i], n) for i, n in enumerate(delta.load_buckets)]
        for name, n in fields:
            if n:
                ops.append(("HINCRBY", totals, f"{family}|{name}", n))
                ops.append(("HINCRBY", bucket, f"{family}|{name}", n))
        if delta.load_seconds:
            amount = repr(delta.load_seconds)
            ops.append(("HINCRBYFLOAT", totals, f"{family}|load_seconds", amount))
            ops.append(("HINCRBYFLOAT", bucket, f"{family}|load_seconds", amount))
    if ops:
        ops.append(("EXPIRE", totals, TOTALS_TTL))
        ops.append(("EXPIRE", bucket, MINUTE_TTL))
    return ops


def flush_plan(counters: Counters, prefix: str, clock: Callable[[], float] = time.time) -> Plan:
    """Write what *counters* counted since the last flush; True when it was written (or
    there was nothing to write). On failure the counts are given back for the next flush,
    also when the driver raises instead (strict mode) and the caller closes the plan."""
    deltas = counters.take()
    if not deltas:
        return True
    written = False
    try:
        yield Batch(flush_ops(prefix, deltas, int(clock() // 60)))
        written = True
    except CacheUnavailableError:
        return False
    finally:
        if not written:
            counters.give_back(deltas)
    return True


class Flusher:
    """Flushes one cache's counters: on a timer (in the shared thread), on demand, and a
    last time on :meth:`close`. *run* runs a plan synchronously (a sync driver's ``run``)."""

    def __init__(
        self,
        run: Callable[[Plan], Any],
        counters: Counters,
        prefix: str,
        *,
        interval: float = 5.0,
        clock: Callable[[], float] = time.time,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self._run = run
        self.counters = counters
        self.prefix = prefix
        self.interval = interval
        self.clock = clock
        self.hooks: list[Callable[[], None]] = []  # called after each flush (Prometheus)
        self.due = time.monotonic() + interval
        self.retired = False
        self.closed = False
        self._on_close = on_close
        self._lock = threading.Lock()

    def flush(self) -> bool:
        """Flush now; False if Redis could not be reached (the counts are kept)."""
        with self._lock:
            plan = flush_plan(self.counters, self.prefix, self.clock)
            try:
                ok = bool(self._run(plan))
            except Exception as exc:  # strict mode raises; a flush never should
                log.debug("hitrate: stats flush failed: %s", exc)
                ok = False
            finally:
                plan.close()
        for hook in list(self.hooks):
            try:
                hook()
            except Exception:
                log.exception("hitrate: stats hook failed")
        return ok

    def retire(self) -> None:
        """The cache was garbage-collected unclosed: flush once more, then stop."""
        self.retired = True
        _scheduler.wake.set()

    def close(self) -> None:
        """Stop the timer, flush a last time, release the flusher's own client (idempotent)."""
        if self.closed:
            return
        self.closed = True
        _scheduler.remove(self)
        self.flush()
        if self._on_close is not None:
            try:
                self._on_close()
            except Exception:  # pragma: no cover - closing a client
                log.debug("hitrate: closing the stats client failed", exc_info=True)


class _Scheduler:
    """One daemon thread for every cache of the process (not one per cache: an unclosed
    cache must not keep a thread alive)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.flushers: set[Flusher] = set()
        self.thread: threading.Thread | None = None
        self.hooked = False

    def add(self, flusher: Flusher) -> None:
        with self.lock:
            if not self.hooked:  # first use, not import: no import-time side effects
                self.hooked = True
                atexit.register(_at_exit)
                os.register_at_fork(after_in_child=_after_fork)
            self.flushers.add(flusher)
            if self.thread is None:
                self.thread = threading.Thread(
                    target=self._loop, name="hitrate-stats-flush", daemon=True
                )
                self.thread.start()
        self.wake.set()

    def remove(self, flusher: Flusher) -> None:
        with self.lock:
            self.flushers.discard(flusher)

    def _loop(self) -> None:
        while True:
            self.wake.clear()  # before looking, so a wake-up during the pass is not lost
            with self.lock:
                flushers = list(self.flushers)
                if not flushers:
                    self.thread = None
                    return
            wait = 60.0
            for flusher in flushers:
                if flusher.retired:
                    flusher.close()
                    continue
                if flusher.interval <= 0:
                    continue
                now = time.monotonic()
                if now >= flusher.due:
                    flusher.flush()
                    flusher.due = time.monotonic() + flusher.interval
                wait = min(wait, max(0.0, flusher.due - time.monotonic()))
            self.wake.wait(wait)


_scheduler = _Scheduler()


def register(flusher: Flusher) -> Flusher:
    """Put *flusher* on the shared timer."""
    _scheduler.add(flusher)
    return flusher


def _at_exit() -> None:
    for flusher in list(_scheduler.flushers):
        flusher.close()


def _after_fork() -> None:
    _scheduler.lock = threading.Lock()
    _scheduler.wake = threading.Event()
    _scheduler.thread = None
    flushers = list(_scheduler.flushers)
    _scheduler.flushers = set()
    for flusher in flushers:
        flusher._lock = threading.Lock()
        flusher.counters.after_fork()
        register(flusher)
