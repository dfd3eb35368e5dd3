"""Reads: ``get`` and ``get_many`` (one round trip each, plus one for the tag versions
when a tagged entry was found; the generation view is read again first when it is due)."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterable
from typing import Any

from ..codec import DecodeError, Entry, decode_entry
from ..codec.entry import plain_entries
from ..errors import CacheUnavailableError
from ..keys import family_of
from ..ops import Batch, Plan
from .context import MGET_CHUNK, Context, _check_generations, _decode
from .tags import current, versions

__all__ = ["get", "get_many"]


def get(ctx: Context, key: str, default: Any, vtype: Any = None) -> Plan:
    rkey = ctx.keys.entry(key)
    family = family_of(key)
    try:
        yield from _check_generations(ctx)
        raw = yield ("GET", rkey)
    except CacheUnavailableError:
        ctx.stats.incr(family, "fail_open")
        return default
    if raw is not None:
        entry: Entry | None = yield from _decode(ctx, key, rkey, raw, family, vtype)
        if entry is not None and ctx.fresh(entry, family):
            if entry.tags:
                try:
                    known = yield from versions(ctx, (t for t, _ in entry.tags))
                except CacheUnavailableError:
                    ctx.stats.incr(family, "fail_open")
                    return default
                if not current(entry, known):
                    ctx.stats.miss(family)
                    return default
            ctx.stats.hit(family)
            if ctx.near is not None:  # the near cache may keep it (hitrate.near)
                ctx.near.offer(key, entry, raw)
            return entry.value
    ctx.stats.miss(family)
    return default


def get_many(ctx: Context, keys: Iterable[str], vtype: Any = None) -> Plan:
    """MGET in chunks of :data:`MGET_CHUNK` keys, all in one pipeline (one round trip)."""
    wanted = list(dict.fromkeys(keys))
    if not wanted:
        return {}
    located = ctx.keys.locate_many(wanted)  # memoised: (entry key, family) of hot keys
    rkeys = [rkey for rkey, _ in located]
    try:
        yield from _check_generations(ctx)
        chunks = [rkeys[i : i + MGET_CHUNK] for i in range(0, len(rkeys), MGET_CHUNK)]
        if len(chunks) == 1:
            raws = yield ("MGET", *chunks[0])
        else:
            replies = yield Batch([("MGET", *chunk) for chunk in chunks])
            raws = [raw for reply in replies for raw in reply]
    except CacheUnavailableError:
        for k in wanted:
            ctx.stats.incr(family_of(k), "fail_open")
        return {}
    found: dict[str, Any] = {}
    tagged: list[tuple[str, Entry]] = []
    bad: list[str] = []
    hits: dict[str, int] = {}
    misses: dict[str, int] = {}
    codec, gens, now = ctx.codec, ctx.gens, ctx.clock()
    plain = vtype is None and getattr(codec, "unseal", None) is None
    # The common entries decoded in one loop (None: missing, or for decode_entry).
    fast_entries = plain_entries(codec, wanted, raws) if plain else [None] * len(raws)
    served: list[str] = []  # the family of each hit of the common kind, counted at the end
    last, stamp = None, 0  # the generation stamp of the family last seen (keys come in runs)
    for key, (rkey, family), raw, fast in zip(wanted, located, raws, fast_entries, strict=True):
        if fast is not None:
            if family != last:
                last, stamp = family, gens.stamp(family)
            value, expires_at, gen = fast
            if gen == stamp and (not expires_at or now < expires_at):
                found[key] = value
                served.append(family)
            else:
                misses[family] = misses.get(family, 0) + 1
            continue
        if raw is not None:
            try:
                entry = decode_entry(codec, key, raw, vtype)
            except DecodeError as exc:
                ctx.stats.incr(family, "decode_errors")
                if not exc.foreign:  # another app version's entry: a miss, left alone
                    bad.append(rkey)
            else:
                if ctx.fresh(entry, family):
                    if entry.tags:
                        tagged.append((key, entry))
                        continue
                    found[key] = entry.value
                    hits[family] = hits.get(family, 0) + 1
                    continue
        misses[family] = misses.get(family, 0) + 1
    for family, n in Counter(served).items():
        hits[family] = hits.get(family, 0) + n
    ctx.stats.add_reads(hits, misses)
    if tagged:  # served only if their tags' versions are current: one more round trip
        try:
            known = yield from versions(ctx, (t for _, e in tagged for t, _ in e.tags))
        except CacheUnavailableError:
            known = {}
        for key, entry in tagged:
            if current(entry, known):
                found[key] = entry.value
                ctx.stats.hit(family_of(key))
            else:
                ctx.stats.miss(family_of(key))
    if bad:
        with contextlib.suppress(CacheUnavailableError):
            yield ("UNLINK", *bad)
    return found
