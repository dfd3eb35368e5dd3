"""The entry format: one Redis string per cached value, a small header then the payload.

Format 3 (written; little-endian)::

    offset  size  field
    0       1     format version (3)
    1       1     codec id (1 json, 2 msgpack, 4 signed pickle; 3 was the old pickle)
    2       1     flags: bit 0 the cached value is None; bit 1 typed (the payload is
                  decoded with the ``type=`` it was written with); bit 2 tagged (a tag
                  section follows); bit 3 expiry; bit 4 load time; bit 5 generation;
                  bit 6 the payload is zstd-compressed
    then, each only when its flag is set, in this order:
          6       logical expiry: Unix seconds u32, then milliseconds u16
          2       duration of the load that produced it, milliseconds u16 (only written
                  for policies with XFetch early refresh, which is what reads it)
          4       namespace generation stamp it was written under (``Cache.bump``)
          ...     the tag section

A typical entry's header is 13 bytes (expiry and generation). Format 2 entries (a fixed
20-byte header ``<BBBxdfI``: version, codec, flags, reserved, expiry float64, load time
float32, generation u32) are still read, so a deploy does not empty the cache.

A tagged entry's tag section names each tag with the version token it had when the
entry's load began: one byte *n*, then *n* times (tag length u16, tag UTF-8, token length
u8, token). The entry is served only while every one of those tokens is still current
(:mod:`hitrate.plans.tags`), so a tag invalidation holds even where the tag's member set
was evicted.

A payload of at least ``compress_over`` bytes (``Cache(compress_over=...)``, 1 KiB by
default; 0: never) is compressed with zstd when that saves at least a tenth of it.

Redis keeps the key a little longer than the logical expiry when a policy has a stale
window, so one caller can refresh while others are served the old value. The pickle
codec's payload starts with an HMAC over the key, the header (with the tag section) and
the (compressed) body.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any, NamedTuple, cast

import msgspec
import zstandard

from ..errors import ConfigurationError
from .codecs import Codec, DecodeError
from .typed import type_spec

__all__ = ["FLAG_NONE", "FLAG_TAGS", "FLAG_TYPED", "FORMAT_VERSION", "HEADER", "MAX_TAGS",
           "MAX_TAG_BYTES", "Entry", "decode_entry", "encode_entry", "plain_entries",
           "plain_entry"]  # fmt: skip

FORMAT_VERSION = 3
HEADER = struct.Struct("<BBBxdfI")  # format 2, still read
FLAG_NONE = 1
FLAG_TYPED = 2
FLAG_TAGS = 4
FLAG_EXPIRY = 8
FLAG_LOAD = 16
FLAG_GEN = 32
FLAG_ZSTD = 64
_KNOWN_FLAGS = FLAG_NONE | FLAG_TYPED | FLAG_TAGS | FLAG_EXPIRY | FLAG_LOAD | FLAG_GEN | FLAG_ZSTD
_V2_FLAGS = FLAG_NONE | FLAG_TYPED | FLAG_TAGS
#: The fixed fields after the first three bytes, by which of them are present.
_FIELDS = {
    mask: struct.Struct(
        "<"
        + ("IH" if mask & FLAG_EXPIRY else "")
        + ("H" if mask & FLAG_LOAD else "")
        + ("I" if mask & FLAG_GEN else "")
    )
    for mask in range(0, 64, 8)
}
MAX_DECOMPRESSED = 256 * 1024 * 1024  # a planted zstd bomb is refused past this
MAX_TAGS = 255  # tags per entry
MAX_TAG_BYTES = 16 * 1024  # UTF-8 bytes per tag name
_U16 = struct.Struct("<H")

#: ``((tag, version token), ...)`` as recorded in an entry.
TagVersions = tuple[tuple[str, bytes], ...]


def _tag_section(key: str, tags: TagVersions) -> bytes:
    if len(tags) > MAX_TAGS:
        raise ConfigurationError(
            f"key {key!r} has {len(tags)} tags; an entry can carry at most {MAX_TAGS} "
            "(tag the group, not each member)"
        )
    out = [bytes((len(tags),))]
    for tag, token in tags:
        name = tag.encode()
        out += [_U16.pack(len(name)), name, bytes((len(token),)), token]
    return b"".join(out)


def _read_tags(key: str, raw: bytes, at: int) -> tuple[TagVersions, int]:
    """The tag section starting at offset *at*, and the offset after it."""
    try:
        tags = []
        pos = at + 1
        for _ in range(raw[at]):
            (size,) = _U16.unpack_from(raw, pos)
            if not 0 < size <= MAX_TAG_BYTES:
                raise IndexError(size)
            name = raw[pos + 2 : pos + 2 + size].decode()
            pos += 2 + size
            end = pos + 1 + raw[pos]
            tags.append((name, bytes(raw[pos + 1 : end])))
            pos = end
        if pos > len(raw):
            raise IndexError(pos)
        return tuple(tags), pos
    except (IndexError, struct.error, UnicodeDecodeError):
        raise DecodeError(f"{key!r} holds a damaged tag section") from None


class Entry(NamedTuple):
    """A decoded cache entry."""

    value: Any
    expires_at: float  # logical expiry, Unix seconds; 0.0 = never
    load_time: float  # seconds the load that produced it took
    gen: int = 0  # namespace generation stamp it was written under
    tags: TagVersions = ()  # its tags, each with the version it was loaded under


def encode_entry(
    codec: Codec,
    key: str,
    value: Any,
    expires_at: float,
    load_time: float,
    type: Any = None,
    gen: int = 0,
    tags: TagVersions = (),
    compress_over: int = 0,
) -> bytes:
    """Header + payload, or :class:`~hitrate.SerializationError` (before anything is
    written) for a value a hit would not give back equal and of the same type.

    ``type`` (a class or annotation such as ``list[User]``): encode for typed decoding and
    refuse a value that is not of that type. ``None`` is stored as a flag. *load_time* 0
    is not stored (only XFetch reads it); *compress_over*: zstd for payloads of at least
    that many bytes (0: never).
    """
    flags = 0
    seal = getattr(codec, "seal", None)  # a signing codec signs header and body together
    if value is None:
        flags, body = FLAG_NONE, b""
    else:
        spec = type_spec(type)
        if spec is None:
            body = (codec.dumps_raw if seal else codec.dumps)(value, key)  # type: ignore[attr-defined]
        else:
            dumps_typed = getattr(codec, "dumps_typed", None)
            if dumps_typed is None:
                raise ConfigurationError(f"codec {codec.name!r} does not support type=")
            body, typed = dumps_typed(value, key, spec)
            if typed:
                flags = FLAG_TYPED
        if compress_over and len(body) >= compress_over:
            packed = _compress(body)
            if len(packed) * 10 <= len(body) * 9:
                flags, body = flags | FLAG_ZSTD, packed
    fields: list[int] = []
    if expires_at:
        seconds = int(expires_at)
        fields += [seconds, min(999, round((expires_at - seconds) * 1000))]
        flags |= FLAG_EXPIRY
    if load_time > 0:
        fields.append(min(65535, max(1, round(load_time * 1000))))
        flags |= FLAG_LOAD
    if gen:
        fields.append(gen)
        flags |= FLAG_GEN
    if tags:
        flags |= FLAG_TAGS
    header = bytes((FORMAT_VERSION, codec.id, flags)) + _FIELDS[flags & 56].pack(*fields)
    if tags:
        header += _tag_section(key, tags)
    if seal is not None:
        return header + seal(header, body, key)  # type: ignore[no-any-return]
    return header + body


def _compress(body: bytes) -> bytes:
    return zstandard.compress(body, 3)


def _decompress(key: str, body: bytes) -> bytes:
    try:
        return zstandard.ZstdDecompressor().decompress(body, max_output_size=MAX_DECOMPRESSED)
    except zstandard.ZstdError as exc:
        raise DecodeError(f"{key!r} holds a damaged compressed payload ({exc})") from None


def _header(codec: Codec, key: str, raw: bytes) -> tuple[int, float, float, int, int]:
    """``(flags, expiry, load time, generation, offset after the fixed fields)`` of a
    format 3 or 2 entry."""
    try:
        version, codec_id, flags = raw[0], raw[1], raw[2]
        if version == FORMAT_VERSION:
            known = _KNOWN_FLAGS
            fields = _FIELDS[flags & 56]
            values = fields.unpack_from(raw, 3)
            start = 3 + fields.size
        elif version == 2:
            known = _V2_FLAGS
            _, _, _, expires_at, load_time, gen = HEADER.unpack_from(raw)
            start = HEADER.size
        else:
            known = -1
    except (IndexError, struct.error):
        raise DecodeError(f"{key!r} holds {len(raw)} bytes, too short for an entry") from None
    if known == -1 and not 0 < version < 16:  # not a format of ours at all: garbage
        raise DecodeError(f"{key!r} holds bytes that are not a cache entry")
    if known == -1 or codec_id != codec.id or flags & ~known:
        raise DecodeError(
            f"{key!r} holds format {version} codec {codec_id} flags {flags}, expected "
            f"{FORMAT_VERSION}/{codec.id}: another version of the app, left alone",
            foreign=True,
        )
    if version == FORMAT_VERSION:
        expires_at = load_time = 0.0
        gen = i = 0
        if flags & FLAG_EXPIRY:
            expires_at, i = values[0] + values[1] / 1000, 2
        if flags & FLAG_LOAD:
            load_time, i = values[i] / 1000, i + 1
        if flags & FLAG_GEN:
            gen = values[i]
    return flags, expires_at, load_time, gen, start


_PLAIN = FLAG_EXPIRY | FLAG_LOAD | FLAG_GEN  # the flags plain_entry decodes itself


def plain_entry(codec: Codec, key: str, raw: bytes) -> tuple[Any, float, float, int] | None:
    """``(value, expiry, load time, generation)`` of the common entry - format 3, this
    codec, not None, typed, tagged or compressed, an unsigned codec - in one struct call
    and one ``loads``; None for any other (:func:`decode_entry` then decides). For the hit
    path and ``get_many``'s loop, where the general path's per-entry cost shows."""
    if len(raw) < 3 or raw[0] != FORMAT_VERSION or raw[1] != codec.id or raw[2] & ~_PLAIN:
        return None
    flags = raw[2]
    fields = _FIELDS[flags & 56]
    try:
        values = fields.unpack_from(raw, 3)
        value = codec.loads(raw[3 + fields.size :], key)
    except Exception:  # damaged or of another kind: decode_entry says which
        return None
    if flags == FLAG_EXPIRY | FLAG_GEN:  # the usual: expiry and generation
        return value, values[0] + values[1] / 1000, 0.0, values[2]
    i, expires_at, load_time = 0, 0.0, 0.0
    if flags & FLAG_EXPIRY:
        expires_at, i = values[0] + values[1] / 1000, 2
    if flags & FLAG_LOAD:
        load_time, i = values[i] / 1000, i + 1
    return value, expires_at, load_time, values[i] if flags & FLAG_GEN else 0


_USUAL = FLAG_EXPIRY | FLAG_GEN  # what nearly every entry carries
_USUAL_FIELDS = _FIELDS[_USUAL]
_USUAL_BODY = 3 + _USUAL_FIELDS.size


def plain_entries(
    codec: Codec, keys: Sequence[str], raws: Sequence[bytes | None]
) -> list[tuple[Any, float, int] | None]:
    """``(value, expiry, generation)`` of each reply of a multi-key read that
    :func:`plain_entry` would decode, in one loop; None for a missing key and for any
    entry it would not (:func:`decode_entry` then decides). The usual entry (expiry and
    generation, nothing else) is recognised by its first three bytes and decoded inline
    with the codec's one-argument ``loads_plain``, when it has one: ``get_many``'s
    per-key cost is most of its time past the round trip."""
    loads: Any = getattr(codec, "loads_plain", None)
    usual = bytes((FORMAT_VERSION, codec.id, _USUAL)) if loads is not None else None
    unpack = _USUAL_FIELDS.unpack_from
    there = cast("Sequence[bytes]", raws)  # when None is not among them
    # Every key there, every entry the usual kind (a warm read): comprehensions.
    if usual is not None and None not in raws and {raw[:3] for raw in there} == {usual}:
        try:
            heads = [unpack(raw, 3) for raw in there]
            values = [loads(raw[_USUAL_BODY:]) for raw in there]
        except Exception:  # one is damaged: the loop below finds which
            pass
        else:
            return [(v, s + ms / 1000, g) for v, (s, ms, g) in zip(values, heads, strict=True)]
    out: list[tuple[Any, float, int] | None] = []
    append = out.append
    for key, raw in zip(keys, raws, strict=True):
        if raw is None:
            append(None)
        elif usual is not None and raw.startswith(usual):
            try:
                seconds, millis, gen = unpack(raw, 3)
                value = loads(raw[_USUAL_BODY:])
            except Exception:  # damaged: decode_entry says how
                append(None)
            else:
                append((value, seconds + millis / 1000, gen))
        else:
            fast = plain_entry(codec, key, raw)
            append(None if fast is None else (fast[0], fast[1], fast[3]))
    return out


def decode_entry(codec: Codec, key: str, raw: bytes, type: Any = None) -> Entry:
    """Parse an entry; raises :class:`DecodeError` for anything that is not one of ours
    (``foreign=True`` when it is a well-formed entry of another codec, format or type)."""
    flags, expires_at, load_time, gen, start = _header(codec, key, raw)
    tags: TagVersions = ()
    if flags & FLAG_TAGS:
        tags, start = _read_tags(key, raw, start)
    payload = raw[start:]
    unseal = getattr(codec, "unseal", None)
    if unseal is not None:
        payload = unseal(raw[:start], payload, key)
    if flags & FLAG_NONE:
        return Entry(None, expires_at, load_time, gen, tags)
    if flags & FLAG_ZSTD:
        payload = _decompress(key, payload)
    loads = codec.loads_raw if unseal else codec.loads  # type: ignore[attr-defined]
    try:
        if type is None:
            if flags & FLAG_TYPED:
                raise DecodeError(
                    f"{key!r} was cached with type=: read it with the same type= (or from "
                    "the same cached function)",
                    foreign=True,
                )
            value = loads(payload, key)
        else:
            spec = type_spec(type)
            if spec is None:
                value = loads(payload, key)
            else:
                loads_typed = getattr(codec, "loads_typed", None)
                if loads_typed is None:
                    raise ConfigurationError(f"codec {codec.name!r} does not support type=")
                value = loads_typed(payload, key, spec, bool(flags & FLAG_TYPED))
    except (DecodeError, ConfigurationError):
        raise
    except msgspec.ValidationError as exc:  # well-formed, but not of the type asked for
        raise DecodeError(f"{key!r}: {exc}", foreign=True) from None
    except Exception as exc:
        raise DecodeError(f"{key!r}: {exc}") from None
    return Entry(value, expires_at, load_time, gen, tags)
