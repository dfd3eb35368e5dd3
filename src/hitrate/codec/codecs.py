"""The codecs: values to bytes and back, exactly (see :mod:`hitrate.codec.typed`).

* :class:`JsonCodec` (the default): without a type, only values JSON gives back exactly;
  with ``type=``, anything msgspec can rebuild.
* :class:`MsgpackCodec`: also keeps datetime, date, time, UUID, Decimal, bytes, tuple, set
  and frozenset; ``type=`` for dataclasses, Structs, pydantic models and enums.
* :class:`PickleCodec`: anything picklable, by explicit opt-in, HMAC-signed over the entry
  header and payload, with secret rotation.
"""

from __future__ import annotations

import datetime as _dt
import decimal
import hashlib
import hmac
import pickle
import struct
import uuid
from typing import Any, Protocol

import orjson

from ..errors import ConfigurationError, SerializationError
from .typed import (
    FIX,
    MSGPACK_SCALARS,
    TypeSpec,
    encode_json,
    find_problem,
    json_exact,
    json_ok,
    to_builtins,
)

__all__ = ["Codec", "DecodeError", "JsonCodec", "MsgpackCodec", "PickleCodec", "make_codec"]


class DecodeError(ValueError):
    """Bytes under a key that are not a hitrate entry this cache can read.

    ``foreign`` is True when the bytes are a well-formed entry of another kind: another
    codec or format version (another version of the app sharing the prefix), or a value
    written with a ``type=`` this read did not give. Such an entry is a miss but is never
    deleted; a corrupt one (``foreign=False``: garbage, a bad signature) is.
    """

    def __init__(self, message: str, *, foreign: bool = False) -> None:
        super().__init__(message)
        self.foreign = foreign


class Codec(Protocol):
    """Turns values into bytes and back. ``id`` is stored in every entry's header.

    The built-in codecs also have ``dumps_typed``/``loads_typed`` (for ``type=``) and the
    pickle codec ``seal``/``unseal`` (a signature over header and payload); a custom codec
    needs only these four members.
    """

    id: int
    name: str

    def dumps(self, value: Any, key: str) -> bytes: ...

    def loads(self, data: bytes, key: str) -> Any: ...


def _refused(key: str, codec: str, where: str) -> SerializationError:
    return SerializationError(
        f"cannot cache the value for key {key!r} exactly with the {codec} codec: {where}. "
        f"To keep its type, {FIX}"
    )


class JsonCodec:
    """orjson: the default. Fast, readable in ``redis-cli``, language-neutral.

    Without ``type=`` it accepts only what JSON gives back exactly: str, int (64-bit),
    finite float, bool, None, and lists and str-keyed dicts of those, nested. Anything else
    (datetime, date, tuple, set, Decimal, UUID, dataclass, enum, NaN, int keys, subclasses
    of str/int/dict/list) is refused with a :class:`SerializationError` saying where it is
    in the value. With ``type=`` (or the cached function's return annotation) it is encoded
    by msgspec and decoded back into that type on a hit.
    """

    id = 1
    name = "json"
    seal = unseal = None  # not a signing codec (found at once: no failed getattr per entry)
    #: :meth:`loads` without the key, for the multi-key read's loop (one call less per key).
    loads_plain = staticmethod(orjson.loads)

    def dumps(self, value: Any, key: str) -> bytes:
        """The value as payload bytes, or :class:`~hitrate.SerializationError` naming *key*."""
        if not json_exact(value):
            raise _refused(key, "JSON", find_problem(value, json_ok))
        try:
            return orjson.dumps(value)
        except TypeError as exc:  # non-str keys, ints over 64 bits, lone surrogates
            where = find_problem(value, json_ok)
            if where.startswith("value cannot"):
                where = str(exc)
            raise _refused(key, "JSON", where) from None

    def loads(self, data: bytes, key: str) -> Any:
        """The value from payload bytes written by :meth:`dumps`."""
        return orjson.loads(data)

    def dumps_typed(self, value: Any, key: str, spec: TypeSpec) -> tuple[bytes, bool]:
        """The payload, and whether a reader needs the type to decode it (False when the
        value is plain JSON anyway, so a read without ``type=`` gets it back exactly)."""
        spec.check(key, value)
        plain = json_exact(value)
        if plain:
            try:
                data = orjson.dumps(value)
            except TypeError:  # int keys, say: msgspec writes them as strings
                plain = False
        if not plain:
            spec.supported(key, "JSON")
            try:
                data = encode_json(value)
            except (TypeError, ValueError, OverflowError, NotImplementedError) as exc:
                raise SerializationError(
                    f"cannot JSON-encode the value for key {key!r} as type={spec.name}: {exc}"
                ) from None
        spec.same_after(key, value, lambda: spec.decode_json(data))
        return data, not plain

    def loads_typed(self, data: bytes, key: str, spec: TypeSpec, typed: bool) -> Any:
        """The value from *data*, decoded as *spec* (``typed``: written typed)."""
        return spec.decode_json(data)


# msgpack extension type codes for the types msgpack lacks.
_EXT_DATETIME, _EXT_DATE, _EXT_UUID, _EXT_DECIMAL, _EXT_SET, _EXT_TUPLE = range(1, 7)
_EXT_FROZENSET, _EXT_TIME = 7, 8
_MSGPACK_CONTAINERS = frozenset({list, dict, tuple, set, frozenset})


def _msgpack_ok(v: Any) -> bool:
    return type(v) in MSGPACK_SCALARS or type(v) in _MSGPACK_CONTAINERS


class MsgpackCodec:
    """msgpack with extension types: datetime, date, time, UUID, Decimal, set, frozenset
    and tuple come back as themselves, bytes stay bytes, dict keys keep their types, NaN
    stays NaN. Anything else (dataclasses, enums, subclasses of builtins) is refused
    without ``type=``. Needs ``hitrate[msgpack]``.
    """

    id = 2
    name = "msgpack"
    seal = unseal = None  # not a signing codec (found at once: no failed getattr per entry)

    def __init__(self) -> None:
        try:
            import msgpack
        except ImportError:
            raise ConfigurationError(
                "codec='msgpack' needs the msgpack package: pip install 'hitrate[msgpack]'"
            ) from None
        self._msgpack = msgpack

    def _default(self, obj: Any) -> Any:
        m = self._msgpack
        t = type(obj)  # exact types: a subclass would come back as its base
        if t is _dt.datetime:
            return m.ExtType(_EXT_DATETIME, obj.isoformat().encode())
        if t is _dt.date:
            return m.ExtType(_EXT_DATE, obj.isoformat().encode())
        if t is _dt.time:
            return m.ExtType(_EXT_TIME, obj.isoformat().encode())
        if t is uuid.UUID:
            return m.ExtType(_EXT_UUID, obj.bytes)
        if t is decimal.Decimal:
            return m.ExtType(_EXT_DECIMAL, str(obj).encode())
        if t is set:
            return m.ExtType(_EXT_SET, self._pack(sorted(obj, key=repr)))
        if t is frozenset:
            return m.ExtType(_EXT_FROZENSET, self._pack(sorted(obj, key=repr)))
        if t is tuple:
            return m.ExtType(_EXT_TUPLE, self._pack(list(obj)))
        raise TypeError(f"type {t.__qualname__} is not supported")

    def _ext_hook(self, code: int, data: bytes) -> Any:
        if code == _EXT_DATETIME:
            return _dt.datetime.fromisoformat(data.decode())
        if code == _EXT_DATE:
            return _dt.date.fromisoformat(data.decode())
        if code == _EXT_TIME:
            return _dt.time.fromisoformat(data.decode())
        if code == _EXT_UUID:
            return uuid.UUID(bytes=data)
        if code == _EXT_DECIMAL:
            return decimal.Decimal(data.decode())
        if code == _EXT_SET:
            return set(self._unpack(data))
        if code == _EXT_FROZENSET:
            return frozenset(self._unpack(data))
        if code == _EXT_TUPLE:
            return tuple(self._unpack(data))
        return self._msgpack.ExtType(code, data)

    def _pack(self, value: Any) -> bytes:
        packed: bytes = self._msgpack.packb(
            value, default=self._default, use_bin_type=True, strict_types=True
        )
        return packed

    def _unpack(self, data: bytes) -> Any:
        return self._msgpack.unpackb(data, ext_hook=self._ext_hook, raw=False, strict_map_key=False)

    def dumps(self, value: Any, key: str) -> bytes:
        """The value as payload bytes, or :class:`~hitrate.SerializationError` naming *key*."""
        try:
            return self._pack(value)
        except (TypeError, ValueError, OverflowError) as exc:
            where = find_problem(value, _msgpack_ok, _msgpack_ok, "msgpack cannot keep it")
            if where.startswith("value cannot"):
                where = str(exc)
            raise _refused(key, "msgpack", where) from None

    def loads(self, data: bytes, key: str) -> Any:
        """The value from payload bytes written by :meth:`dumps`."""
        return self._unpack(data)

    def dumps_typed(self, value: Any, key: str, spec: TypeSpec) -> tuple[bytes, bool]:
        """Payload bytes for typed decoding with *spec*, and whether they need it."""
        spec.check(key, value)
        try:
            return self._pack(value), False  # exact without its type
        except (TypeError, ValueError, OverflowError):
            pass
        spec.supported(key, "msgpack")
        try:
            data = self._pack(to_builtins(value))
        except (TypeError, ValueError, OverflowError, NotImplementedError) as exc:
            raise SerializationError(
                f"cannot msgpack-encode the value for key {key!r} as type={spec.name}: {exc}"
            ) from None
        spec.same_after(key, value, lambda: spec.convert(self._unpack(data)))
        return data, True

    def loads_typed(self, data: bytes, key: str, spec: TypeSpec, typed: bool) -> Any:
        """The value from *data*, decoded as *spec* (``typed``: written typed)."""
        value = self._unpack(data)
        if not typed and (spec.classes is None or isinstance(value, spec.classes)):
            return value  # stored exactly as it was given
        return spec.convert(value)


_LENGTH = struct.Struct("<I")


class PickleCodec:
    """pickle, only by explicit opt-in, and HMAC-SHA256 signed.

    The signature covers the Redis key, the entry's header (format, flags, expiry, load
    time) and the payload, so a stored value cannot be replayed under another key, with
    another expiry, or with a flag changed. A value whose signature does not verify is never
    unpickled: it reads as a miss (and is deleted as corrupt).

    ``PickleCodec(new, old)`` signs with the first secret and accepts any of them: add the
    new secret first, deploy, then drop the old one once its entries have expired.
    """

    id = 4  # 3 was pickle signed over the payload only; those entries read as foreign
    name = "pickle"
    _SIG = 32

    def __init__(self, *secrets: bytes) -> None:
        if not secrets or any(not isinstance(s, bytes) or len(s) < 16 for s in secrets):
            raise ConfigurationError(
                "codec='pickle' needs secrets=[<at least 16 random bytes>, ...] (or "
                "pickle_secret=); pickle runs code when loading, so every value is signed "
                "and checked before it is read"
            )
        self._macs = [hmac.new(s, digestmod=hashlib.sha256) for s in secrets]

    def _sign(self, mac: Any, key: str, context: bytes, body: bytes) -> bytes:
        h = mac.copy()
        kb = key.encode()
        h.update(_LENGTH.pack(len(kb)))
        h.update(kb)
        h.update(context)  # b"E" + the entry header, or b"F" for a bare value
        h.update(body)
        digest: bytes = h.digest()
        return digest

    def _verify(self, key: str, context: bytes, payload: bytes) -> bytes:
        sig, body = payload[: self._SIG], payload[self._SIG :]
        if len(sig) == self._SIG:
            for mac in self._macs:
                if hmac.compare_digest(sig, self._sign(mac, key, context, body)):
                    return body
        raise DecodeError(f"bad signature on the pickled value under {key!r}")

    def seal(self, header: bytes, body: bytes, key: str) -> bytes:
        """An entry's payload: the signature (first secret) over key, header and body,
        then the body."""
        return self._sign(self._macs[0], key, b"E" + header, body) + body

    def unseal(self, header: bytes, payload: bytes, key: str) -> bytes:
        """The body, if any secret's signature matches; else :class:`DecodeError`."""
        return self._verify(key, b"E" + header, payload)

    def dumps_raw(self, value: Any, key: str) -> bytes:
        """The unsigned pickle, for :func:`~hitrate.codec.encode_entry` to :meth:`seal`."""
        try:
            return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            raise SerializationError(f"cannot pickle the value for key {key!r}: {exc}") from None

    def loads_raw(self, body: bytes, key: str) -> Any:
        """The value from an already verified payload (no signature in front)."""
        return pickle.loads(body)  # only ever called on a body unseal() verified

    def dumps(self, value: Any, key: str) -> bytes:
        """A signed value outside an entry (an object cache field)."""
        body = self.dumps_raw(value, key)
        return self._sign(self._macs[0], key, b"F", body) + body

    def loads(self, data: bytes, key: str) -> Any:
        """The value from payload bytes written by :meth:`dumps`."""
        return self.loads_raw(self._verify(key, b"F", data), key)

    def dumps_typed(self, value: Any, key: str, spec: TypeSpec) -> tuple[bytes, bool]:
        """Payload bytes for typed decoding with *spec*, and whether they need it."""
        spec.check(key, value)
        return self.dumps_raw(value, key), False

    def loads_typed(self, data: bytes, key: str, spec: TypeSpec, typed: bool) -> Any:
        """The value from *data*, decoded as *spec* (``typed``: written typed)."""
        value = self.loads_raw(data, key)
        if spec.classes is not None and not isinstance(value, spec.classes):
            raise DecodeError(f"{key!r} holds a {type(value).__qualname__}, not {spec.name}")
        return value


def make_codec(
    name: str | Codec,
    pickle_secret: bytes | None = None,
    secrets: list[bytes] | tuple[bytes, ...] | None = None,
) -> Codec:
    """A codec by name (``"json"``, ``"msgpack"``, ``"pickle"``) or a custom instance.

    For pickle, ``secrets=[new, old]`` signs with the first and accepts any;
    ``pickle_secret=s`` is the same as ``secrets=[s]``.
    """
    if not isinstance(name, str):
        return name
    if name == "json":
        return JsonCodec()
    if name == "msgpack":
        return MsgpackCodec()
    if name == "pickle":
        if secrets is not None and pickle_secret is not None:
            raise ConfigurationError(
                "give either pickle_secret= or secrets=[new, old], not both "
                "(pickle_secret=s is secrets=[s])"
            )
        if secrets is not None:
            if isinstance(secrets, bytes | str):
                raise ConfigurationError("secrets= is a list: secrets=[new, old]")
            return PickleCodec(*secrets)
        return PickleCodec(pickle_secret)  # type: ignore[arg-type]  # None: refused there
    raise ConfigurationError(f"unknown codec {name!r}: use 'json', 'msgpack' or 'pickle'")
