"""Tags: an entry is served only while the versions of its tags are current.

Each tag has a version token (``app:~tag:{t}:v``). A fill records, in the entry, the
version each of its tags had when the lease was granted (before the load began);
``invalidate_tag`` replaces the version. So a tagged entry is a hit only if every version
it records is still current - read in the same round trip as the entry (``get_or_fetch``
with ``tags=``) or in one more (a tagged entry read by ``get`` or ``get_many``).

That is what makes tag invalidation hold whatever Redis evicts: the tag's member set
(``app:~tag:{t}``), which lets ``invalidate_tag`` delete the entries at once and free
their memory, is only an optimisation. If it was evicted, the entries it named are still
never served; if a version was evicted, the entries recording it are misses (the next fill
makes a new version). No eviction policy is needed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ..codec import Entry
from ..ops import Batch, Plan
from .context import MGET_CHUNK, Context

__all__ = ["current", "version_keys", "versions"]

Versions = Mapping[str, Any]  # tag -> its version token (bytes), None when it has none


def version_keys(ctx: Context, tags: Iterable[str]) -> list[str]:
    keys = ctx.keys
    return [keys.tag_version(keys.tag(t)) for t in tags]


def covers(known: Versions | None, entry: Entry) -> bool:
    """Do *known* versions name every tag of *entry*?"""
    return known is not None and all(t in known for t, _ in entry.tags)


def current(entry: Entry, known: Versions) -> bool:
    """Is every tag version *entry* records still the current one?"""
    return all(known.get(t) == v for t, v in entry.tags)


def versions(ctx: Context, tags: Iterable[str], known: Versions | None = None) -> Plan:
    """The current versions of *tags*: those in *known* as given, the rest read now (one
    round trip; MGET chunks in one pipeline)."""
    out = dict(known or {})
    need = [t for t in dict.fromkeys(tags) if t not in out]
    if need:
        keys = version_keys(ctx, need)
        if len(keys) <= MGET_CHUNK:
            found = yield ("MGET", *keys)
        else:
            chunks = [keys[i : i + MGET_CHUNK] for i in range(0, len(keys), MGET_CHUNK)]
            replies = yield Batch([("MGET", *chunk) for chunk in chunks])
            found = [v for reply in replies for v in reply]
        out.update(zip(need, found, strict=True))
    return out
