"""Writes: ``set``, ``set_many`` and ``write_through`` (with its write window: no fill
lease while a save is in flight, and the window closed however the call ends)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Mapping
from typing import Any

from .. import scripts
from ..errors import CacheUnavailableError
from ..keys import family_of
from ..ops import CALL, Batch, Eval, Plan
from ..policy import TTLLike
from .context import BATCH_CHUNK, Context, _check_generations, interrupted


def _current_generations(ctx: Context) -> Plan:
    """Entries are stamped with this process's view of the generations: read it first
    when it is due. Redis failing here is left to the write itself to find."""
    with contextlib.suppress(CacheUnavailableError):
        yield from _check_generations(ctx)


__all__ = ["set_", "set_many", "write_through"]


def set_(ctx: Context, key: str, value: Any, ttl: TTLLike, vtype: Any = None) -> Plan:
    quad = ctx.keys.quad(key)
    ctx.wrote()
    ctx.encode(key, value, ctx.policy(key, ttl), vtype=vtype)  # refuse a bad value first
    yield from _current_generations(ctx)
    data, px = ctx.encode(key, value, ctx.policy(key, ttl), vtype=vtype)
    try:
        if data:
            yield Eval(scripts.SET, quad, (data, px, ctx.token()))
        else:  # a None that this policy does not cache: drop what was there
            yield Eval(scripts.INVALIDATE, quad, (ctx.token(),))
    except CacheUnavailableError:
        ctx.stats.incr(family_of(key), "fail_open")
        ctx.remember_failed_write(key)
        return False
    return True


def set_many(ctx: Context, mapping: Mapping[str, Any], ttl: TTLLike, vtype: Any = None) -> Plan:
    """One script call per key, pipelined :data:`BATCH_CHUNK` at a time."""

    def encoded() -> list[Eval]:
        ops = []
        for key, value in mapping.items():
            quad = ctx.keys.quad(key)
            data, px = ctx.encode(key, value, ctx.policy(key, ttl), vtype=vtype)
            script = scripts.SET if data else scripts.INVALIDATE
            ops.append(Eval(script, quad, (data, px, ctx.token()) if data else (ctx.token(),)))
        return ops

    ops = encoded()  # everything first: one bad value means nothing is written
    keys = list(mapping)
    ctx.wrote()
    if ctx.gens.due():  # encoded under a view due to be read again: read it, encode again
        yield from _current_generations(ctx)  # once, whatever it finds (Redis may be down)
        ops = encoded()
    for i in range(0, len(ops), BATCH_CHUNK):
        try:
            yield Batch(ops[i : i + BATCH_CHUNK])
        except CacheUnavailableError:
            for key in keys[i:]:  # what may not have been written is owed a delete
                ctx.stats.incr(family_of(key), "fail_open")
                ctx.remember_failed_write(key)
            return False
    return True


def write_through(
    ctx: Context,
    key: str,
    value: Any,
    ttl: TTLLike,
    version: Callable[[Any], Any] | None = None,
    vtype: Any = None,
) -> Plan:
    """Save to the source of truth (the driver's CALL), then cache what was saved, unless
    another write or an invalidation of this key overlapped ours: then delete the entry, so
    the next read loads whatever the source of truth holds now.

    While the save runs, no reader may take a fill lease for the key (it would cache the
    row as it was before the save). However the write ends - the save failing, the call
    being cancelled or interrupted even after the save committed - the write window is
    closed and the entry deleted unless the write completed, so no old row stays cached.

    If the save returns something other than ``None`` (the stored row, with the version or
    timestamps the database gave it), that is what gets cached. With ``version`` (a function
    of the cached value giving a number that grows with every write of the row), overlapping
    writes are settled by comparing versions in Lua instead of deleting, and an older write
    never deletes a newer cached row.
    """
    quad = ctx.keys.quad(key)
    lease_key, writes_key = quad[1], quad[2]
    family = family_of(key)
    policy = ctx.policy(key, ttl)
    ctx.encode(key, value, policy, vtype=vtype)  # refuse an unencodable value before saving
    yield from _current_generations(ctx)
    token = ctx.token()
    began = True
    # Closes this write's window whether or not the begin ran, and deletes the entry.
    abandon = Eval(scripts.WRITE_END, quad, (token, "1", b"", 0, ctx.token(), ""))
    try:
        in_flight = yield Eval(
            scripts.WRITE_BEGIN,
            [lease_key, writes_key],
            (token, math.ceil(ctx.write_window * 1000)),
        )
    except CacheUnavailableError:
        # The begin may still have run (a reply lost to a timeout): it is closed at the end.
        began, in_flight = False, 0
    except BaseException as exc:
        if interrupted(exc):  # the begin may have run: close the window it may have opened
            try:
                yield abandon
            except CacheUnavailableError:
                ctx.remember_failed_write(key)
        raise
    try:
        saved = yield CALL
        if saved is not None:
            value = saved
        data, px = ctx.encode(key, value, policy, vtype=vtype)
        row_version = "" if version is None else _version_text(key, version(value))
    except BaseException as exc:
        # The save failed, was interrupted (it may have committed), or what it returned
        # cannot be cached: forget the entry and close our write window.
        ctx.wrote()
        if interrupted(exc):
            try:
                yield abandon
            except CacheUnavailableError:
                ctx.remember_failed_write(key)
        raise
    ctx.wrote()
    try:
        if not began:
            # Redis missed our begin, so a reader may have filled an old value meanwhile.
            yield abandon
            return value
        conflict = "1" if int(in_flight) > 1 else "0"
        yield Eval(scripts.WRITE_END, quad, (token, conflict, data, px, ctx.token(), row_version))
    except CacheUnavailableError:
        ctx.stats.incr(family, "fail_open")
        ctx.remember_failed_write(key)
    except BaseException as exc:
        if interrupted(exc):  # the end may not have run: make sure the window closes
            try:
                yield abandon
            except CacheUnavailableError:
                ctx.remember_failed_write(key)
        raise
    return value


def _version_text(key: str, number: Any) -> str:
    if isinstance(number, bool) or not isinstance(number, int | float) or math.isnan(number):
        raise TypeError(
            f"version= for key {key!r} must give a number that grows with each write of the "
            f"row (an int version column, a timestamp); got {number!r}"
        )
    return repr(number)
