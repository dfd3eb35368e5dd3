"""The decisions, written once: each public verb is a generator that yields the Redis
operations and user calls it needs (see :mod:`hitrate.ops`) and returns its result.
:mod:`hitrate.drivers` runs them with a sync or an asyncio Redis client; the unit tests run
them with scripted replies and no Redis at all.

One module per concern: :mod:`.context` (what plans decide with), :mod:`.reads`,
:mod:`.leases` (the lease protocol: leases, fills, waits - one plan for entries and
cached objects), :mod:`.aside` (cache-aside for entries: hits, serve-stale, XFetch,
leasing first), :mod:`.batch` (``get_or_fetch_many``), :mod:`.tags` (tag versions),
:mod:`.writes` (set, write-through) and :mod:`.invalidation` (keys, patterns, tags,
generation bumps, owed invalidations).

Fail-open lives here, at the ``yield`` that failed: the driver throws
:class:`CacheUnavailableError` into the plan, and the plan decides what "treat it as a miss"
means for that step (load without caching, serve the stale value, queue an invalidation).
An interruption (cancellation, ``KeyboardInterrupt``) is thrown in the same way, so a plan
gives its lease back and closes its write window before it goes on.
"""

from .aside import EntryStore, fresh_value, get_or_fetch
from .batch import get_or_fetch_many
from .context import (
    BATCH_CHUNK,
    ERROR_TEXT_MS,
    LEAN_AT,
    MGET_CHUNK,
    MISSING,
    SCRIPT_CHUNK,
    TAG_PRUNE,
    Context,
    generations,
    interrupted,
)
from .invalidation import bump, invalidate, invalidate_pattern, invalidate_tag, owed
from .leases import Store, lease_and_fill, load_down
from .reads import get, get_many
from .writes import set_, set_many, write_through

__all__ = [
    "BATCH_CHUNK",
    "ERROR_TEXT_MS",
    "LEAN_AT",
    "MGET_CHUNK",
    "MISSING",
    "SCRIPT_CHUNK",
    "TAG_PRUNE",
    "Context",
    "EntryStore",
    "Store",
    "bump",
    "fresh_value",
    "generations",
    "get",
    "get_many",
    "get_or_fetch",
    "get_or_fetch_many",
    "interrupted",
    "invalidate",
    "invalidate_pattern",
    "invalidate_tag",
    "lease_and_fill",
    "load_down",
    "owed",
    "set_",
    "set_many",
    "write_through",
]
