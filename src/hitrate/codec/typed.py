"""Values keep their type: the exactness checks and the typed (``type=``) encoding.

Without a type, a codec accepts only values it gives back exactly: equal and of the same
type, all the way down (:func:`json_exact`, and the strict msgpack packer). With a type,
values are encoded by msgspec and decoded by a ``msgspec`` decoder built once per type
(:func:`type_spec`), which rebuilds dataclasses, ``msgspec.Struct``, pydantic models,
datetimes, UUIDs, Decimals, tuples, sets and enums; the write is checked by decoding it
back, so what a hit returns is what the loader returned.

This module is on the fill path; only :meth:`TypeSpec.decode_json` is on the hit path.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import decimal
import functools
import inspect
import math
import sys
import types
import typing
import uuid
from collections.abc import Callable
from typing import Any

import msgspec

from ..errors import SerializationError

__all__ = [
    "TypeSpec",
    "codec_type_from_annotation",
    "find_problem",
    "json_exact",
    "type_spec",
]

_NoneType = type(None)
_JSON_SCALARS = frozenset({str, int, bool, _NoneType})
# What the msgpack codec keeps as itself (see MsgpackCodec); containers are checked apart.
MSGPACK_SCALARS = frozenset(
    {str, int, float, bool, _NoneType, bytes, _dt.datetime, _dt.date, _dt.time}
    | {uuid.UUID, decimal.Decimal}
)
MSGPACK_NATIVE = (_dt.datetime, _dt.date, _dt.time, uuid.UUID, decimal.Decimal, bytes)

FIX = (
    "pass type=<the loader's return type> (or give the cached function a return "
    "annotation), or use codec='msgpack' or codec='pickle'"
)


# -- without a type: exact JSON only ---------------------------------------------------------


def json_exact(value: Any) -> bool:
    """True when orjson gives *value* back equal and of the same type at every level: str,
    int, finite float, bool, None, and lists and str-keyed dicts of those. Fast: one pass,
    no allocation (orjson itself refuses non-str dict keys)."""
    t = type(value)
    if t in _JSON_SCALARS:
        return True
    if t is float:
        return math.isfinite(value)
    if t is dict:
        items = value.values()
    elif t is list:
        items = value
    else:
        return False
    for v in items:
        t = type(v)
        if t in _JSON_SCALARS:
            continue
        if t is float:
            if v - v != 0.0:  # NaN or +-inf
                return False
        elif not json_exact(v):
            return False
    return True


def _describe(v: Any) -> str:
    if type(v) is float:
        return f"the float {v!r}, which JSON cannot hold"
    name = type(v).__qualname__
    back = {
        tuple: "a list",
        set: "a list",
        frozenset: "a list",
        _dt.datetime: "a str",
        _dt.date: "a str",
        _dt.time: "a str",
        uuid.UUID: "a str",
    }.get(type(v))
    if back is None and dataclasses.is_dataclass(v):
        back = "a dict"
    if back is None:
        for base in (str, int, float, dict, list):
            if isinstance(v, base):
                back = f"a plain {base.__name__}"
                break
    return f"a {name}" + (f", which would come back as {back}" if back else "")


def find_problem(
    value: Any,
    ok: Callable[[Any], bool],
    keys_ok: Callable[[Any], bool] = lambda k: type(k) is str,
    key_rule: str = "JSON keys are strings",
) -> str:
    """Where in *value* the first thing *ok* refuses is, e.g. ``value['created'] is a
    datetime, ...`` (the slow path, run only when a value was refused)."""
    stack: list[tuple[str, Any]] = [("value", value)]
    while stack:
        path, v = stack.pop()
        if type(v) is dict:
            for k, item in v.items():
                if not keys_ok(k):
                    name = type(k).__qualname__
                    return f"{path} has the key {k!r} (a {name}); {key_rule}"
                stack.append((f"{path}[{k!r}]", item))
        elif type(v) in (list, tuple, set, frozenset) and ok(v):
            stack.extend((f"{path}[{i}]", item) for i, item in enumerate(v))
        elif not ok(v):
            return f"{path} is {_describe(v)}"
    return "value cannot be stored exactly"


def json_ok(v: Any) -> bool:
    t = type(v)
    return t in _JSON_SCALARS or t in (dict, list) or (t is float and v - v == 0.0)


# -- with a type: msgspec ------------------------------------------------------------------


def _pydantic_model(cls: Any) -> bool:
    pydantic = sys.modules.get("pydantic")  # never imported by us: only if the app uses it
    return pydantic is not None and isinstance(cls, type) and issubclass(cls, pydantic.BaseModel)


def enc_hook(obj: Any) -> Any:
    """msgspec's hook for what it does not know: pydantic (v2) models."""
    if _pydantic_model(type(obj)):
        return obj.model_dump(mode="json")
    raise NotImplementedError(f"{type(obj).__qualname__} is not supported")


def dec_hook(tp: Any, obj: Any) -> Any:
    if _pydantic_model(tp):
        return tp.model_validate(obj)
    raise NotImplementedError(f"{getattr(tp, '__qualname__', tp)} is not supported")


def _runtime_classes(tp: Any) -> tuple[type, ...] | None:
    """Classes a value of annotation *tp* is an instance of at the top, or None when the
    annotation gives no usable check (the round trip still checks the value)."""
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _runtime_classes(typing.get_args(tp)[0])
    if origin is typing.Union or origin is types.UnionType:
        out: list[type] = []
        for arg in typing.get_args(tp):
            sub = _runtime_classes(arg)
            if sub is None:
                return None
            out.extend(sub)
        return tuple(out)
    if origin is typing.Literal:
        return tuple({type(a) for a in typing.get_args(tp)})
    if tp is None or tp is _NoneType:
        return (_NoneType,)
    if isinstance(origin, type):
        return (origin,)
    supertype = getattr(tp, "__supertype__", None)  # typing.NewType
    if supertype is not None:
        return _runtime_classes(supertype)
    if typing.is_typeddict(tp):
        return (dict,)
    if isinstance(tp, type):
        return (tp,)
    return None


def _type_name(tp: Any) -> str:
    return tp.__qualname__ if isinstance(tp, type) else repr(tp).replace("typing.", "")


def _unsupported(tp: Any) -> str:
    """The first class inside *tp* that msgspec cannot rebuild (and that is not a pydantic
    model), or ``""``."""
    try:
        info = msgspec.inspect.type_info(tp)
    except (TypeError, ValueError) as exc:
        return str(exc)
    seen: set[int] = set()
    stack: list[Any] = [info]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, msgspec.inspect.CustomType):
            if not _pydantic_model(node.cls):
                return node.cls.__qualname__
            continue
        for name in ("item_type", "key_type", "value_type", "item_types", "types", "fields"):
            child = getattr(node, name, None)
            if isinstance(child, tuple):
                stack.extend(getattr(c, "type", c) for c in child)
            elif child is not None:
                stack.append(child)
    return ""


def _diff(a: Any, b: Any, path: str = "value") -> str:
    """Where *b* (the value decoded back) first differs from *a* (the value given), in
    value or in type; ``""`` when they are the same."""
    if type(a) is not type(b):
        return f"{path} is a {type(a).__qualname__} but would come back as a {type(b).__qualname__}"
    if type(a) is dict:
        if a.keys() != b.keys():
            return f"{path} would come back with other keys"
        for k in a:
            found = _diff(a[k], b[k], f"{path}[{k!r}]")
            if found:
                return found
        return ""
    if type(a) in (list, tuple):
        if len(a) != len(b):
            return f"{path} would come back with another length"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            found = _diff(x, y, f"{path}[{i}]")
            if found:
                return found
        return ""
    if type(a) is float and math.isnan(a) and math.isnan(b):
        return ""
    if a != b:
        return f"{path} would not come back equal ({a!r} -> {b!r})"
    return ""


@dataclasses.dataclass(frozen=True, eq=False)
class TypeSpec:
    """One ``type=`` prepared once: its check, its encoders and its cached decoders."""

    tp: Any
    name: str
    classes: tuple[type, ...] | None
    unsupported: str
    json: msgspec.json.Decoder[Any]

    def check(self, key: str, value: Any) -> None:
        """Refuse a value that is not an instance of the declared type, before any I/O."""
        if self.classes is not None and not isinstance(value, self.classes):
            raise SerializationError(
                f"the value for key {key!r} is a {type(value).__qualname__}, not the declared "
                f"type={self.name}; pass the type the loader really returns"
            )

    def supported(self, key: str, codec: str) -> None:
        if self.unsupported:
            raise SerializationError(
                f"type={self.name} for key {key!r}: msgspec cannot rebuild "
                f"{self.unsupported} from {codec}; make it a dataclass, msgspec.Struct, "
                "pydantic model or NamedTuple, or use codec='pickle'"
            )

    def decode_json(self, data: bytes) -> Any:
        return self.json.decode(data)

    def convert(self, obj: Any) -> Any:
        """Rebuild the declared type from msgpack-decoded builtins."""
        return msgspec.convert(obj, self.tp, dec_hook=dec_hook, builtin_types=MSGPACK_NATIVE)

    def same_after(self, key: str, value: Any, back: Callable[[], Any]) -> None:
        """Decode the encoded value back (*back*) and refuse the write unless it is equal
        to *value* and of the same types: what the next hit would return."""
        try:
            decoded = back()
        except (msgspec.ValidationError, ValueError, TypeError) as exc:
            problem = f"it would not decode as {self.name}: {exc}"
        else:
            problem = _diff(value, decoded)
            if not problem:
                return
        raise SerializationError(
            f"cannot cache the value for key {key!r} as type={self.name}: {problem}. Give "
            "the exact type the loader returns (annotate nested fields), or use "
            "codec='pickle'"
        )


_JSON_ENCODER = msgspec.json.Encoder(enc_hook=enc_hook)
encode_json = _JSON_ENCODER.encode


def to_builtins(value: Any) -> Any:
    """Structs, dataclasses, pydantic models and enums to dicts, lists and their values;
    datetimes, UUIDs, Decimals, bytes and tuples kept for the msgpack packer."""
    return msgspec.to_builtins(value, builtin_types=MSGPACK_NATIVE, enc_hook=enc_hook)


def _build(tp: Any) -> TypeSpec:
    return TypeSpec(
        tp=tp,
        name=_type_name(tp),
        classes=_runtime_classes(tp),
        unsupported=_unsupported(tp),
        json=msgspec.json.Decoder(tp, dec_hook=dec_hook),
    )


_cached_build = functools.lru_cache(maxsize=512)(_build)


def type_spec(tp: Any) -> TypeSpec | None:
    """The prepared form of ``type=tp`` (cached per type), or None for "no type":
    ``None``, ``Any`` and ``object`` mean plain values, checked for exactness."""
    if tp is None or tp is Any or tp is object:
        return None
    if isinstance(tp, TypeSpec):
        return tp
    try:
        return _cached_build(tp)
    except TypeError as exc:
        if "unhashable" not in str(exc):
            raise SerializationError(f"type={tp!r} is not a type msgspec knows: {exc}") from None
        return _build(tp)


def codec_type_from_annotation(func: Callable[..., Any]) -> Any:
    """The return annotation of *func* as a ``type=`` for the codec, or None when it has
    none (or it is ``Any``, ``object``, ``None``, or cannot be resolved yet).

    For ``async def f() -> User`` this is ``User``. Forward references are resolved with
    :func:`typing.get_type_hints`, so call it once at the first call of the function (when
    every name it uses is importable), not at decoration time::

        tp = codec_type_from_annotation(get_user)
        cache.get_or_fetch(key, load, type=tp)
    """
    target = inspect.unwrap(func)
    try:
        hints = typing.get_type_hints(target, include_extras=True)
    except Exception:  # NameError for TYPE_CHECKING-only names, and the like
        return None
    tp = hints.get("return")
    if tp is None or tp is _NoneType or tp is Any or tp is object:
        return None
    if typing.get_origin(tp) in (typing.ClassVar, typing.Final):
        return None
    return tp
