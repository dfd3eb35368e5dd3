"""A small circuit breaker, so a cache whose Redis is down stops paying timeouts.

Closed: every call goes to Redis. After ``threshold`` consecutive failures it opens: calls
fail at once (fail-open serves the loader) for ``cooldown`` seconds. Then one call is let
through as a probe; success closes the breaker, failure opens it again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["Breaker"]


class Breaker:
    __slots__ = ("_clock", "_failures", "_lock", "_open_until", "_probing", "cooldown", "threshold")

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
        self._lock = threading.Lock()

    @property
    def is_open(self) -> bool:
        return self._failures >= self.threshold

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
            self._failures = 0
            self._probing = False
            return was_open

    def abandon(self) -> None:
        """A call ended without telling whether Redis works (cancelled, or a bug of ours):
        let the next call probe instead of waiting for a verdict that never comes."""
        if self._probing:
            with self._lock:
                self._probing = False

    def failure(self) -> None:
        with self._lock:
            self._failures += 1
            self._probing = False
            if self._failures >= self.threshold:
                self._open_until = self._clock() + self.cooldown
