"""The entry format: one Redis string per cached value, a 20-byte header then the payload.

Header (little-endian, ``struct`` format ``<BBBxdfI``)::

    offset  size  field
    0       1     format version (2)
    1       1     codec id (1 json, 2 msgpack, 3 signed pickle)
    2       1     flags (bit 0: the cached value is None)
    3       1     reserved (0)
    4       8     logical expiry, Unix seconds as float64; 0 = none
    12      4     duration of the load that produced it, seconds as float32
    16      4     namespace generation it was written under (see ``Cache.bump``)

Redis keeps the key a little longer than the logical expiry when a policy has a stale
window, so one caller can refresh while others are served the old value.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import decimal
import hashlib
import hmac
import pickle
import struct
import uuid
from typing import Any, NamedTuple, Protocol

import orjson

from .errors import ConfigurationError, SerializationError

__all__ = [
    "HEADER",
    "Codec",
    "Entry",
    "JsonCodec",
    "MsgpackCodec",
    "PickleCodec",
    "decode_entry",
    "encode_entry",
    "make_codec",
]

FORMAT_VERSION = 2
HEADER = struct.Struct("<BBBxdfI")
FLAG_NONE = 1


class Codec(Protocol):
    """Turns values into bytes and back. ``id`` is stored in every entry's header."""

    id: int
    name: str

    def dumps(self, value: Any, key: str) -> bytes: ...

    def loads(self, data: bytes, key: str) -> Any: ...


class JsonCodec:
    """orjson: the default. Fast, readable in ``redis-cli``, language-neutral.

    It encodes str, int, float, bool, None, list, dict (str keys), tuple, datetime, date,
    time, UUID, dataclasses and Enums; these come back as their JSON forms (a datetime as
    an ISO 8601 string, a dataclass as a dict). ``Decimal``, sets and bytes are refused
    with a :class:`SerializationError` naming the key: use ``codec="msgpack"`` to keep
    their types.
    """

    id = 1
    name = "json"

    def dumps(self, value: Any, key: str) -> bytes:
        try:
            return orjson.dumps(value)
        except TypeError as exc:
            raise SerializationError(
                f"cannot JSON-encode the value for key {key!r}: {exc}. Convert it to JSON "
                "types, or use codec='msgpack' (keeps Decimal, datetime, UUID, set, bytes)"
            ) from None

    def loads(self, data: bytes, key: str) -> Any:
        return orjson.loads(data)


# msgpack extension type codes for the types JSON loses.
_EXT_DATETIME, _EXT_DATE, _EXT_UUID, _EXT_DECIMAL, _EXT_SET, _EXT_TUPLE = range(1, 7)


class MsgpackCodec:
    """msgpack with extension types: datetime, date, UUID, Decimal, set and tuple come back
    as themselves; bytes stay bytes; dataclasses are stored as dicts. Needs ``hitrate[msgpack]``.
    """

    id = 2
    name = "msgpack"

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
        if isinstance(obj, _dt.datetime):
            return m.ExtType(_EXT_DATETIME, obj.isoformat().encode())
        if isinstance(obj, _dt.date):
            return m.ExtType(_EXT_DATE, obj.isoformat().encode())
        if isinstance(obj, uuid.UUID):
            return m.ExtType(_EXT_UUID, obj.bytes)
        if isinstance(obj, decimal.Decimal):
            return m.ExtType(_EXT_DECIMAL, str(obj).encode())
        if isinstance(obj, set | frozenset):
            return m.ExtType(_EXT_SET, self._pack(sorted(obj, key=repr)))
        if isinstance(obj, tuple):
            return m.ExtType(_EXT_TUPLE, self._pack(list(obj)))
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            return dataclasses.asdict(obj)
        raise TypeError(f"type {type(obj).__name__} is not supported")

    def _ext_hook(self, code: int, data: bytes) -> Any:
        if code == _EXT_DATETIME:
            return _dt.datetime.fromisoformat(data.decode())
        if code == _EXT_DATE:
            return _dt.date.fromisoformat(data.decode())
        if code == _EXT_UUID:
            return uuid.UUID(bytes=data)
        if code == _EXT_DECIMAL:
            return decimal.Decimal(data.decode())
        if code == _EXT_SET:
            return set(self._unpack(data))
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
        try:
            return self._pack(value)
        except (TypeError, ValueError, OverflowError) as exc:
            raise SerializationError(
                f"cannot msgpack-encode the value for key {key!r}: {exc}"
            ) from None

    def loads(self, data: bytes, key: str) -> Any:
        return self._unpack(data)


class PickleCodec:
    """pickle, only by explicit opt-in, and HMAC-SHA256 signed with ``secret``.

    The signature covers the Redis key too, so a value cannot be replayed under another key.
    A value whose signature does not verify is never unpickled: it reads as a miss.
    """

    id = 3
    name = "pickle"
    _SIG = 32

    def __init__(self, secret: bytes) -> None:
        if not isinstance(secret, bytes) or len(secret) < 16:
            raise ConfigurationError(
                "codec='pickle' needs pickle_secret=<at least 16 random bytes>; pickle runs "
                "code when loading, so every value is signed and checked before it is read"
            )
        self._secret = secret

    def _sign(self, data: bytes, key: str) -> bytes:
        return hmac.new(self._secret, key.encode() + b"\0" + data, hashlib.sha256).digest()

    def dumps(self, value: Any, key: str) -> bytes:
        try:
            data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            raise SerializationError(f"cannot pickle the value for key {key!r}: {exc}") from None
        return self._sign(data, key) + data

    def loads(self, data: bytes, key: str) -> Any:
        sig, body = data[: self._SIG], data[self._SIG :]
        if len(sig) != self._SIG or not hmac.compare_digest(sig, self._sign(body, key)):
            raise ValueError(f"bad signature on the pickled value under {key!r}")
        return pickle.loads(body)


def make_codec(name: str | Codec, pickle_secret: bytes | None = None) -> Codec:
    """A codec by name (``"json"``, ``"msgpack"``, ``"pickle"``) or a custom instance."""
    if not isinstance(name, str):
        return name
    if name == "json":
        return JsonCodec()
    if name == "msgpack":
        return MsgpackCodec()
    if name == "pickle":
        return PickleCodec(pickle_secret or b"")
    raise ConfigurationError(f"unknown codec {name!r}: use 'json', 'msgpack' or 'pickle'")


class Entry(NamedTuple):
    """A decoded cache entry."""

    value: Any
    expires_at: float  # logical expiry, Unix seconds; 0.0 = never
    load_time: float  # seconds the load that produced it took
    gen: int = 0  # namespace generation it was written under


class DecodeError(ValueError):
    """Bytes under a key that are not a hitrate entry this codec can read."""


def encode_entry(
    codec: Codec, key: str, value: Any, expires_at: float, load_time: float, gen: int = 0
) -> bytes:
    """Header + payload. ``None`` is stored as a flag with an empty payload."""
    if value is None:
        return HEADER.pack(FORMAT_VERSION, codec.id, FLAG_NONE, expires_at, load_time, gen)
    header = HEADER.pack(FORMAT_VERSION, codec.id, 0, expires_at, load_time, gen)
    return header + codec.dumps(value, key)


def decode_entry(codec: Codec, key: str, raw: bytes) -> Entry:
    """Parse an entry; raises :class:`DecodeError` for anything that is not one of ours."""
    try:
        version, codec_id, flags, expires_at, load_time, gen = HEADER.unpack_from(raw)
    except struct.error:
        raise DecodeError(f"{key!r} holds {len(raw)} bytes, too short for an entry") from None
    if version != FORMAT_VERSION or codec_id != codec.id:
        raise DecodeError(
            f"{key!r} holds format {version} codec {codec_id}, expected {FORMAT_VERSION}/{codec.id}"
        )
    if flags & FLAG_NONE:
        return Entry(None, expires_at, load_time, gen)
    try:
        value = codec.loads(raw[HEADER.size :], key)
    except Exception as exc:
        raise DecodeError(f"{key!r}: {exc}") from None
    return Entry(value, expires_at, load_time, gen)
