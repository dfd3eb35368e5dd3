"""``cache.objects(family)``: objects cached as Redis hashes, one field per attribute.

Each field is stored on its own, so one field can be read (``HGET``/``HMGET``) or changed
(``update``) without reading, decoding or rewriting the others. A value is a one-byte type
tag and text, readable in ``redis-cli`` and typed on the way back:

======  ====================  =====================================
tag     type                  example
======  ====================  =====================================
``s``   str                   ``sAda``
``i``   int                   ``i42``
``f``   float                 ``f2.5`` (also ``finf``, ``fnan``)
``?``   bool                  ``?1``, ``?0``
``-``   None                  ``-``
``x``   bytes                 ``x`` + the bytes
``D``   Decimal               ``D19.99``
``u``   UUID                  ``u1b4e28ba-2fa1-11d2-883f-0016d3cca427``
``d``   date                  ``d2026-11-26``
``t``   datetime              ``t2026-11-26T08:14:08+00:00``
``T``   time                  ``T08:14:08``
``c``   anything else         ``c`` + the cache's codec (lists, dicts, ...)
======  ====================  =====================================

Consistency is the cache's: a miss takes a fill lease before it loads, and ``put``,
``update`` and ``invalidate`` revoke it, so a slow reader never writes back an object older
than a write that completed while it loaded. Callers that find the lease taken wait for the
fill (bounded by the policy's ``lease``). Fail-open like the cache: when Redis is
unreachable reads are misses, ``get_or_fetch`` serves the loader's value, and writes return
False; a failed ``put``, ``update`` or ``invalidate`` is owed and retried by the next call
on the same cache's objects.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import decimal
import math
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, cast

from .. import scripts
from ..codec import DecodeError
from ..errors import (
    CacheUnavailableError,
    InvalidArgumentError,
    SerializationError,
    ValueTooLargeError,
)
from ..ops import TIMEOUT, Batch, Coalesce, Eval
from ..plans import MISSING, Context, lease_and_fill
from ..plans.leases import load_down, load_unfilled
from ..policy import TTLLike
from ._base import Awaited, PlanOf, Structure, Synced, calling, expiry_ms, text, verb

__all__ = ["AsyncObjects", "Objects", "decode_field", "encode_field", "to_fields"]


# -- field values --------------------------------------------------------------------------


def encode_field(ctx: Context, label: str, value: Any) -> bytes:
    """One field value as tag + text; *label* (``user:42.name``) names it in errors."""
    if value is None:
        return b"-"
    if isinstance(value, bool):
        return b"?1" if value else b"?0"
    if isinstance(value, str):
        return b"s" + value.encode()
    if isinstance(value, int):
        return b"i" + str(value).encode()
    if isinstance(value, float):
        return b"f" + repr(value).encode()
    if isinstance(value, bytes | bytearray | memoryview):
        return b"x" + bytes(value)
    if isinstance(value, decimal.Decimal):
        return b"D" + str(value).encode()
    if isinstance(value, uuid.UUID):
        return b"u" + str(value).encode()
    if isinstance(value, _dt.datetime):
        return b"t" + value.isoformat().encode()
    if isinstance(value, _dt.date):
        return b"d" + value.isoformat().encode()
    if isinstance(value, _dt.time):
        return b"T" + value.isoformat().encode()
    return b"c" + ctx.codec.dumps(value, label)


_PARSERS: dict[int, Callable[[bytes], Any]] = {
    ord("s"): lambda b: b.decode(),
    ord("i"): int,
    ord("f"): float,
    ord("x"): bytes,
    ord("D"): lambda b: decimal.Decimal(b.decode()),
    ord("u"): lambda b: uuid.UUID(b.decode()),
    ord("t"): lambda b: _dt.datetime.fromisoformat(b.decode()),
    ord("d"): lambda b: _dt.date.fromisoformat(b.decode()),
    ord("T"): lambda b: _dt.time.fromisoformat(b.decode()),
}


def decode_field(ctx: Context, label: str, raw: bytes) -> Any:
    """Inverse of :func:`encode_field`; :class:`DecodeError` for bytes that are not ours."""
    if raw == b"-":
        return None
    if raw in (b"?1", b"?0"):
        return raw == b"?1"
    if not raw:
        raise DecodeError(f"{label}: empty field value")
    tag, body = raw[0], raw[1:]
    try:
        if tag == ord("c"):
            return ctx.codec.loads(body, label)
        return _PARSERS[tag](body)
    except Exception as exc:
        raise DecodeError(f"{label}: {exc!r}") from None


def to_fields(obj: Any) -> dict[str, Any]:
    """The fields of a mapping, a dataclass instance or a pydantic model (``model_dump()``,
    duck-typed: pydantic is not a dependency)."""
    if isinstance(obj, Mapping):
        fields = dict(obj)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        fields = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    elif callable(getattr(obj, "model_dump", None)):
        fields = obj.model_dump()
    else:
        raise SerializationError(
            f"cannot store a {type(obj).__name__} as an object: give a dict, a dataclass "
            "instance or a pydantic model"
        )
    bad = [k for k in fields if not isinstance(k, str)]
    if bad:
        raise SerializationError(f"object field names must be strings, got {bad[0]!r}")
    return fields


# -- the structure -------------------------------------------------------------------------


class _Objects(Structure):
    __slots__ = ("_label", "_policy", "family")

    def __init__(self, ctx: Context, driver: Any, family: str, ttl: TTLLike) -> None:
        super().__init__(ctx, driver)
        ctx.keys.obj(family, 0)  # validates the family: a non-empty string
        self.family = family
        self._label = family + ":"
        self._policy = ctx.family_policy(family, ttl)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.family!r}, ttl={self._policy!r})"

    def redis_key(self, id: str | int) -> str:
        """The Redis key of object *id*'s hash, e.g. ``app:~obj:{user:42}``."""
        return self._ctx.keys.obj(self.family, id)

    # -- helpers ---------------------------------------------------------------------------
    def _keys(self, id: str | int) -> tuple[str, str]:
        rkey = self._ctx.keys.obj(self.family, id)
        return rkey, rkey + ":lease"

    def _encode(self, id: str | int, fields: Mapping[str, Any]) -> list[bytes | str]:
        """Field, value, field, value, ... checked against ``max_value_size``."""
        flat: list[bytes | str] = []
        size = 0
        for name, value in fields.items():
            data = encode_field(self._ctx, f"{self._label}{id}.{name}", value)
            size += len(name) + len(data)
            flat += (name, data)
        if size > self._ctx.max_value_size:
            raise ValueTooLargeError(
                f"object {self._label}{id} is {size} bytes encoded, over max_value_size="
                f"{self._ctx.max_value_size}; nothing was written. Cache fewer fields"
            )
        return flat

    def _decode(self, id: str | int, raw: Any) -> dict[str, Any]:
        # HGETALL gives a dict; the same reply from Lua is a flat list.
        pairs: Iterable[tuple[Any, Any]] = (
            raw.items() if isinstance(raw, dict) else zip(raw[::2], raw[1::2], strict=True)
        )
        out = {}
        for name, value in pairs:
            field = text(name)
            out[field] = decode_field(self._ctx, f"{self._label}{id}.{field}", value)
        return out

    def _read(self, id: str | int, rkey: str, raw: Any) -> PlanOf[dict[str, Any] | None]:
        """Decode a HGETALL reply; a hash that is not ours is a miss, counted and deleted."""
        if not raw:
            return None
        try:
            return self._decode(id, raw)
        except DecodeError:
            self._ctx.stats.incr(self.family, "decode_errors")
            with contextlib.suppress(CacheUnavailableError):
                yield ("UNLINK", rkey)
            return None

    def _failed_write(self, *rkeys: str) -> None:
        """A write did not reach Redis: the old object (and any fill lease) is owed a delete."""
        self._ctx.stats.incr(self.family, "fail_open")
        for rkey in rkeys:
            self._ctx.owed.unlink([rkey, rkey + ":lease"], self.family)

    # -- verbs -----------------------------------------------------------------------------
    @verb
    def put(self, id: str | int, obj: Any) -> PlanOf[bool]:
        """Cache *obj* (a dict, dataclass or pydantic model) as object *id*, replacing what
        was cached, with the family's TTL. Returns False if Redis was unreachable."""
        rkey, lease = self._keys(id)
        self._ctx.wrote()
        fields = to_fields(obj)
        if not fields:
            raise InvalidArgumentError(
                f"object {self._label}{id} has no fields; a Redis hash cannot be empty"
            )
        flat = self._encode(id, fields)
        try:
            yield Eval(scripts.OBJ_PUT, [rkey, lease], (expiry_ms(self._ctx, self._policy), *flat))
        except CacheUnavailableError:
            self._failed_write(rkey)
            return False
        return True

    @verb
    def get(self, id: str | int) -> PlanOf[dict[str, Any] | None]:
        """Object *id* as a dict, or None when it is not cached. One ``HGETALL``."""
        rkey = self._ctx.keys.obj(self.family, id)
        try:
            raw = yield ("HGETALL", rkey)
        except CacheUnavailableError:
            self._ctx.stats.incr(self.family, "fail_open")
            return None
        found = yield from self._read(id, rkey, raw)
        if found is None:
            self._ctx.stats.miss(self.family)
        else:
            self._ctx.stats.hit(self.family)
        return found

    @verb
    def get_field(self, id: str | int, name: str, default: Any = None) -> PlanOf[Any]:
        """One field of object *id* (one ``HGET``; no other field is read or decoded), or
        *default* when the object or the field is not cached. ``default=hitrate.MISSING``
        tells a stored None from an absent field."""
        rkey = self._ctx.keys.obj(self.family, id)
        _field_names((name,))
        try:
            raw = yield ("HGET", rkey, name)
        except CacheUnavailableError:
            self._ctx.stats.incr(self.family, "fail_open")
            return default
        if raw is None:
            self._ctx.stats.miss(self.family)
            return default
        try:
            value = decode_field(self._ctx, f"{self._label}{id}.{name}", raw)
        except DecodeError:
            self._ctx.stats.incr(self.family, "decode_errors")
            self._ctx.stats.miss(self.family)
            return default
        self._ctx.stats.hit(self.family)
        return value

    @verb
    def get_fields(self, id: str | int, *names: str) -> PlanOf[dict[str, Any] | None]:
        """The named fields of object *id* that are cached (one round trip: ``EXISTS`` and
        ``HMGET`` pipelined; other fields are neither read nor decoded), or None when the
        object is not cached."""
        rkey = self._ctx.keys.obj(self.family, id)
        _field_names(names)
        if not names:
            raise InvalidArgumentError("get_fields() needs at least one field name")
        try:
            exists, values = yield Batch([("EXISTS", rkey), ("HMGET", rkey, *names)])
        except CacheUnavailableError:
            self._ctx.stats.incr(self.family, "fail_open")
            return None
        if not exists:
            self._ctx.stats.miss(self.family)
            return None
        out = {}
        try:
            for name, raw in zip(names, values, strict=True):
                if raw is not None:
                    out[name] = decode_field(self._ctx, f"{self._label}{id}.{name}", raw)
        except DecodeError:
            self._ctx.stats.incr(self.family, "decode_errors")
            self._ctx.stats.miss(self.family)
            return None
        self._ctx.stats.hit(self.family)
        return out

    @verb
    def update(
        self, id: str | int, fields: Mapping[str, Any] | None = None, /, **more: Any
    ) -> PlanOf[bool]:
        """Change some fields of object *id* if it is cached, in one atomic step, keeping its
        TTL and its other fields: ``users.update(42, name="Ada")`` or
        ``users.update(42, {"name": "Ada"})``. An expired or invalidated object is not
        brought back. Returns True when the object was updated, False when it was not
        cached (or Redis was unreachable: the object is then invalidated once it is back)."""
        rkey, lease = self._keys(id)
        self._ctx.wrote()
        changes = {**(fields or {}), **more}
        _field_names(changes)
        if not changes:
            raise InvalidArgumentError("update() needs at least one field to change")
        flat = self._encode(id, changes)
        try:
            updated = yield Eval(scripts.OBJ_UPDATE, [rkey, lease], flat)
        except CacheUnavailableError:
            self._failed_write(rkey)
            return False
        return bool(updated)

    @verb
    def invalidate(self, *ids: str | int) -> PlanOf[int]:
        """Drop objects from the cache (and revoke fills in flight); returns how many were
        cached. If Redis is unreachable they are invalidated once it is back."""
        pairs = [self._keys(i) for i in ids]
        self._ctx.wrote()
        if not pairs:
            return 0
        try:
            replies = yield _unlink_each([k for pair in pairs for k in pair])
        except CacheUnavailableError:
            self._failed_write(*(rkey for rkey, _ in pairs))
            return 0
        self._ctx.stats.incr(self.family, "invalidations", len(pairs))
        return sum(int(r) for r in replies[::2])

    @calling("fetch")
    def get_or_fetch(
        self, id: str | int, fetch: Callable[[], Any] | Callable[[], Awaitable[Any]]
    ) -> PlanOf[dict[str, Any] | None]:
        """Cache-aside for objects: object *id*, or ``fetch()``'s result (a dict, dataclass
        or pydantic model; a sync or async function) cached for the next caller and returned
        as the dict a later ``get`` gives. A ``None`` or empty result is returned as is and
        not cached. One caller per object loads at a time, across threads and processes,
        with the lease plan of cache entries (:mod:`hitrate.plans.leases`): bounded waits,
        the lease given back however the load ends, a loader's error shown to waiters."""
        rkey, _ = self._keys(id)
        ctx, family, policy = self._ctx, self.family, self._policy
        store = _ObjectStore(self, id, rkey)
        try:
            raw = yield ("HGETALL", rkey)
        except CacheUnavailableError:
            return cast(Fields, (yield from load_down(ctx, store, policy.lease)))
        found = yield from self._read(id, rkey, raw)
        if found is not None:
            ctx.stats.hit(family)
            return found
        ctx.stats.miss(family)
        if (yield Coalesce(rkey, policy.lease)) is TIMEOUT:
            return cast(Fields, (yield from load_unfilled(ctx, store)))
        return cast(Fields, (yield from lease_and_fill(ctx, store, policy)))


Fields = dict[str, Any] | None


class _ObjectStore:
    """A cached object (a hash) for the lease plan: ``obj_lease.lua`` / ``obj_fill.lua``."""

    __slots__ = ("family", "id", "label", "objects", "rkey")

    def __init__(self, objects: _Objects, id: str | int, rkey: str) -> None:
        self.objects, self.id, self.rkey = objects, id, rkey
        self.family = objects.family
        self.label = f"{objects.family}:{id}"

    def prepare(self) -> PlanOf[None]:
        return  # an object and its lease share a slot: nothing to read first
        yield

    def lease(self, token: str, seen: bytes) -> Eval:
        lease_ms = math.ceil(self.objects._policy.lease * 1000)
        return Eval(scripts.OBJ_LEASE, [self.rkey, self.rkey + ":lease"], (token, lease_ms))

    def leased(self, reply: Any) -> None:
        pass

    def poll(self) -> Any:
        return Batch(
            [("HGETALL", self.rkey), ("GET", self.rkey + ":lease"), ("GET", self.rkey + ":err")]
        )

    def read(self, raw: Any) -> PlanOf[tuple[Any, bytes]]:
        found = yield from self.objects._read(self.id, self.rkey, raw)
        return (MISSING if found is None else found), b""

    def fill(self, token: str, value: Any, load_time: float, reply: Any) -> tuple[Eval | None, Any]:
        objects = self.objects
        fields = None if value is None else to_fields(value)
        if not fields:  # nothing to cache ("not found", or no fields)
            return None, fields
        flat = objects._encode(self.id, fields)
        op = Eval(
            scripts.OBJ_FILL,
            [self.rkey, self.rkey + ":lease"],
            (token, expiry_ms(objects._ctx, objects._policy), *flat),
        )
        return op, objects._decode(self.id, flat)  # exactly what a later get() returns

    def filled(self, reply: Any) -> PlanOf[bool]:
        return bool(reply)
        yield

    def served(self, value: Any) -> Any:
        return None if value is None else to_fields(value)


def _unlink_each(rkeys: list[str]) -> Batch:
    return Batch([("UNLINK", k) for k in rkeys])


def _field_names(names: Iterable[Any]) -> None:
    for name in names:
        if not isinstance(name, str):
            raise InvalidArgumentError(f"field names are strings, got {name!r}")


class Objects(_Objects, Synced):
    """Objects of one family cached as hashes, for :class:`~hitrate.Cache`::

    users = cache.objects("user", ttl=USER)
    users.put(42, {"name": "Ada", "born": date(1815, 12, 10), "admin": True})
    users.get_field(42, "born")            # date(1815, 12, 10): one HGET
    users.update(42, admin=False)          # only if still cached; TTL kept
    users.get_or_fetch(7, lambda: db.load_user(7))
    """

    __slots__ = ()


class AsyncObjects(_Objects, Awaited):
    """The asyncio twin of :class:`Objects`: the same verbs, awaited."""

    __slots__ = ()
