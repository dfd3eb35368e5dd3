"""A small circuit breaker, so a cache whose Redis is down stops paying timeouts.

Closed: every call goes to Redis. After ``threshold`` consecutive failures it opens: calls
fail at once (fail-open serves the loader) for ``cooldown`` seconds. Then one call is let
through as a probe; success closes the breaker, failure opens it again.

Only outages count as failures (connection errors, timeouts, server states such as
LOADING or READONLY, misconfigurations): the driver decides with
:func:`hitrate.errors.translate`. An error reply about one key (``WRONGTYPE``) is not one.

Fail-open hides outages from callers, never from operators: opening and closing are logged
on the ``hitrate`` logger (WARNING and INFO), with the cause; a *loud* cause (a
misconfiguration that will not fix itself) is logged at WARNING once, and again only
after the breaker closed in between and then failed again (an ACL user allowed GET but
not EVALSHA fails every fill between working reads: that is said once).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

__all__ = ["Breaker"]

log = logging.getLogger("hitrate")


class Breaker:
    """``Breaker(threshold=2, cooldown=1.0)``: open after *threshold* consecutive outage
    failures, then let one probe through every *cooldown* seconds."""

    __slots__ = (
        "_announced",
        "_cause",
        "_clock",
        "_failures",
        "_lock",
        "_open_until",
        "_probing",
        "cooldown",
        "threshold",
    )

    def __init__(
        self,
        threshold: int = 2,
        cooldown: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self._clock = clock
        self._failures = 0
        self._open_until = 0.0
        self._probing = False
        self._cause: str | None = None
        self._announced: str | None = None  # the loud cause already logged
        self._lock = threading.Lock()

    @property
    def failures(self) -> int:
        """Consecutive outage failures since Redis last answered (0: healthy)."""
        return self._failures

    @property
    def is_open(self) -> bool:
        """True while calls skip Redis (after ``threshold`` consecutive outage failures)."""
        return self._failures >= self.threshold

    @property
    def state(self) -> str:
        """``"closed"``, ``"open"`` (calls skip Redis) or ``"half-open"`` (a probe is out)."""
        if self._failures < self.threshold:
            return "closed"
        return "half-open" if self._probing else "open"

    @property
    def cause(self) -> str | None:
        """What the last outage failure was, while Redis has not answered since; else None."""
        return self._cause

    def allow(self) -> bool:
        """May this call try Redis? Cheap when closed (the hot path)."""
        if self._failures < self.threshold:
            return True
        with self._lock:
            if self._probing or self._clock() < self._open_until:
                return False
            self._probing = True  # exactly one probe per cooldown
            return True

    def success(self) -> bool:
        """Record a success; returns True if this closed an open breaker (Redis is back)."""
        if self._failures == 0:
            return False
        with self._lock:
            was_open = self._failures >= self.threshold
            cause = self._cause
            self._failures = 0
            self._probing = False
            self._cause = None
            if was_open:  # a loud cause is said again only if it returns after a recovery;
                self._announced = None  # one command refused between working ones is not
        if was_open:
            log.info("hitrate: Redis answers again; circuit breaker closed (it was: %s)", cause)
        return was_open

    def abandon(self) -> None:
        """A call ended without telling whether Redis works (cancelled, or a bug of ours):
        let the next call probe instead of waiting for a verdict that never comes."""
        if self._probing:
            with self._lock:
                self._probing = False

    def failure(self, cause: str | None = None, *, loud: bool = False) -> None:
        """Record an outage. *cause* says what went wrong; *loud* logs it at WARNING (once
        per distinct cause until Redis answers again): for misconfigurations."""
        with self._lock:
            self._failures += 1
            self._probing = False
            opened = self._failures == self.threshold
            if self._failures >= self.threshold:
                self._open_until = self._clock() + self.cooldown
            if cause is not None:
                self._cause = cause
            announce = loud and cause is not None and cause != self._announced
            if announce:
                self._announced = cause
        if announce:
            log.warning("hitrate: %s; the cache is bypassed until this is fixed", cause)
        if opened:
            log.warning(
                "hitrate: circuit breaker open after %d failures (%s); Redis is skipped and "
                "loaders serve uncached, with one probe every %gs",
                self._failures,
                cause or "Redis failed",
                self.cooldown,
            )
