"""What the framework backends need beyond hitrate's verbs, written once for both drivers:
``has`` (is a fresh entry there, without counting a read), and the read-modify-write
verbs ``add``, ``touch`` and ``incr``, made atomic by compare-and-set (``lua/cas.lua``):
read the entry, decide, write only if the key still holds the bytes read, else read again.

Also the pieces both backends share: the signed pickle codec that lets pickle's own error
through (Django's and Flask-Caching's contract: any picklable value, and an unpicklable one
raises what pickle raises), the secret it signs with, and the stand-in for a cached
``None`` (frameworks cache ``None`` like any value, for as long as any value)."""

from __future__ import annotations

import hashlib
import hmac
import pickle
from typing import Any, Final

from ..codec import Entry, PickleCodec
from ..errors import CacheUnavailableError, ConfigurationError
from ..keys import family_of
from ..ops import Eval
from ..plans.context import _check_generations, _decode
from ..policy import Policy, TTLLike
from ..scripts import script
from ..structures._base import Awaited, PlanOf, Structure, Synced, verb

__all__ = [
    "FOREVER",
    "NONE",
    "AsyncOps",
    "FrameworkPickleCodec",
    "SyncOps",
    "derive_secrets",
    "unwrap",
    "wrap",
]

CAS = script("cas")
#: A key changed under us this many times in a row: give up (never reached in practice).
ROUNDS = 100
#: No expiry (Django's ``timeout=None``, cachelib's ``timeout=0``).
FOREVER: Final = Policy(None)


class _NoneMark:
    """Stored for a ``None`` value: hitrate's own ``None`` is a short-lived "not found"
    (``negative_ttl``), while a framework caches ``None`` for the timeout it is given."""

    __slots__ = ()

    def __reduce__(self) -> str:
        return "NONE"  # pickled as a reference to this module's singleton

    def __repr__(self) -> str:
        return "NONE"


NONE: Final = _NoneMark()


def wrap(value: Any) -> Any:
    """The value to store for *value* (``None`` becomes :data:`NONE`)."""
    return NONE if value is None else value


def unwrap(value: Any) -> Any:
    """The value a framework caller gets back for a stored one."""
    return None if value is NONE else value


class FrameworkPickleCodec(PickleCodec):
    """hitrate's signed pickle codec (HMAC-SHA256 over key, header and payload; an entry
    whose signature does not verify is a miss, never unpickled), except that a value
    pickle refuses raises pickle's own exception, with a note naming the key."""

    def dumps_raw(self, value: Any, key: str) -> bytes:
        try:
            return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            exc.add_note(
                f"hitrate: the value for cache key {key!r} cannot be pickled; cache a "
                "picklable projection of it (a dict of its fields, say)"
            )
            raise


def derive_secrets(secrets: list[str | bytes], purpose: str) -> list[bytes]:
    """One 32-byte signing key per application secret (the first signs, all verify), so
    the pickled entries are signed with keys derived from, never equal to, the secret."""
    out = []
    for secret in secrets:
        raw = secret.encode() if isinstance(secret, str) else secret
        if not isinstance(raw, bytes) or len(raw) < 16:
            raise ConfigurationError(
                f"{purpose}: a secret to sign cached values with must be at least 16 "
                "characters; set a real SECRET_KEY or give secrets=[...] in the options"
            )
        out.append(hmac.new(raw, f"hitrate:{purpose}".encode(), hashlib.sha256).digest())
    return out


class _Ops(Structure):
    """The plans; :class:`SyncOps` runs them with a Cache's driver, :class:`AsyncOps` with
    an AsyncCache's."""

    __slots__ = ()

    def _read(self, key: str) -> PlanOf[tuple[bytes | None, Entry | None]]:
        """The raw bytes under *key* and its entry when fresh (else None)."""
        ctx = self._ctx
        rkey, family = ctx.keys.locate(key)
        yield from _check_generations(ctx)
        raw = yield ("GET", rkey)
        if raw is None:
            return None, None
        entry = yield from _decode(ctx, key, rkey, raw, family)
        if entry is None or not ctx.fresh(entry, family):
            return raw, None
        return raw, entry

    def _swap(self, key: str, raw: bytes | None, data: bytes, px: int) -> PlanOf[bool]:
        """Write *data* if *key* still holds *raw* (None: still absent)."""
        ctx = self._ctx
        expected = "" if raw is None else hashlib.sha1(raw).hexdigest()
        ctx.wrote()
        done = yield Eval(CAS, ctx.keys.quad(key), (expected, data, px, ctx.token()))
        return bool(done)

    def _fail_open(self, key: str) -> None:
        self._ctx.stats.incr(family_of(key), "fail_open")

    @verb
    def has(self, key: str) -> PlanOf[bool]:
        """Whether *key* holds a fresh entry (a cached ``None`` too); not counted as a
        read. False when Redis is unreachable."""
        try:
            _, entry = yield from self._read(key)
        except CacheUnavailableError:
            self._fail_open(key)
            return False
        return entry is not None

    @verb
    def add(self, key: str, value: Any, ttl: TTLLike = None) -> PlanOf[bool]:
        """Cache *value* only if *key* holds no fresh entry; True if it was written.
        False when Redis is unreachable (the safe answer for a lock)."""
        ctx = self._ctx
        policy = ctx.policy(key, ttl)
        encoded: tuple[bytes, int] | None = None
        try:
            for _ in range(ROUNDS):
                raw, entry = yield from self._read(key)
                if entry is not None:
                    return False
                if encoded is None:  # after the first read: stamped with current generations
                    encoded = ctx.encode(key, value, policy)
                if (yield from self._swap(key, raw, *encoded)):
                    return True
        except CacheUnavailableError:
            self._fail_open(key)
            return False
        raise _contended(key, "add")

    @verb
    def touch(self, key: str, ttl: TTLLike = None) -> PlanOf[bool]:
        """Give *key*'s entry a new expiry (logical expiry and Redis's, together); False
        when it holds none, or Redis is unreachable."""
        ctx = self._ctx
        policy = ctx.policy(key, ttl)
        try:
            for _ in range(ROUNDS):
                raw, entry = yield from self._read(key)
                if entry is None:
                    return False
                data, px = ctx.encode(key, wrap(entry.value), policy, entry.load_time)
                if (yield from self._swap(key, raw, data, px)):
                    return True
        except CacheUnavailableError:
            self._fail_open(key)
            return False
        raise _contended(key, "touch")

    @verb
    def incr(self, key: str, delta: int = 1) -> PlanOf[Any]:
        """Add *delta* to the number under *key*, keeping its expiry; returns the new
        value. ``ValueError`` when the key holds no entry, ``TypeError`` when it holds no
        number; Redis unreachable raises :class:`~hitrate.CacheUnavailableError`."""
        ctx = self._ctx
        for _ in range(ROUNDS):
            raw, entry = yield from self._read(key)
            left = entry.expires_at - ctx.clock() if entry is not None else 0.0
            if entry is None or (entry.expires_at and left <= 0):
                raise ValueError(f"Key {key!r} not found: set it before incrementing it")
            current = unwrap(entry.value)
            try:
                new = current + delta
            except TypeError as exc:
                raise TypeError(
                    f"cannot increment the value for key {key!r}: it is a "
                    f"{type(current).__name__}, not a number"
                ) from exc
            policy = Policy(left) if entry.expires_at else FOREVER
            data, px = ctx.encode(key, new, policy, entry.load_time)
            if (yield from self._swap(key, raw, data, px)):
                return new
        raise _contended(key, "incr")


def _contended(key: str, what: str) -> CacheUnavailableError:
    return CacheUnavailableError(
        f"{what} of key {key!r} lost {ROUNDS} compare-and-set rounds in a row to other "
        "writers of that key; retry later, or spread the writes over more keys"
    )


class SyncOps(_Ops, Synced):
    """The plans run by a :class:`~hitrate.Cache`'s driver."""

    __slots__ = ()


class AsyncOps(_Ops, Awaited):
    """The plans run by an :class:`~hitrate.AsyncCache`'s driver (awaitables)."""

    __slots__ = ()
