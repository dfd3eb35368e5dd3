"""Key layout: how a user's key becomes Redis keys, and how patterns stay confined.

A user key ``user:42`` under prefix ``app`` is stored as ``app:{user:42}``; its sidecar
keys put a suffix after the closing brace::

    app:{user:42}          the entry (one GET serves a hit)
    app:{user:42}:lease    the fill lease, while one caller loads
    app:{user:42}:w        write-through bookkeeping, while a write is in flight
    app:{user:42}:err      a loader's failure, shown to callers waiting on its lease
    app:{user:42}:v        the row version of a cached write (write_through(version=...))
    app:tag:{t}            the set of entries tagged ``t``, and ``app:tag:{t}:gen``
    app:~stats:{app}:...   hit/miss counts flushed by every process (:mod:`hitrate.flush`)

The braces are a Redis Cluster hash tag, so an entry and its sidecars share a slot and one
Lua script can touch them all. The characters ``{``, ``}`` and ``%`` in user keys are
percent-encoded, so the first ``}`` in a Redis key always closes the user key: a SCAN
pattern ``app:{<pattern>}*`` then matches exactly the entries whose key matches
``<pattern>`` and their sidecars, and nothing outside the prefix.

The data structures (:mod:`hitrate.structures`) live under roots that start with ``~``::

    app:~obj:{user:42}            an object hash (cache.objects("user")), and its
    app:~obj:{user:42}:lease      fill lease
    app:~lb:{weekly}              a leaderboard (sorted set)
    app:~seen:{emails}            a dedup set; time-windowed: app:~seen:{visitors}:w<start ms>
    app:~hll:{visitors}           a HyperLogLog (cache.unique)
    app:~rl:{api:alice}:gcra      rate-limit state of identity "alice" under limiter "api"

They cannot collide with cache entries, whose Redis keys always start with ``app:{``, nor
with tag keys (``app:tag:``) or the stats hashes (``app:~stats:``), and pattern
invalidation (``app:{<pattern>}*``) never reaches them. Everything of one structure (or of
one object, or one limiter identity) sits inside one hash tag, so every atomic step is a
single-slot operation on Redis Cluster. Names, ids and identities get the same brace and
percent encoding as user keys; where two parts share a tag (``{family:id}``,
``{limiter:identity}``), ``:`` in the first part is also encoded (``%3A``), so
``("a:b", "c")`` and ``("a", "b:c")`` are different keys.
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
import uuid
from collections.abc import Callable
from typing import Any

import orjson

from .errors import ConfigurationError, InvalidKeyError

__all__ = ["KeySpace", "escape_glob", "family_of", "key_builder"]

_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")
MAX_KEY_LENGTH = 16 * 1024


def escape_glob(text: str) -> str:
    r"""Escape ``* ? [ ] \`` so *text* matches only itself inside a SCAN pattern.

    Use it for every untrusted piece of a pattern::

        cache.invalidate_pattern(f"user:{escape_glob(user_id)}:*")

    An id of ``*`` then deletes only the keys of the user literally named ``*``.
    """
    return _GLOB_SPECIAL.sub(r"\\\1", text)


def _encode(text: str) -> str:
    if "%" in text or "{" in text or "}" in text:
        return text.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")
    return text


def _part(value: str | int, what: str) -> str:
    """A name, id or identity that becomes part of a Redis key: non-empty text or an int."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise InvalidKeyError(f"{what} must be a string or an int, got {type(value).__name__}")
    if not value:
        raise InvalidKeyError(f"{what} is empty; give a non-empty string such as 'user-42'")
    if len(value) > MAX_KEY_LENGTH:
        raise InvalidKeyError(
            f"{what} {value[:40]!r}... is {len(value)} characters; keep it under "
            f"{MAX_KEY_LENGTH} (hash long parts)"
        )
    return value


def _head(name: str) -> str:
    """The first part of a two-part hash tag: encoded, and ``:`` encoded too."""
    if not isinstance(name, str):
        raise InvalidKeyError(f"names are strings, got {type(name).__name__} {name!r}")
    return _encode(_part(name, "name")).replace(":", "%3A")


def decode_user_key(text: str) -> str:
    """Inverse of the brace encoding, for showing keys to people."""
    if "%" in text:
        return text.replace("%7B", "{").replace("%7D", "}").replace("%25", "%")
    return text


def family_of(key: str) -> str:
    """A key's family is its text before the first ``:`` (``user:42`` -> ``user``)."""
    head, sep, _ = key.partition(":")
    return head if sep else "default"


class KeySpace:
    """Builds every Redis key hitrate writes, under one prefix."""

    __slots__ = ("_entry_cache", "_located", "prefix", "root")

    def __init__(self, prefix: str) -> None:
        if not isinstance(prefix, str) or not prefix:
            raise ConfigurationError("prefix must be a non-empty string, e.g. prefix='app'")
        if any(c in prefix for c in "{}*?[]\\ \n\r\t"):
            raise ConfigurationError(
                f"prefix {prefix!r} may not contain braces, glob characters or whitespace"
            )
        self.prefix = prefix
        self.root = prefix + ":"
        self._entry_cache: dict[str, str] = {}
        self._located: dict[str, tuple[str, str]] = {}

    def locate(self, key: str) -> tuple[str, str]:
        """``(entry key, family)`` of *key*, memoised for hot keys (the hit path)."""
        try:
            found = self._located.get(key)
        except TypeError:  # unhashable: entry() says what is wrong
            found = None
        if found is None:
            found = (self.entry(key), family_of(key))
            if len(self._located) < 4096:
                self._located[key] = found
        return found

    def entry(self, key: str) -> str:
        """The Redis key of the entry for user key *key*."""
        try:
            cached = self._entry_cache.get(key)
        except TypeError:  # unhashable: reported just below
            cached = None
        if cached is not None:
            return cached
        if not isinstance(key, str):
            raise InvalidKeyError(
                f"cache keys are strings, got {type(key).__name__} {key!r}; "
                "build one with an f-string, e.g. f'user:{user_id}'"
            )
        if not key:
            raise InvalidKeyError("cache key is empty; use a name like 'user:42'")
        if len(key) > MAX_KEY_LENGTH:
            raise InvalidKeyError(
                f"cache key {key[:40]!r}... is {len(key)} characters; keep keys under "
                f"{MAX_KEY_LENGTH} (hash long parts)"
            )
        try:
            key.encode()
        except UnicodeEncodeError:
            raise InvalidKeyError(
                f"cache key {key!r} is not valid Unicode text (a lone surrogate?); "
                "decode bytes with errors='replace' or hash them"
            ) from None
        rkey = f"{self.root}{{{_encode(key)}}}"
        if len(self._entry_cache) < 4096:
            self._entry_cache[key] = rkey
        return rkey

    @staticmethod
    def lease(entry: str) -> str:
        return entry + ":lease"

    @staticmethod
    def writes(entry: str) -> str:
        return entry + ":w"

    @staticmethod
    def error(entry: str) -> str:
        return entry + ":err"

    @staticmethod
    def version(entry: str) -> str:
        return entry + ":v"

    def quad(self, key: str) -> list[str]:
        """Entry, lease, write-bookkeeping and version keys of *key* (one hash slot)."""
        rkey = self.entry(key)
        return [rkey, rkey + ":lease", rkey + ":w", rkey + ":v"]

    @staticmethod
    def quad_of(entry: str) -> list[str]:
        return [entry, entry + ":lease", entry + ":w", entry + ":v"]

    def tag(self, tag: str) -> str:
        if not isinstance(tag, str) or not tag:
            raise InvalidKeyError(f"tags are non-empty strings, got {tag!r}")
        return f"{self.root}tag:{{{_encode(tag)}}}"

    @staticmethod
    def tag_gen(tag_key: str) -> str:
        return tag_key + ":gen"

    def generations(self) -> str:
        """``app:~gen``: namespace generations and fill epochs (:mod:`hitrate.generations`)."""
        return f"{self.root}~gen"

    def objects(self, family: str) -> str:
        """SCAN pattern for every cached object hash of *family* (and their leases)."""
        return f"{self.root}~obj:{{{escape_glob(_head(family))}:*"

    def structure(self, root: str, name: str, what: str = "name") -> str:
        """``app:~<root>:{<name>}``: the key of a leaderboard, set or HyperLogLog."""
        return f"{self.root}~{root}:{{{_encode(_part(name, what))}}}"

    def obj(self, family: str, id: str | int) -> str:
        """``app:~obj:{<family>:<id>}``: the hash of one cached object."""
        return f"{self.root}~obj:{{{_head(family)}:{_encode(_part(id, 'object id'))}}}"

    def limiter(self, name: str, identity: str | int, algorithm: str) -> str:
        """``app:~rl:{<limiter>:<identity>}:<algorithm>``: one identity's rate-limit state."""
        return (
            f"{self.root}~rl:{{{_head(name)}:{_encode(_part(identity, 'identity'))}}}:{algorithm}"
        )

    def pattern(self, pattern: str) -> str:
        """SCAN pattern for the entries matching *pattern* and their sidecar keys."""
        if not isinstance(pattern, str) or not pattern:
            raise InvalidKeyError("pattern must be a non-empty string such as 'user:42:*'")
        return f"{self.root}{{{_encode(pattern)}}}*"

    def entry_of(self, rkey: str) -> str | None:
        """The entry key a scanned Redis key belongs to (itself or its sidecar's owner)."""
        if not rkey.startswith(self.root + "{"):
            return None
        close = rkey.find("}", len(self.root))
        return rkey[: close + 1] if close > 0 else None

    def user_key(self, entry: str) -> str:
        """``app:{user:42}`` -> ``user:42``."""
        return decode_user_key(entry[len(self.root) + 1 : -1])


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


def _positional_template(template: str, params: list[str]) -> str | None:
    """``"user:{user_id}"`` -> ``"user:{0}"`` (by parameter position), or None when the
    template uses anything but plain parameter names (attributes, indexes, unknown names)."""
    out = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError:
        return None
    for literal, field, spec, conversion in parsed:
        out.append(literal.replace("{", "{{").replace("}", "}}"))
        if field is None:
            continue
        if field not in params:
            return None
        out.append("{" + str(params.index(field)))
        if conversion:
            out.append("!" + conversion)
        if spec:
            if "{" in spec:
                return None
            out.append(":" + spec)
        out.append("}")
    return "".join(out)


def key_builder(func: Callable[..., Any], template: str | None) -> Callable[..., str]:
    """Make ``(args, kwargs) -> key`` for :meth:`Cache.cached`.

    With a *template* such as ``"user:{user_id}"`` the bound arguments fill it in (defaults
    applied). Without one, the key is ``module.qualname:<blake2b of the arguments>``: stable
    across processes and restarts, unlike Python's salted ``hash()``. A first parameter named
    ``self`` or ``cls`` is left out of the hash.
    """
    sig = inspect.signature(func)
    params = list(sig.parameters)
    skip_first = bool(params) and params[0] in ("self", "cls")
    name = f"{func.__module__}.{func.__qualname__}".replace("<locals>.", "")
    arguments = _arguments(sig)
    var_keyword = [
        p.name for p in sig.parameters.values() if p.kind is inspect.Parameter.VAR_KEYWORD
    ]

    if template is not None:
        if not isinstance(template, str) or not template:
            raise ConfigurationError("key= must be a format string such as 'user:{user_id}'")
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

        positional = _positional_template(template, params) if not var_keyword else None
        n = len(params)

        def from_template(*args: Any, **kwargs: Any) -> str:
            if positional is not None and not kwargs and len(args) == n:
                return positional.format(*args)  # the common call, without binding
            values = arguments(args, kwargs)
            for extra in var_keyword:
                values.update(values.pop(extra, {}))
            return template.format_map(values)

        return from_template

    def from_hash(*args: Any, **kwargs: Any) -> str:
        items = list(arguments(args, kwargs).items())
        if skip_first:
            items = items[1:]
        return f"{name}:{_stable_digest(items)}"

    return from_hash
