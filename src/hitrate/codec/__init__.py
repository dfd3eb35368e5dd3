"""How values are stored: the entry format (:mod:`.entry`), the codecs (:mod:`.codecs`)
and the rule that values keep their type (:mod:`.typed`).

A hit returns a value equal to, and of the same type as, what was cached, or the write is
refused up front with :class:`~hitrate.SerializationError`. ``type=`` (or a cached
function's return annotation) enables typed decoding with msgspec.
"""

from .codecs import Codec, DecodeError, JsonCodec, MsgpackCodec, PickleCodec, make_codec
from .entry import (
    FLAG_NONE,
    FLAG_TYPED,
    FORMAT_VERSION,
    HEADER,
    Entry,
    decode_entry,
    encode_entry,
)
from .typed import codec_type_from_annotation, json_exact, type_spec

__all__ = [
    "FLAG_NONE",
    "FLAG_TYPED",
    "FORMAT_VERSION",
    "HEADER",
    "Codec",
    "DecodeError",
    "Entry",
    "JsonCodec",
    "MsgpackCodec",
    "PickleCodec",
    "codec_type_from_annotation",
    "decode_entry",
    "encode_entry",
    "json_exact",
    "make_codec",
    "type_spec",
]
