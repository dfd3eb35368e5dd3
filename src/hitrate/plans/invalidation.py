"""Invalidation: by key, by pattern (SCAN, never KEYS; exact against fills in flight), by
tag, whole families by generation bump, and the owed queue's delivery."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from .. import scripts
from ..errors import CacheUnavailableError
from ..generations import ALL, family_of_pattern, new_token
from ..keys import family_of
from ..ops import Batch, Eval, Plan
from ..owed import Chunk
from ..slots import by_slot
from .context import BATCH_CHUNK, SCRIPT_CHUNK, Context
from .leases import release

__all__ = ["bump", "invalidate", "invalidate_pattern", "invalidate_tag", "owed"]

log = logging.getLogger("hitrate")


def _invalidate_entries(
    ctx: Context,
    entries: Sequence[str],
    batch: int = SCRIPT_CHUNK,
    tag_key: str = "",
    owed: bool = False,
) -> Plan:
    """Invalidate entries given by their Redis keys, ``batch`` per script call, pipelined
    :data:`BATCH_CHUNK` calls at a time; with *tag_key*, each is also taken out of that tag
    set in the same script; *owed*: delivering what was owed since an outage (the write
    bookkeeping is dropped too, see invalidate.lua)."""
    ops = []
    mode = ("tag",) if tag_key else ("owed",) if owed else ()
    groups: list[Sequence[str]] = [entries]
    if ctx.cluster:  # one script per slot; the tag set (another slot) is done after
        groups = [[entries[i] for i in group] for group in by_slot(entries)]
        mode = ("tagged",) if tag_key else mode
    for group in groups:
        for i in range(0, len(group), batch):
            flat: list[str] = [tag_key] if tag_key and not ctx.cluster else []
            for rkey in group[i : i + batch]:
                flat += ctx.keys.quad_of(rkey)
            ops.append(Eval(scripts.INVALIDATE, flat, (ctx.token(), *mode)))
    if not ops:
        return 0
    if len(ops) == 1:
        return int((yield ops[0]))
    total = 0
    for i in range(0, len(ops), BATCH_CHUNK):
        replies = yield Batch(ops[i : i + BATCH_CHUNK])
        total += sum(int(r) for r in replies)
    return total


def invalidate(ctx: Context, keys: Sequence[str]) -> Plan:
    if not keys:
        return 0
    ctx.wrote()
    entries = list(dict.fromkeys(ctx.keys.entry(key) for key in keys))
    try:
        deleted: int = yield from _invalidate_entries(ctx, entries)
    except CacheUnavailableError:
        for key in keys:
            ctx.stats.incr(family_of(key), "fail_open")
            ctx.remember_failed_write(key)
        return 0
    for key in keys:
        ctx.stats.incr(family_of(key), "invalidations")
    return deleted


def bump(ctx: Context, family: str | None) -> Plan:
    """Make every entry of *family* (``None``: of the whole prefix) unreachable in O(1):
    new namespace and fill-epoch tokens (see :mod:`hitrate.generations`)."""
    name = ALL if family is None else family
    token = new_token()
    ctx.wrote()
    epoch = new_token()
    try:
        yield ("HSET", ctx.keys.generations(), "ns:" + name, token, "ep:" + name, epoch)
    except CacheUnavailableError:
        ctx.stats.incr(name, "fail_open")
        ctx.owed.bump(name)
        return False
    ctx.gens.bumped(name, token, epoch)
    ctx.stats.incr(name, "invalidations")
    return True


def owed(ctx: Context, chunk_size: int = 500, leases: bool = False) -> Plan:
    """Deliver the invalidations (and lease releases) owed since Redis was unreachable, a
    chunk at a time; each chunk leaves the queue only once Redis confirmed it (see
    :mod:`hitrate.owed`). A chunk Redis refuses (WRONGTYPE, NOPERM) is dropped and
    logged: sending it again would not help. Any other failure is raised: the driver then
    fails the call that triggered delivery open, and the queue is kept. With *leases*, the
    lease releases instead (the timer's delivery: they never hold a call up, and need no
    claim on the queue: a release delivered twice does nothing the second time)."""
    queue = ctx.owed
    while True:
        chunk = queue.peek(chunk_size, leases)
        if not chunk:
            return
        try:
            yield from _deliver(ctx, chunk)
        except CacheUnavailableError as exc:
            if not exc.refused:
                raise
            _dropped(ctx, chunk, exc)
            if chunk.scan is not None:
                queue.scanned(chunk.scan[0], 0)
        queue.done(chunk)


def _deliver(ctx: Context, chunk: Chunk) -> Plan:
    if chunk.leases:
        yield Batch([release(rkey, token) for rkey, token in chunk.leases])
    elif chunk.bumps:
        fields: list[str] = []
        for name in chunk.bumps:
            fields += ["ns:" + name, new_token(), "ep:" + name, new_token()]
        yield ("HSET", ctx.keys.generations(), *fields)
        for name in chunk.bumps:
            at = fields.index("ns:" + name)
            ctx.gens.bumped(name, fields[at + 1], fields[at + 3])
    elif chunk.entries:
        yield from _invalidate_entries(ctx, chunk.entries, owed=True)
    elif chunk.unlink:
        yield Batch([("UNLINK", k) for k in chunk.unlink])
    elif chunk.tags:
        yield from _invalidate_tag(ctx, chunk.tags[0])
    elif chunk.scan is not None:
        family, cursor = chunk.scan
        while True:
            cursor, found = yield ("SCAN", cursor, "MATCH", ctx.keys.objects(family), "COUNT", 1000)
            if found:
                yield ("UNLINK", *found)
            ctx.owed.scanned(family, int(cursor))
            if int(cursor) == 0:
                return


def _dropped(ctx: Context, chunk: Chunk, exc: CacheUnavailableError) -> None:
    """Counted every time; logged once per cause."""
    what = (
        f"{len(chunk.leases)} lease releases"
        if chunk.leases
        else f"generation bumps of {', '.join(chunk.bumps)}"
        if chunk.bumps
        else f"invalidations of {len(chunk.entries) + len(chunk.unlink)} keys"
        if chunk.entries or chunk.unlink
        else f"invalidation of tag {chunk.tags[0]!r}"
        if chunk.tags
        else "a SCAN delete of cached objects"
    )
    ctx.stats.incr("~owed", "errors")
    told = ctx.warned.setdefault("owed_refused", set())
    if exc.cause not in told and len(told) < 64:
        told.add(exc.cause)
        log.warning(
            "hitrate: dropped owed %s: Redis refused them (%s); they will not be retried",
            what,
            exc.cause,
        )


def invalidate_pattern(ctx: Context, pattern: str, count: int = 1000) -> Plan:
    """SCAN (never KEYS) for entries under the prefix matching *pattern*, then invalidate
    them in pipelined batches as they are found. First the fill epoch of the pattern's
    family (or of the prefix, when the pattern spans families) changes, so a fill whose
    load began before this call is refused even where SCAN has already passed.
    Fail-open: returns what was deleted so far, and the rest is owed (as a generation bump
    of the family, delivered before the next command); strict mode raises."""
    match = ctx.keys.pattern(pattern)
    family = family_of_pattern(pattern)
    ctx.wrote()
    cursor: Any = 0
    seen: set[str] = set()
    deleted = 0
    try:
        epoch = new_token()
        yield ("HSET", ctx.keys.generations(), "ep:" + family, epoch)
        ctx.gens.bumped(family, "", epoch)
        while True:
            cursor, found = yield ("SCAN", cursor, "MATCH", match, "COUNT", count)
            entries = []
            for raw in found:
                entry = ctx.keys.entry_of(raw.decode() if isinstance(raw, bytes) else raw)
                if entry is not None and entry not in seen:
                    seen.add(entry)
                    entries.append(entry)
            deleted += yield from _invalidate_entries(ctx, entries)
            if int(cursor) == 0:
                break
    except CacheUnavailableError:
        ctx.stats.incr(family_of(pattern), "fail_open")
        ctx.owed.bump(family)
    ctx.stats.incr(family_of(pattern), "invalidations", len(seen))
    return deleted


def _invalidate_tag(ctx: Context, tag: str) -> Plan:
    tag_key = ctx.keys.tag(tag)
    version = ctx.keys.tag_version(tag_key)
    version_ms = 24 * 3600 * 1000  # any lifetime will do: a missing version is a new one
    renew = ("SET", version, ctx.token(), "PX", version_ms)
    _, members = yield Batch([renew, ("SMEMBERS", tag_key)])
    entries = sorted(m.decode() if isinstance(m, bytes) else m for m in members)
    deleted = yield from _invalidate_entries(ctx, entries, tag_key=tag_key)
    if ctx.cluster and entries:  # one server takes them out in invalidate.lua
        for i in range(0, len(entries), BATCH_CHUNK):
            yield ("SREM", tag_key, *entries[i : i + BATCH_CHUNK])
    return deleted, len(entries)


def invalidate_tag(ctx: Context, tag: str) -> Plan:
    """Give the tag a new version (so no entry recording the old one is served again, and
    fills whose lease predates this are refused: see :mod:`hitrate.plans.tags`), then
    delete at once the entries its member set names (it may have been evicted: the new
    version alone is enough)."""
    ctx.keys.tag(tag)  # a bad tag is an error now, not an owed invalidation
    ctx.wrote()
    try:
        deleted, count = yield from _invalidate_tag(ctx, tag)
    except CacheUnavailableError:
        ctx.stats.incr("tag", "fail_open")
        ctx.owed.tag(tag)
        return 0
    ctx.stats.incr("tag", "invalidations", count)
    return deleted
