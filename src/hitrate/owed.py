"""Invalidations owed to Redis: the ones that could not be delivered while it was down.

One queue per cache (shared by its sync and async drivers, its data structures and its
stats), kept in process. It also holds fill leases that could not be given back (the fill
or release failed, or was interrupted): released when Redis answers again, so callers in
other processes do not wait out the lease time for a fill that will never come.

The drivers deliver it **before** the next Redis command of any call is sent, so the
first read after an outage never returns a value whose invalidation was owed. Items leave
the queue only once Redis confirmed them, so a call that is cancelled while it delivers
loses nothing; delivery goes in bounded chunks.

The queue is bounded. Past :data:`MAX_OWED` keys, the family of a key that does not fit
is owed a **generation bump** instead (every entry of that family becomes unreachable: see
``Cache.bump``), and past :data:`MAX_BUMPS` families the whole prefix is: more than was
asked, never less. Each overflow is logged once on the ``hitrate`` logger.

A chunk that Redis *refuses* (``WRONGTYPE`` at a key another program wrote, ``NOPERM``
for a user without SCAN) is dropped with a WARNING rather than retried after every call.
Besides the drivers, a timer delivers the queue (every :data:`RETRY_INTERVAL` seconds
while it is not empty), so an invalidation owed during an outage reaches Redis soon after
it is back even if this process makes no further call.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from .errors import CacheUnavailableError

__all__ = ["MAX_OWED", "OwedDeliveryInProgress", "OwedQueue"]

log = logging.getLogger("hitrate")

MAX_OWED = 10_000  # keys (entries and object hashes) kept for delivery
MAX_BUMPS = 64  # families kept for a generation bump before the whole prefix is bumped
MAX_TAGS = 1_000  # tags kept; a tag names entries of any family: past this, a prefix bump
MAX_LEASES = 10_000  # lease releases kept; past this they are left to expire (lease time)
RETRY_INTERVAL = 0.5  # seconds between the timer's delivery attempts while items are owed
ALL = "*"  # the family name that stands for the whole prefix


class OwedDeliveryInProgress(CacheUnavailableError):
    """Another call is delivering the owed invalidations: this one is served as if Redis
    were unreachable (from the loader, nothing cached) until that is done. Not an outage:
    the circuit breaker does not count it."""


@dataclass(frozen=True, slots=True)
class Chunk:
    """Part of the queue to deliver: entry keys (Redis keys of cache entries), other Redis
    keys to unlink (object hashes and their leases), tags, families to bump."""

    entries: tuple[str, ...] = ()
    leases: tuple[tuple[str, str], ...] = ()  # (entry or object key, lease token)
    unlink: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    bumps: tuple[str, ...] = ()
    scan: tuple[str, int] | None = None  # (object family, SCAN cursor) to delete by SCAN

    def __bool__(self) -> bool:
        return bool(
            self.entries or self.leases or self.unlink or self.tags or self.bumps or self.scan
        )


class OwedQueue:
    """Thread-safe; ``pending`` (invalidations: delivered before any other command) is
    read without the lock on every Redis command. Lease releases are owed apart
    (``leases_pending``): they never hold a call up, the timer delivers them."""

    def __init__(self, limit: int = MAX_OWED) -> None:
        self._lock = threading.Lock()
        self._limit = limit
        self._entries: dict[str, str] = {}  # entry key -> family (insertion ordered)
        self._leases: dict[tuple[str, str], None] = {}  # (key, token) of leases to give back
        self._unlink: dict[str, str] = {}  # other Redis key -> family
        self._tags: dict[str, None] = {}
        self._bumps: dict[str, None] = {}
        self._scans: dict[str, int] = {}  # object family -> SCAN cursor reached
        self._overflowed = False
        self._delivering = threading.Lock()
        self.pending = False
        self.leases_pending = False
        #: When a call of this process last found invalidations owed (and delivered them,
        #: or was told another call does): the timer leaves them to such calls meanwhile.
        self.foreground_at = 0.0
        #: Called when the queue stops being empty (the retry timer's wake-up).
        self.on_pending: Callable[[], None] | None = None

    def _owe(self, lease: bool = False) -> None:
        """Something was queued (the lock is held)."""
        was = self.pending or self.leases_pending
        if lease:
            self.leases_pending = True
        else:
            self.pending = True
        if not was and self.on_pending is not None:
            self.on_pending()

    def after_fork(self) -> None:
        """In a forked child: the parent's threads (a delivery in progress, a lock held)
        are not here, so their locks are made anew; what was owed stays owed."""
        self._lock = threading.Lock()
        self._delivering = threading.Lock()

    def claim(self) -> bool:
        """Become the one caller delivering the queue (never blocks); then :meth:`release`."""
        return self._delivering.acquire(blocking=False)

    def release(self) -> None:
        self._delivering.release()

    def __len__(self) -> int:
        with self._lock:
            return (
                len(self._entries)
                + len(self._leases)
                + len(self._unlink)
                + len(self._tags)
                + len(self._bumps)
                + len(self._scans)
            )

    def _full(self, family: str) -> bool:
        if len(self._entries) + len(self._unlink) < self._limit:
            return False
        self._overflow_log(family)
        self._bump(family)
        return True

    def _overflow_log(self, family: str) -> None:
        if not self._overflowed:
            self._overflowed = True
            log.warning(
                "hitrate: more than %d invalidations owed while Redis is unreachable; "
                "the families of the rest (first: %r) will have their generation bumped "
                "instead, which makes all their entries unreachable when Redis is back",
                self._limit,
                family,
            )

    def _bump(self, family: str) -> None:
        if ALL in self._bumps:
            return
        if len(self._bumps) >= MAX_BUMPS:
            log.warning(
                "hitrate: owed generation bumps of more than %d families: bumping the whole "
                "prefix when Redis is back",
                MAX_BUMPS,
            )
            self._bumps = {ALL: None}
        else:
            self._bumps[family] = None

    def entry(self, rkey: str, family: str) -> None:
        """The cache entry at Redis key *rkey* is owed an invalidation."""
        with self._lock:
            if rkey not in self._entries and not self._full(family):
                self._entries[rkey] = family
            self._owe()

    def lease(self, rkey: str, token: str) -> None:
        """The fill lease *token* on *rkey* (an entry or object key) is owed a release."""
        with self._lock:
            if len(self._leases) < MAX_LEASES:
                self._leases[(rkey, token)] = None
                self._owe(lease=True)

    def unlink(self, rkeys: list[str], family: str) -> None:
        """These Redis keys (an object hash and its lease) are owed a delete. Past the
        bound, every cached object of *family* is owed a delete by SCAN (object hashes
        carry no generation to bump)."""
        with self._lock:
            for rkey in rkeys:
                if rkey in self._unlink or family in self._scans:
                    continue
                if len(self._entries) + len(self._unlink) < self._limit:
                    self._unlink[rkey] = family
                else:
                    self._overflow_log(family)
                    self._scans[family] = 0
            self._owe()

    def tag(self, tag: str) -> None:
        with self._lock:
            if tag not in self._tags:
                if len(self._tags) < MAX_TAGS:
                    self._tags[tag] = None
                else:
                    self._full(ALL)
            self._owe()

    def bump(self, family: str) -> None:
        """Every entry of *family* (``"*"``: the whole prefix) is owed unreachability."""
        with self._lock:
            self._bump(family)
            self._owe()

    def peek(self, size: int = 500, leases: bool = False) -> Chunk:
        """The next chunk to deliver, without removing it (see :meth:`done`): the
        invalidations, or with *leases* the lease releases."""
        with self._lock:
            if leases:
                self.leases_pending = bool(self._leases)
                return Chunk(leases=tuple(list(self._leases)[:size]))
            if self._bumps:  # then bumps: they cover the most
                return Chunk(bumps=tuple(self._bumps))
            if self._entries:
                return Chunk(entries=tuple(list(self._entries)[:size]))
            if self._unlink:
                return Chunk(unlink=tuple(list(self._unlink)[:size]))
            if self._tags:
                return Chunk(tags=(next(iter(self._tags)),))
            if self._scans:
                return Chunk(scan=next(iter(self._scans.items())))
            self.pending = False
            self._overflowed = False
            return Chunk()

    def done(self, chunk: Chunk) -> None:
        """Redis confirmed *chunk*: forget it."""
        with self._lock:
            for rkey in chunk.entries:
                self._entries.pop(rkey, None)
            for lease in chunk.leases:
                self._leases.pop(lease, None)
            for rkey in chunk.unlink:
                self._unlink.pop(rkey, None)
            for tag in chunk.tags:
                self._tags.pop(tag, None)
            for family in chunk.bumps:
                self._bumps.pop(family, None)
            self.pending = self._any()

    def scanned(self, family: str, cursor: int) -> None:
        """The SCAN delete of *family*'s objects reached *cursor* (0: finished)."""
        with self._lock:
            if cursor:
                self._scans[family] = cursor
            else:
                self._scans.pop(family, None)
            self.pending = self._any()

    def _any(self) -> bool:
        self.leases_pending = bool(self._leases)
        return bool(self._entries or self._unlink or self._tags or self._bumps or self._scans)

    def entries(self) -> list[str]:
        """The Redis keys of the cache entries owed an invalidation, oldest first."""
        with self._lock:
            return list(self._entries)

    def tags(self) -> list[str]:
        with self._lock:
            return list(self._tags)

    def bumps(self) -> list[str]:
        """Families (``"*"``: the prefix) owed a generation bump."""
        with self._lock:
            return list(self._bumps)
