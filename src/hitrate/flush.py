"""Flushing per-family counters to Redis, so every process's counts add up.

Each cache's counts (:class:`hitrate.counting.Counters`) are written in batches, never per
operation: what was counted since the last flush becomes a numbered batch, sent in ONE
pipeline (one ``stats_flush.lua`` call per batch, normally one) that adds it to two hashes
under the cache's prefix (see :mod:`hitrate.keys`)::

    app:~stats:{app}:totals        fields "user|hits" etc.; TTL 30 days, renewed by each flush
    app:~stats:{app}:m:<minute>    the same fields for one epoch minute; TTL 25 hours
    app:~stats:{app}:seq:<process> the last batch number of one process; TTL 6 hours

Fields are ``<family>|<counter>`` (``hits``, ``misses``, ``stale_hits``, ``negative_hits``,
``loads``, ``fills``, ``invalidations``, ``errors``, ``fail_open``, ...), plus
``<family>|load_seconds`` and the load-time histogram ``<family>|load_le_<bound>`` with the
fixed bounds of :data:`hitrate.counting.LOAD_BUCKETS`, so p50/p99 can be estimated from all
processes at once. A batch that failed is sent again with the next flush (fail-open, no
loss); one that Redis had already applied (a timeout after the write) is recognised by its
number and skipped, so nothing is counted twice. The ``{app}`` hash tag keeps one cache's
stats keys in one Cluster slot, as its script needs.

The same thread delivers each cache's owed invalidations and lease releases
(:mod:`hitrate.owed`) every :data:`~hitrate.owed.RETRY_INTERVAL` seconds while any are
queued, whether or not the cache counts, so they reach Redis soon after it is back even in
a process that makes no further call.

When: every ``flush_interval`` seconds (``Cache(..., flush_interval=5.0)``; 0 turns the
timer off), in one daemon thread shared by all caches of the process and started with the
first cache; then by ``stats()``, on ``close()``, at interpreter exit (``atexit``), and when
an unclosed cache is garbage-collected. :class:`~hitrate.AsyncCache` is flushed from that
same thread with a small synchronous client built from its pool's connection settings, so
its counts go out even while the event loop is busy or after it has stopped; its
``close()`` does the final flush in a worker thread, without blocking the loop. A forked
child starts with a fresh thread and name and flushes only what it counts itself.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from .counting import COUNTERS, LOAD_BUCKETS, Counters, FamilyCounts
from .errors import CacheUnavailableError
from .ops import Batch, Eval, Plan
from .owed import RETRY_INTERVAL, OwedQueue
from .scripts import script

__all__ = [
    "MINUTE_TTL",
    "TOTALS_TTL",
    "Flusher",
    "flush_plan",
    "minute_key",
    "stats_root",
    "totals_key",
    "wake",
]

log = logging.getLogger("hitrate")

TOTALS_TTL = 30 * 24 * 3600  # seconds; renewed by every flush, so it lasts while in use
MINUTE_TTL = 25 * 3600  # per-minute buckets are kept at least 24 hours
SEQ_TTL = 6 * 3600  # a batch re-sent later than this after a timeout may count twice
DRAIN_SECONDS = 60.0  # how long a garbage-collected cache keeps trying to deliver owed work
BUCKET_NAMES = (*(f"load_le_{b!r}" for b in LOAD_BUCKETS), "load_le_inf")
STATS_FLUSH = script("stats_flush")


def stats_root(prefix: str) -> str:
    """``app:~stats:``: no cache entry (``app:{...}``) or tag key can start with it."""
    return f"{prefix}:~stats:"


def totals_key(prefix: str) -> str:
    return f"{prefix}:~stats:{{{prefix}}}:totals"


def minute_key(prefix: str, minute: int) -> str:
    """The hash of counts counted during epoch minute *minute* (``int(time() // 60)``)."""
    return f"{prefix}:~stats:{{{prefix}}}:m:{minute}"


def sequence_key(prefix: str, source: str) -> str:
    return f"{prefix}:~stats:{{{prefix}}}:seq:{source}"


def batch_fields(deltas: dict[str, FamilyCounts]) -> list[str]:
    """``[field, amount, ...]`` for stats_flush.lua: the non-zero counts of *deltas*."""
    out: list[str] = []
    for family, delta in sorted(deltas.items()):
        fields: list[tuple[str, int]] = [(k, getattr(delta, k)) for k in COUNTERS]
        fields += [(BUCKET_NAMES[i], n) for i, n in enumerate(delta.load_buckets)]
        out += [x for name, n in fields if n for x in (f"{family}|{name}", str(n))]
        if delta.load_seconds:  # always with a ".", so the script adds it as a float
            out += [f"{family}|load_seconds", f"{delta.load_seconds:.9f}"]
    return out


def flush_plan(counters: Counters, prefix: str, clock: Callable[[], float] = time.time) -> Plan:
    """Send every batch of *counters* not yet confirmed written (what was counted since the
    last flush becomes a new one); True when Redis confirmed them (or there was nothing to
    send), False when it was unreachable: they stay queued for the next flush."""
    batches = counters.outbox(int(clock() // 60))
    if not batches:
        return True
    totals, sequence = totals_key(prefix), sequence_key(prefix, counters.source)
    ops = [
        Eval(
            STATS_FLUSH,
            [sequence, totals, minute_key(prefix, minute)],
            (seq, SEQ_TTL, TOTALS_TTL, MINUTE_TTL, *batch_fields(deltas)),
        )
        for seq, minute, deltas in batches
    ]
    try:
        yield Batch(ops)
    except CacheUnavailableError:
        return False
    counters.delivered(batches[-1][0])
    return True


class Flusher:
    """Flushes one cache's counters: on a timer (in the shared thread), on demand, and a
    last time on :meth:`close`; and delivers its owed work while any is queued. *run* runs
    a plan synchronously (a sync driver's ``run``); *counters* is None for a cache that
    does not count."""

    def __init__(
        self,
        run: Callable[[Plan], Any],
        counters: Counters | None,
        prefix: str,
        *,
        owed: OwedQueue | None = None,
        deliver: Callable[[], Any] | None = None,
        interval: float = 5.0,
        clock: Callable[[], float] = time.time,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self._run = run
        self.counters = counters
        self.owed = owed
        self._deliver = deliver
        self.owed_due = 0.0
        self.prefix = prefix
        self.interval = interval
        self.clock = clock
        self.hooks: list[Callable[[], None]] = []  # called after each flush (Prometheus)
        self.due = time.monotonic() + interval
        self.retired = False
        self.drain_until = 0.0
        self.closed = False
        self._on_close = on_close
        self._lock = threading.Lock()

    def owes(self) -> bool:
        owed = self.owed
        return (
            self._deliver is not None and owed is not None and (owed.pending or owed.leases_pending)
        )

    def deliver_owed(self) -> None:
        """Send what is owed, lease releases included, if anything (retried by the timer
        while it fails)."""
        if not self.owes():
            return
        self.owed_due = time.monotonic() + RETRY_INTERVAL
        try:
            self._deliver()  # type: ignore[misc]  # owes() checked it is there
        except Exception as exc:  # strict mode raises; the timer never should
            log.debug("hitrate: delivering owed invalidations failed: %s", exc)

    def flush(self) -> bool:
        """Flush now; False if Redis could not be reached (the counts are kept)."""
        if self.counters is None:
            self.deliver_owed()
            return True
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
        """The cache was garbage-collected unclosed: flush once more, then stop (after the
        owed work is delivered, or :data:`DRAIN_SECONDS` have passed)."""
        self.retired = True
        self.drain_until = time.monotonic() + DRAIN_SECONDS
        _scheduler.wake.set()

    def draining(self) -> bool:
        """Retired, but owed work is still to be delivered (and there is time left)."""
        if self.owed is None or not self.owes():
            return False
        if time.monotonic() < self.drain_until:
            return True
        log.warning(
            "hitrate: a cache of prefix %r was garbage-collected with %d invalidations owed "
            "that Redis did not take within %.0f s; they are dropped (the entries expire "
            "with their TTL)",
            self.prefix,
            len(self.owed),
            DRAIN_SECONDS,
        )
        return False

    def close(self) -> None:
        """Stop the timer, flush a last time, release the flusher's own client (idempotent)."""
        if self.closed:
            return
        self.closed = True
        _scheduler.remove(self)
        self.flush()
        if self.owed is not None and self.owes() and not self.retired:
            self.deliver_owed()
            if self.owed.pending:
                log.warning(
                    "hitrate: cache of prefix %r closed with %d invalidations owed that "
                    "Redis did not take; they are dropped (the entries expire with their TTL)",
                    self.prefix,
                    len(self.owed),
                )
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
                if flusher.retired and not flusher.draining():
                    flusher.close()
                    continue
                if flusher.owes():
                    # First try a retry interval after the failure (the call that failed
                    # has just tried), then every interval until it is delivered.
                    if not flusher.owed_due:
                        flusher.owed_due = time.monotonic() + RETRY_INTERVAL
                    elif time.monotonic() >= flusher.owed_due:
                        flusher.deliver_owed()
                    if flusher.owes():
                        wait = min(wait, max(0.0, flusher.owed_due - time.monotonic()))
                    else:
                        flusher.owed_due = 0.0
                else:
                    flusher.owed_due = 0.0
                if flusher.interval <= 0 or flusher.counters is None or flusher.retired:
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


def wake() -> None:
    """Have the timer look at its caches now (something was just owed)."""
    _scheduler.wake.set()


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
        if flusher.counters is not None:
            flusher.counters.after_fork()
        if flusher.owed is not None:
            flusher.owed.after_fork()
        register(flusher)
