"""Argument hashing for ``@cached``: how a call's arguments become a key.

With ``key="user:{user_id}"`` the bound arguments fill the template in, each substituted
value percent-encoded like a part of :func:`hitrate.key` (``:``, ``%`` and braces), so
``perm("a:b", "c")`` and ``perm("a", "b:c")`` under ``key="perm:{x}:{y}"`` are two keys.
With a callable ``key=`` the function gets the call's arguments and returns the key.

Without ``key=``, the key is ``module.qualname:<blake2b of the arguments>``, the arguments
in a canonical form that keeps types apart and does not depend on ``PYTHONHASHSEED``. Where
the qualified name does not identify one function -- a closure made by a factory
(``make.<locals>.load``) or a lambda -- the hash also covers the function's code and the
values its closure captured, so distinct closures get distinct keys, and the same code
over the same values gets the same keys in every process. A captured value with no stable
form (a connection, a lock) raises :class:`~hitrate.ConfigurationError` at decoration:
pass ``key=`` or ``name=`` instead.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import decimal
import enum
import hashlib
import inspect
import re
import string
import types
import uuid
from collections.abc import Callable
from typing import Any

import orjson

from .errors import ConfigurationError, InvalidKeyError
from .keys import encode_part

__all__ = ["key_builder"]


def _canonical(value: Any) -> Any:
    """A JSON-able form of *value* that keeps its type: ``{1: "a"}`` and ``{"1": "a"}``,
    ``(1, 2)`` and ``[1, 2]``, a date and its ISO string all differ."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return ["i", str(value)]
    if isinstance(value, float):
        return ["f", repr(value)]
    if isinstance(value, bytes):
        return ["b", value.hex()]
    if isinstance(value, list | tuple):
        return ["l" if isinstance(value, list) else "t", [_canonical(v) for v in value]]
    if isinstance(value, dict):
        items = [(orjson.dumps(_canonical(k)), _canonical(v)) for k, v in value.items()]
        return ["d", [[k.decode(), v] for k, v in sorted(items, key=lambda kv: kv[0])]]
    if isinstance(value, set | frozenset):
        members = sorted(orjson.dumps(_canonical(v)) for v in value)
        return ["s", [m.decode() for m in members]]
    if isinstance(value, enum.Enum):
        return ["e", type(value).__qualname__, _canonical(value.value)]
    if isinstance(value, _dt.datetime | _dt.date | _dt.time):
        return [type(value).__name__, value.isoformat()]
    if isinstance(value, uuid.UUID | decimal.Decimal):
        return [type(value).__name__, str(value)]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return ["dc", type(value).__qualname__, _canonical(dataclasses.asdict(value))]
    raise TypeError(f"type {type(value).__name__} has no stable form")


def _stable_digest(payload: Any) -> str:
    try:
        data = orjson.dumps(_canonical(payload))
    except TypeError as exc:
        raise InvalidKeyError(
            f"cannot build a cache key from these arguments ({exc}); pass "
            "key='name:{arg}' to @cached to say how the key is made"
        ) from None
    return hashlib.blake2b(data, digest_size=12).hexdigest()


def _arguments(sig: inspect.Signature) -> Callable[..., dict[str, Any]]:
    """``(args, kwargs) -> {parameter: value}`` in parameter order, defaults applied.

    Calls to functions without ``*args``/``**kwargs`` are served from precomputed names and
    defaults, without ``Signature.bind`` (which costs microseconds on every cache hit);
    anything unusual takes the general path, with its usual errors.
    """
    params = sig.parameters.values()
    names = list(sig.parameters)
    simple = all(
        p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        for p in params
    )
    n_positional = sum(p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in params)
    defaults = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}
    known = set(names)

    def general(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        bound = sig.bind(*args, **kwargs)
        bound.apply_defaults()
        return dict(bound.arguments)

    def arguments(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        if not simple or len(args) > n_positional:
            return general(args, kwargs)
        given = dict(zip(names, args, strict=False))
        if kwargs:
            if not kwargs.keys() <= known or given.keys() & kwargs.keys():
                return general(args, kwargs)
            given.update(kwargs)
        if len(given) == len(names) and not kwargs:
            return given
        values = {}
        for name in names:
            if name in given:
                values[name] = given[name]
            elif name in defaults:
                values[name] = defaults[name]
            else:
                return general(args, kwargs)  # raises the usual TypeError
        return values

    return arguments


# -- which function: closures and lambdas ------------------------------------------------


def _ambiguous(func: Callable[..., Any]) -> bool:
    """True when ``module.qualname`` may name more than one function object."""
    qualname = getattr(func, "__qualname__", "")
    return "<locals>" in qualname or "<lambda>" in qualname


def _code_form(code: types.CodeType) -> list[Any]:
    """What the code does, without where it sits (file path, line numbers)."""
    consts = [
        _code_form(c) if isinstance(c, types.CodeType) else _const_form(c) for c in code.co_consts
    ]
    return [code.co_code.hex(), consts, list(code.co_names), list(code.co_freevars)]


def _const_form(value: Any) -> Any:
    try:
        return _canonical(value)
    except TypeError:
        return ["repr", repr(value)]  # Ellipsis and the like: their repr is stable


def _captured(value: Any, owner: str, var: str, depth: int) -> Any:
    """A stable form of a value a closure captured, or ConfigurationError."""
    try:
        return _canonical(value)
    except TypeError:
        pass
    if isinstance(value, types.ModuleType):
        return ["mod", value.__name__]
    if isinstance(value, type):
        return ["cls", value.__module__, value.__qualname__]
    if isinstance(value, types.FunctionType):
        nested = _identity(value, depth + 1) if depth < 4 and _ambiguous(value) else None
        return ["fn", value.__module__, value.__qualname__, nested]
    if isinstance(value, types.BuiltinFunctionType | types.MethodDescriptorType):
        return ["builtin", getattr(value, "__module__", None), value.__qualname__]
    raise ConfigurationError(
        f"@cached cannot tell the closures of {owner} apart across processes: it captures "
        f"{var!r}, a {type(value).__name__}, which has no stable form. Say how keys are "
        f"made: key='name:{{param}}' or key=callable, or name='...' unique to this closure"
    )


def _identity(func: types.FunctionType, depth: int = 0) -> list[Any]:
    """Code and captured values of *func*: equal for the same code over the same values
    (in any process), different for closures over different values."""
    code = func.__code__
    cells = []
    for var, cell in zip(code.co_freevars, func.__closure__ or (), strict=True):
        try:
            value = cell.cell_contents
        except ValueError:  # not assigned yet (a recursive closure's own name)
            cells.append([var])
            continue
        cells.append([var, _captured(value, func.__qualname__, var, depth)])
    return [_code_form(code), cells]


# -- templates -----------------------------------------------------------------------------

_CONVERSIONS: dict[str, Callable[[Any], str]] = {"r": repr, "s": str, "a": ascii}


class _PartFormatter(string.Formatter):
    """``str.format`` that percent-encodes every substituted value like a key part."""

    def format_field(self, value: Any, format_spec: str) -> str:
        return encode_part(format(value, format_spec))


_FORMATTER = _PartFormatter()
Piece = tuple[str, int, Callable[[Any], str] | None, str]


def _positional_pieces(template: str, params: list[str]) -> list[Piece] | None:
    """``"user:{user_id}"`` -> ``[("user:", 0, None, "")]`` (literal, parameter index,
    conversion, format spec), or None when the template uses anything but plain parameter
    names (attributes, indexes, nested specs, unknown names). A trailing literal gets -1."""
    pieces: list[Piece] = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError:
        return None
    for literal, field, spec, conversion in parsed:
        if field is None:
            pieces.append((literal, -1, None, ""))
            continue
        if field not in params or (spec and "{" in spec):
            return None
        convert = _CONVERSIONS[conversion] if conversion else None
        pieces.append((literal, params.index(field), convert, spec or ""))
    return pieces


def _render(pieces: list[Piece], args: tuple[Any, ...]) -> str:
    out = []
    for literal, index, convert, spec in pieces:
        out.append(literal)
        if index >= 0:
            value = args[index]
            text = format(convert(value) if convert else value, spec)
            if "%" in text or ":" in text or "{" in text or "}" in text:
                text = encode_part(text)
            out.append(text)
    return "".join(out)


def _check_key(made: Any, func: Callable[..., Any]) -> str:
    if not isinstance(made, str):
        raise InvalidKeyError(
            f"key= of {func.__qualname__} returned {type(made).__name__} {made!r}; "
            "it must return the key as a string, e.g. hitrate.key('user', user_id)"
        )
    return made


def key_builder(
    func: Callable[..., Any],
    template: str | Callable[..., str] | None,
    name: str | None = None,
) -> Callable[..., str]:
    """Make ``(*args, **kwargs) -> key`` for :meth:`Cache.cached`.

    *template*: a format string over the parameters (``"user:{user_id}"``; defaults applied,
    substituted values encoded like :func:`hitrate.key` parts), or a callable that takes the
    function's own arguments and returns the key. Without one, the key is ``<name>:<blake2b
    of the arguments>``, *name* defaulting to ``module.qualname``; a first parameter named
    ``self`` or ``cls`` is left out of the hash. See the module docstring for closures.
    """
    sig = inspect.signature(func)
    params = list(sig.parameters)
    skip_first = bool(params) and params[0] in ("self", "cls")
    arguments = _arguments(sig)
    var_keyword = [
        p.name for p in sig.parameters.values() if p.kind is inspect.Parameter.VAR_KEYWORD
    ]
    if template is not None and name is not None:
        raise ConfigurationError("give @cached either key= or name=, not both")

    if callable(template):
        make = template

        def from_callable(*args: Any, **kwargs: Any) -> str:
            return _check_key(make(*args, **kwargs), func)

        return from_callable

    if template is not None:
        if not isinstance(template, str) or not template:
            raise ConfigurationError(
                "key= must be a format string such as 'user:{user_id}' or a callable "
                "taking the function's arguments"
            )
        try:
            parsed = list(string.Formatter().parse(template))
        except ValueError as exc:
            raise ConfigurationError(f"key template {template!r} is malformed: {exc}") from None
        fields = {re.split(r"[.\[]", f, maxsplit=1)[0] for _, f, _, _ in parsed if f is not None}
        if "" in fields or any(f.isdigit() for f in fields):
            raise ConfigurationError(
                f"key template {template!r} must name parameters: 'user:{{user_id}}'"
            )
        missing = fields - set(params)
        if missing and not var_keyword:
            raise ConfigurationError(
                f"key template {template!r} names {sorted(missing)}, which "
                f"{func.__qualname__}() has no parameter for"
            )

        pieces = _positional_pieces(template, params) if not var_keyword else None
        n = len(params)

        def from_template(*args: Any, **kwargs: Any) -> str:
            if pieces is not None and not kwargs and len(args) == n:
                return _render(pieces, args)  # the common call, without binding
            values = arguments(args, kwargs)
            for extra in var_keyword:
                values.update(values.pop(extra, {}))
            return _FORMATTER.vformat(template, (), values)

        return from_template

    if name is not None:
        if not isinstance(name, str) or not name or ":" in name:
            raise ConfigurationError(f"name= must be non-empty text without ':', got {name!r}")
        identity: str | None = None
    else:
        name = f"{func.__module__}.{func.__qualname__}".replace("<locals>.", "")
        identity = None
        if isinstance(func, types.FunctionType) and _ambiguous(func):
            identity = _stable_digest(_identity(func))
    prefix = name

    def from_hash(*args: Any, **kwargs: Any) -> str:
        items = list(arguments(args, kwargs).items())
        if skip_first:
            items = items[1:]
        if identity is not None:
            return f"{prefix}:{_stable_digest([identity, items])}"
        return f"{prefix}:{_stable_digest(items)}"

    return from_hash
