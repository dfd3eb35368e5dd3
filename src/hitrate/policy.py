"""TTL policies: how long each kind of data lives, with jitter, stale and early refresh.

A :class:`Policy` is a small frozen value. Anywhere hitrate takes a ``ttl=`` it also takes
seconds (``300``), a :class:`datetime.timedelta`, or a Policy::

    cache.set("user:42", row, ttl=300)
    cache.set("user:42", row, ttl=timedelta(minutes=5))
    cache.set("config:site", cfg, ttl=REFERENCE)
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import timedelta

from .errors import ConfigurationError

__all__ = ["AGGREGATE", "COUNTER", "REFERENCE", "USER", "Policy", "TTLLike", "to_policy"]


def _seconds(value: float | timedelta | None, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(f"{name} must be seconds or a timedelta, not {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ConfigurationError(f"{name} must be a finite number >= 0, not {value!r}")
    return float(value)


@dataclass(frozen=True, slots=True, init=False)
class Policy:
    """How long a kind of data stays cached, and how it is refreshed.

    * ``ttl`` - seconds until the value is logically expired; ``None`` means no expiry
      (only for counters, see :data:`COUNTER`).
    * ``jitter`` - up to this many seconds are added at random to each write's TTL, so keys
      written together do not all expire at the same instant.
    * ``stale`` - for this many seconds past expiry, ``get_or_fetch`` may serve the old value
      while a single caller refreshes it.
    * ``early`` - XFetch β: refresh probabilistically *before* expiry (0 = off, 1 = usual).
    * ``negative_ttl`` - seconds to cache a loader's ``None`` ("not found"); 0 = don't.
    * ``lease`` - seconds a caller may hold the fill lease while it loads; others wait for
      the fill for at most this long, then load without filling.
    * ``near`` - ``False`` keeps this kind of data out of the in-process near cache
      (:class:`~hitrate.NearCache`), when the cache has one.
    """

    ttl: float | None
    jitter: float
    stale: float
    early: float
    negative_ttl: float
    lease: float
    near: bool

    def __init__(
        self,
        ttl: float | timedelta | None,
        *,
        jitter: float | timedelta = 0,
        stale: float | timedelta = 0,
        early: float = 0.0,
        negative_ttl: float | timedelta | None = None,
        lease: float | timedelta = 5.0,
        near: bool = True,
    ) -> None:
        ttl_s = _seconds(ttl, "ttl")
        if ttl_s is not None and ttl_s <= 0:
            raise ConfigurationError(
                "ttl must be > 0 seconds; use ttl=None (the COUNTER policy) for no expiry"
            )
        jitter_s = _seconds(jitter, "jitter") or 0.0
        stale_s = _seconds(stale, "stale") or 0.0
        lease_s = _seconds(lease, "lease")
        if not lease_s:
            raise ConfigurationError("lease must be > 0 seconds")
        if isinstance(early, bool) or not isinstance(early, int | float) or not early >= 0:
            raise ConfigurationError(f"early (XFetch beta) must be a number >= 0, not {early!r}")
        neg = _seconds(negative_ttl, "negative_ttl")
        if neg is None:
            neg = min(ttl_s, 60.0) if ttl_s is not None else 60.0
        if ttl_s is None and (jitter_s or stale_s or early):
            raise ConfigurationError("a policy without ttl cannot have jitter, stale or early")
        object.__setattr__(self, "ttl", ttl_s)
        object.__setattr__(self, "jitter", jitter_s)
        object.__setattr__(self, "stale", stale_s)
        object.__setattr__(self, "early", float(early))
        object.__setattr__(self, "negative_ttl", neg)
        object.__setattr__(self, "lease", lease_s)
        if not isinstance(near, bool):
            raise ConfigurationError(f"near must be True or False, not {near!r}")
        object.__setattr__(self, "near", near)

    def with_(self, **changes: object) -> Policy:
        """A copy with some fields changed: ``USER.with_(stale=30)``."""
        fields: dict[str, object] = {
            "ttl": self.ttl,
            "jitter": self.jitter,
            "stale": self.stale,
            "early": self.early,
            "negative_ttl": self.negative_ttl,
            "lease": self.lease,
            "near": self.near,
        }
        unknown = set(changes) - set(fields)
        if unknown:
            raise ConfigurationError(f"Policy has no field(s) {sorted(unknown)}")
        fields.update(changes)
        ttl = fields.pop("ttl")
        return Policy(ttl, **fields)  # type: ignore[arg-type]

    def draw_ttl(self, rng: random.Random, *, negative: bool = False) -> float | None:
        """This write's TTL in seconds: ``ttl`` plus uniform jitter in ``[0, jitter]``."""
        if negative:
            return self.negative_ttl
        if self.ttl is None:
            return None
        if self.jitter:
            return self.ttl + rng.uniform(0.0, self.jitter)
        return self.ttl

    def __repr__(self) -> str:
        parts = [repr(self.ttl)]
        for name in ("jitter", "stale", "early"):
            value = getattr(self, name)
            if value:
                parts.append(f"{name}={value!r}")
        if not self.near:
            parts.append("near=False")
        return f"Policy({', '.join(parts)})"


#: Reference data (config, settings, feature flags): 1 hour plus up to 5 minutes of jitter.
REFERENCE = Policy(3600, jitter=300)
#: User-specific data (profiles, carts): 5 minutes plus up to 5 minutes -> 5-10 min.
USER = Policy(300, jitter=300)
#: Aggregates and computed data: 1 minute plus up to 4 minutes -> 1-5 min, early refresh on.
AGGREGATE = Policy(60, jitter=240, early=1.0)
#: Counters and rate-limit state: no TTL from the cache; the structures manage expiry.
COUNTER = Policy(None)

TTLLike = float | int | timedelta | Policy | None


def to_policy(ttl: TTLLike, default: Policy) -> Policy:
    """Normalise a ``ttl=`` argument: ``None`` means *default*; a number is exactly that TTL."""
    if ttl is None:
        return default
    if isinstance(ttl, Policy):
        return ttl
    if isinstance(ttl, bool) or not isinstance(ttl, int | float | timedelta):
        raise ConfigurationError(
            f"ttl must be seconds, a timedelta or a Policy, not {type(ttl).__name__}"
        )
    return Policy(ttl, lease=default.lease, near=default.near)
