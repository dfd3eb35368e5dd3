"""Cache-aside with leases: one plan for every kind of cached value.

A miss takes a short lease (``SET NX PX`` in Lua) before it loads; its fill is written only
if the lease is still its own, so a value loaded before an invalidation or a write is never
cached. Callers that find the lease held wait (bounded by the lease time) for the fill,
polling with backoff, and see the holder's loader error if it failed. However a load ends -
a value, an error, a cancellation - the lease is given back.

That protocol is written once, in :func:`lease_and_fill` and :func:`load_and_fill`. What
differs between a cache entry (one string, ``lease.lua`` / ``fill.lua``:
:class:`~hitrate.plans.aside.EntryStore`) and a cached object (a hash, ``obj_lease.lua`` /
``obj_fill.lua``) is only where the value lives and how it is read and written: a
:class:`Store`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from .. import scripts
from ..errors import (
    CacheUnavailableError,
    CircuitOpenError,
    LoaderError,
    ValueTooLargeError,
)
from ..keys import KeySpace
from ..ops import CALL, LEAD, TIMEOUT, Coalesce, Eval, Plan, Publish, Sleep
from ..owed import OwedDeliveryInProgress
from ..policy import Policy
from .context import (
    DOWN_ROUNDS,
    ERROR_TEXT_MS,
    MISSING,
    Context,
    interrupted,
)

__all__ = [
    "Store",
    "Unless",
    "give_back",
    "lease_and_fill",
    "load_and_fill",
    "load_down",
    "release",
    "take_lease",
]

Unless = Callable[[Any], object] | None
log = logging.getLogger("hitrate")


class Store(Protocol):
    """Where one cached value lives, for the lease plan."""

    @property
    def family(self) -> str: ...

    @property
    def rkey(self) -> str:
        """The Redis key holding the value (its lease and error keys hang off it)."""

    @property
    def label(self) -> str:
        """How errors name it: the user's key (``user:42``)."""

    def prepare(self) -> Plan:
        """What must be read before :meth:`lease` (Redis Cluster: keys of other slots)."""

    def lease(self, token: str, seen: bytes) -> Eval:
        """Read the value, or take the lease: reply ``[status, value, holder, ...]`` with
        status 1 (value there), 2 (lease granted), 3 (held by *holder*), 4 (a write in
        flight). *seen*: a value not fresh for us, to take the lease despite."""

    def leased(self, reply: Sequence[Any]) -> None:
        """Note what a lease reply says beyond its status (generations)."""

    def poll(self) -> Any:
        """One round trip whose reply is ``(value, lease holder, error text)``."""

    def read(self, raw: Any) -> Plan:
        """``(value, seen)``: the value if there and fresh, else :data:`MISSING` and what
        to pass as *seen* to :meth:`lease` (``b""`` for nothing)."""

    def fill(
        self, token: str, value: Any, load_time: float, reply: Sequence[Any]
    ) -> tuple[Eval | None, Any]:
        """The fill script for a loaded *value* (``None``: nothing to store, give the lease
        back) and what the caller gets: raises before anything is written when the value
        cannot be stored."""

    def filled(self, reply: Any) -> Plan:
        """Whether the fill script's *reply* means the value was written and stands (on
        Redis Cluster, after checks that one server makes inside the fill script)."""

    def served(self, value: Any) -> Any:
        """What a caller gets for a value loaded without filling."""


def release(rkey: str, token: str, text: str = "") -> Eval:
    """release.lua: give the lease on *rkey* back (if still ours), with the loader's error
    text for waiters in other processes (``""``: none)."""
    return Eval(
        scripts.RELEASE,
        [rkey + ":lease", rkey + ":err", KeySpace.waiting(rkey)],
        (token, text, ERROR_TEXT_MS if text else 0, KeySpace.wake_channel(rkey), rkey),
    )


def _maybe_ran(exc: CacheUnavailableError) -> bool:
    """Could the command that failed with *exc* have run (its reply lost)? Not when it
    was never sent (breaker open, owed work being delivered) or Redis refused it."""
    return not exc.refused and not isinstance(exc, CircuitOpenError | OwedDeliveryInProgress)


def give_back(ctx: Context, rkey: str, token: str, text: str = "") -> Plan:
    """Release the lease; if that cannot reach Redis (or is itself interrupted), the
    release is owed (see :mod:`hitrate.owed`), so no caller elsewhere waits out the lease
    time for a fill that will never come. Returns whether it was still ours (None: owed)."""
    try:
        return (yield release(rkey, token, text))
    except BaseException as exc:
        ctx.owed.lease(rkey, token)
        if isinstance(exc, CacheUnavailableError):
            return None
        raise


def _too_large(ctx: Context, store: Store, exc: ValueTooLargeError) -> None:
    """Counted every time; logged once per family and cache."""
    ctx.stats.incr(store.family, "fail_open")
    told = ctx.warned.setdefault("too_large", set())
    if store.family not in told and len(told) < 1024:
        told.add(store.family)
        log.warning("hitrate: served without caching: %s", exc)


def take_lease(ctx: Context, store: Store, token: str, seen: bytes) -> Plan:
    """The store's lease script. Failed or interrupted (cancelled, KeyboardInterrupt) while
    the script may have granted the lease, it gives the lease back (or owes that) before
    passing the exception on."""
    yield from store.prepare()  # nothing granted yet: a failure here owes nothing
    try:
        reply = yield store.lease(token, seen)
    except CacheUnavailableError as exc:
        if _maybe_ran(exc):
            ctx.owed.lease(store.rkey, token)  # the reply may be what was lost
        raise
    except BaseException as exc:
        if interrupted(exc):
            yield from give_back(ctx, store.rkey, token)
        raise
    store.leased(reply)
    return reply


def load_unfilled(ctx: Context, store: Store) -> Plan:
    """Load, don't fill (waited past the lease time, or Redis failed mid-way)."""
    t0 = ctx.monotonic()
    value = yield CALL
    ctx.stats.load(store.family, ctx.monotonic() - t0)
    return store.served(value)


def load_only(ctx: Context, store: Store) -> Plan:
    """Redis is unavailable: serve the loader's value, cache nothing."""
    ctx.stats.incr(store.family, "fail_open")
    return (yield from load_unfilled(ctx, store))


def load_down(ctx: Context, store: Store, wait: float, unless: Unless = None) -> Plan:
    """Redis is unavailable: load without caching, one caller per key in this process at a
    time; the others share its value."""
    ctx.stats.incr(store.family, "fail_open")
    for _ in range(DOWN_ROUNDS):
        joined = yield Coalesce(store.rkey, wait)
        if joined is LEAD:
            value = yield from load_unfilled(ctx, store)
            if unless is None or not unless(value):
                yield Publish(value, loaded=True)
            return value
        if joined is TIMEOUT:
            break
    return (yield from load_unfilled(ctx, store))


def lease_and_fill(
    ctx: Context,
    store: Store,
    policy: Policy,
    seen_raw: Any = None,
    unless: Unless = None,
    *,
    leased: tuple[str, Sequence[Any]] | None = None,
) -> Plan:
    """Miss: take the lease and load, or wait (bounded) for the caller that holds it.
    *seen_raw*: a value Redis holds that was not fresh for us (logically expired, or of
    another generation as far as this process knew): the lease is taken despite it - and
    if the lease reply shows our view of the generations was behind and the value is
    fresh after all, it is served and the lease given back, instead of loading again.
    *leased*: ``(token, reply)`` of a lease script the caller already ran (status 2, 3
    or 4: the lease-first miss of :func:`get_or_fetch`)."""
    family = store.family
    token = ctx.token() if leased is None else leased[0]
    deadline: float | None = None
    delay = 0.002
    seen = b""
    if seen_raw is not None:
        _, seen = yield from store.read(seen_raw)
    while True:
        if leased is not None:
            reply, leased = leased[1], None
        else:
            try:
                reply = yield from take_lease(ctx, store, token, seen)
            except CacheUnavailableError:
                return (yield from load_only(ctx, store))
        status = reply[0]
        if status == 2:
            if seen_raw is not None:  # the lease reply updated our view: look again
                value, _ = yield from store.read(seen_raw)
                if value is not MISSING:
                    # Served to this caller, whose read came first; not published: an
                    # invalidation may have deleted it since, before others arrived.
                    yield from give_back(ctx, store.rkey, token)
                    return value
            return (yield from load_and_fill(ctx, store, policy, token, reply, unless))
        if status == 1:
            value, seen = yield from store.read(reply[1])
            if value is not MISSING:
                yield Publish(value)
                return value
            if not seen:  # not an entry we can read (another app version's, or garbage):
                return (yield from load_unfilled(ctx, store))  # asking again would loop
            seen_raw = reply[1]
            continue
        # Another caller is loading (3), or a write-through of the key is in flight (4):
        # wait for its fill, polling with backoff.
        holder = reply[2]
        if deadline is None:
            ctx.stats.incr(family, "waits")
            deadline = ctx.monotonic() + policy.lease
        while True:
            if ctx.monotonic() >= deadline:
                # Past the budget: load ourselves, but don't fill (the holder may still).
                return (yield from load_unfilled(ctx, store))
            yield Sleep(min(delay, max(0.0, deadline - ctx.monotonic())), store.rkey)
            delay = min(delay * 2, 0.05)
            try:
                raw, now_holder, err = yield store.poll()
            except CacheUnavailableError:
                return (yield from load_only(ctx, store))
            if raw:
                value, _ = yield from store.read(raw)
                if value is not MISSING:
                    yield Publish(value)
                    return value
            if err is not None and holder and err.startswith(holder + b"\n"):
                message = err[len(holder) + 1 :].decode(errors="replace")
                raise LoaderError(
                    f"the loader for {store.label!r} failed in the caller that held its "
                    f"lease: {message}"
                )
            if now_holder is None:
                break  # released or revoked without a fill: try for the lease ourselves
            holder = now_holder


def load_and_fill(
    ctx: Context,
    store: Store,
    policy: Policy,
    token: str,
    reply: Sequence[Any],
    unless: Unless = None,
) -> Plan:
    """Holding the lease: load, then fill only if nothing invalidated the key meanwhile.
    However the load ends (an error, a cancellation, KeyboardInterrupt), the lease is given
    back before the exception goes on, so waiters need not wait out the lease time."""
    family, rkey = store.family, store.rkey
    t0 = ctx.monotonic()
    try:
        value = yield CALL
        load_time = ctx.monotonic() - t0
        ctx.stats.load(family, load_time)
        skip = unless is not None and bool(unless(value))
        if skip:
            op, result = None, store.served(value)
        else:
            try:
                op, result = store.fill(token, value, load_time, reply)
            except ValueTooLargeError as exc:
                # Fail open: the caller gets what it loaded; only the cache goes without.
                _too_large(ctx, store, exc)
                op, result = None, store.served(value)
    except BaseException as exc:
        if interrupted(exc):
            # A failed loader tells waiters in other processes why; an interrupted one
            # just gives the lease back: waiters load for themselves.
            text = f"{type(exc).__name__}: {exc}" if isinstance(exc, Exception) else ""
            yield from give_back(ctx, rkey, token, text)
        raise
    try:
        if op is None:  # nothing to store, or unless= said no: give the lease back
            released = yield release(rkey, token)
            if released and not skip:  # still ours: nothing revoked it while we loaded
                yield Publish(result)
            return result
        filled = yield from store.filled((yield op))
    except CacheUnavailableError as exc:
        ctx.stats.incr(family, "fail_open")
        if not exc.refused:  # the fill may not have run: the lease is owed back
            ctx.owed.lease(rkey, token)
        return result
    except BaseException as exc:
        if interrupted(exc):  # the fill may not have run: the lease goes back if still ours
            yield from give_back(ctx, rkey, token)
        raise
    if filled:
        # Filled under a lease nothing revoked: no write completed since our load began.
        ctx.stats.incr(family, "fills")
        yield Publish(result)
    else:
        ctx.stats.incr(family, "fills_refused")
    return result


# -- cache entries ---------------------------------------------------------------------------
