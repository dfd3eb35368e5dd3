"""The Redis data structures people under-use, on the same cache: each has a sync class
(for :class:`~hitrate.Cache`) and an asyncio twin (for :class:`~hitrate.AsyncCache`) with
the same verbs, written once as plans (see :mod:`hitrate.structures._base`).

* :class:`Objects` - objects as hashes, field by field (``cache.objects("user")``)
* :class:`Leaderboard` - sorted-set rankings (``cache.leaderboard("weekly")``)
* :class:`Seen` - exact dedup sets, optionally per time window (``cache.seen("sent")``)
* :class:`Unique` - HyperLogLog distinct counts (``cache.unique("visitors")``)
* :class:`RateLimiter` - fixed window, sliding window and GCRA limits
  (``cache.rate_limiter("api", limit=100, per=60)``)

Their keys live under the cache's prefix, apart from cache entries (see :mod:`hitrate.keys`).
"""

from .leaderboard import AsyncLeaderboard, Leaderboard, Ranked
from .objects import AsyncObjects, Objects
from .ratelimit import AsyncRateLimiter, Decision, RateLimiter
from .sets import AsyncSeen, AsyncUnique, Seen, Unique

__all__ = [
    "AsyncLeaderboard",
    "AsyncObjects",
    "AsyncRateLimiter",
    "AsyncSeen",
    "AsyncUnique",
    "Decision",
    "Leaderboard",
    "Objects",
    "Ranked",
    "RateLimiter",
    "Seen",
    "Unique",
]
