"""What every plan decides with: :class:`Context` (one per cache), :data:`MISSING`, the
entry decoding shared by reads and fills, and the generation view (see
:mod:`hitrate.generations`)."""

from __future__ import annotations

import contextlib
import math
import os
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from .. import scripts
from ..codec import Codec, DecodeError, Entry, decode_entry, encode_entry
from ..counting import Counters
from ..errors import CacheUnavailableError, ValueTooLargeError
from ..generations import Generations, new_token
from ..keys import KeySpace, family_of
from ..ops import Eval, Plan
from ..owed import OwedQueue
from ..policy import Policy, TTLLike, to_policy

__all__ = [
    "BATCH_CHUNK",
    "LEAN_AT",
    "MGET_CHUNK",
    "MISSING",
    "SCRIPT_CHUNK",
    "Context",
    "interrupted",
]

#: Sizes of the chunks that multi-key verbs are cut into (one command or script call
#: each, pipelined), so no single command blocks the server for long.
MGET_CHUNK = 500
SCRIPT_CHUNK = 100  # entries per invalidate.lua call
BATCH_CHUNK = 500  # commands per pipeline


class _Missing:
    """The type of :data:`MISSING`: "no value", never confused with a cached ``None``."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


MISSING: Final = _Missing()

ERROR_TEXT_MS = 2000  # how long a loader's failure is shown to waiters in other processes
TAG_PRUNE = 2  # tag-set members checked (and dropped if their entry is gone) per tagged fill
#: On Redis Cluster the members live in other slots, so a fill checks them from the client:
#: 1 tagged fill in CLUSTER_PRUNE_EVERY checks CLUSTER_PRUNE members per tag (the same
#: rate as one server's, in one extra round trip for that fill only).
CLUSTER_PRUNE_EVERY = 8
CLUSTER_PRUNE = TAG_PRUNE * CLUSTER_PRUNE_EVERY
DOWN_ROUNDS = 3  # in-process single-flight rounds while Redis is unreachable
LEAN_CAP = 8  # how far misses can lead hits in Context.lean
LEAN_AT = 2  # ... and how far they must lead for get_or_fetch to lease first


def interrupted(exc: BaseException) -> bool:
    """An exception a plan must clean up after (give leases back, close write windows)
    before passing it on: anything but the generator being closed."""
    return not isinstance(exc, GeneratorExit)


@dataclass
class Context:
    """Everything a plan needs to decide, shared by one cache's calls."""

    keys: KeySpace
    codec: Codec
    default_policy: Policy
    policies: Mapping[str, Policy]
    max_value_size: int = 1024 * 1024
    compress_over: int = 1024
    write_window: float = 30.0
    rng: random.Random = field(default_factory=random.Random)
    clock: Callable[[], float] = time.time
    monotonic: Callable[[], float] = time.monotonic
    stats: Counters = field(default_factory=Counters)
    owed: OwedQueue = field(default_factory=OwedQueue)
    gens: Generations = field(default_factory=Generations)
    #: Bumped by every write or invalidation this process makes: while Redis is down, a
    #: caller shares an in-process load only if no write happened since that load began.
    write_seq: int = 0
    #: What this cache has already logged, by kind (each thing is logged once).
    warned: dict[str, set[str]] = field(default_factory=dict)
    #: The near cache (:class:`hitrate.near.NearCache`) offered every hit, or None.
    near: Any = None
    #: Per family: recent misses minus hits of ``get_or_fetch``, between 0 and
    #: :data:`LEAN_CAP` (see :meth:`likely_miss`).
    lean: dict[str, int] = field(default_factory=dict)
    #: Redis Cluster: no script may touch two slots (see :mod:`hitrate.slots`), so the
    #: generations hash and tag keys are read and checked around the entry's scripts.
    cluster: bool = False
    _made: dict[tuple[int, float], Policy] = field(default_factory=dict, repr=False)

    def likely_miss(self, family: str) -> bool:
        """Have recent ``get_or_fetch`` calls of *family* missed more than they hit? Then
        a call starts with the lease script (a miss in two round trips) rather than GET
        (a hit in one, a miss in three). One dict lookup on the hit path."""
        return self.lean.get(family, 0) >= LEAN_AT

    def missed(self, family: str) -> None:
        """A ``get_or_fetch`` miss: counted, and weighs toward leasing first."""
        self.stats.miss(family)
        lean = self.lean
        score = lean.get(family, 0)
        if score < LEAN_CAP and (score or len(lean) < 1024):
            lean[family] = score + 1

    def served(self, family: str) -> None:
        """A hit of a call that leased first: weighs toward GET first."""
        score = self.lean.get(family, 0)
        if score:
            self.lean[family] = score - 1

    def wrote(self) -> None:
        self.write_seq += 1

    def policy(self, key: str, ttl: TTLLike) -> Policy:
        return self.family_policy(family_of(key), ttl)

    def family_policy(self, family: str, ttl: TTLLike) -> Policy:
        base = self.policies.get(family, self.default_policy)
        if ttl is None or ttl is base or isinstance(ttl, Policy):
            return base if ttl is None else ttl
        # A number (or timedelta) per call: the Policy made of it is kept, not rebuilt on
        # every hit.
        if not isinstance(ttl, int | float) or isinstance(ttl, bool):
            return to_policy(ttl, base)  # a timedelta, or a type to_policy refuses
        made = self._made.get((id(base), ttl))
        if made is None:
            made = to_policy(ttl, base)
            if len(self._made) < 1024:  # bases live as long as the cache: ids are stable
                self._made[(id(base), ttl)] = made
        return made

    @staticmethod
    def token() -> str:
        return os.urandom(12).hex()

    def encode(
        self,
        key: str,
        value: Any,
        policy: Policy,
        load_time: float = 0.0,
        gen: int | None = None,
        vtype: Any = None,
        tags: tuple[tuple[str, bytes], ...] = (),
    ) -> tuple[bytes, int]:
        """Entry bytes and Redis expiry in ms (0 = none); raises before anything is written.

        ``b""`` means "store nothing": a ``None`` under a policy with ``negative_ttl=0``.
        *gen* is the namespace stamp (default: this process's view of the key's family);
        *tags*: each tag with its current version (see :mod:`hitrate.plans.tags`).
        """
        if value is None and not policy.negative_ttl:
            return b"", 0
        ttl = policy.draw_ttl(self.rng, negative=value is None)
        expires_at = self.clock() + ttl if ttl is not None else 0.0
        if gen is None:
            gen = self.gens.stamp(family_of(key))
        load_time = load_time if policy.early else 0.0  # only XFetch reads it
        data = encode_entry(
            self.codec, key, value, expires_at, load_time, vtype, gen, tags, self.compress_over
        )
        if len(data) > self.max_value_size:
            raise ValueTooLargeError(
                f"value for key {key!r} is {len(data)} bytes encoded, over max_value_size="
                f"{self.max_value_size}; nothing was written. Cache a smaller projection of "
                "it, or raise max_value_size"
            )
        if ttl is None:
            return data, 0
        return data, math.ceil((ttl + (policy.stale if value is not None else 0)) * 1000)

    def remember_failed_write(self, key: str) -> None:
        """A write or invalidation could not reach Redis: owe it (delivered before the
        next command once Redis is back; see :mod:`hitrate.owed`)."""
        self.owed.entry(self.keys.entry(key), family_of(key))

    def fresh(self, entry: Entry, family: str) -> bool:
        """Not logically expired, and written under the family's current generation."""
        return (not entry.expires_at or self.clock() < entry.expires_at) and (
            entry.gen == self.gens.stamp(family)
        )


def _decode(ctx: Context, key: str, rkey: str, raw: bytes, family: str, vtype: Any = None) -> Plan:
    """Decode an entry; bytes that are not one of ours are a miss, counted and deleted --
    unless they are another codec's, format's or type's entry (another app version on this
    prefix): those are left alone."""
    try:
        return decode_entry(ctx.codec, key, raw, vtype)
    except DecodeError as exc:
        ctx.stats.incr(family, "decode_errors")
        if not exc.foreign:
            with contextlib.suppress(CacheUnavailableError):
                yield ("UNLINK", rkey)
        return None


def generations(ctx: Context) -> Plan:
    """Read the prefix's generations hash again (see :mod:`hitrate.generations`); a hash
    without an id (new, or lost) gets one first."""
    key = ctx.keys.generations()
    if ctx.gens.checked_at != float("-inf"):  # read before: the others go on with that view
        ctx.gens.checked_at = ctx.gens.monotonic()  # while one caller reads it again
    seen = ctx.gens.changes
    # On Cluster by a script: on the primary, which a client reading from replicas would
    # not ask (a lagging replica may lack the hash's id or a new epoch).
    read: Any = Eval(scripts.EPOCHS, [key], ()) if ctx.cluster else ("HGETALL", key)
    reply = yield read
    if not any(k in (b"id", "id") for k in reply):
        yield ("HSETNX", key, "id", new_token())
        reply = yield read
    ctx.gens.replace(reply, seen)


def _check_generations(ctx: Context) -> Plan:
    """Refresh the generation view when it is due; Redis failing here fails the read."""
    if ctx.gens.due():
        yield from generations(ctx)
