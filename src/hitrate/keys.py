"""Key layout: how a user's key becomes Redis keys, and how patterns stay confined.

A user key ``user:42`` under prefix ``app`` is stored as ``app:{user:42}``; its sidecar
keys put a suffix after the closing brace::

    app:{user:42}          the entry (one GET serves a hit)
    app:{user:42}:lease    the fill lease, while one caller loads
    app:{user:42}:w        write-through bookkeeping, while a write is in flight
    app:{user:42}:err      a loader's failure, shown to callers waiting on its lease
    app:{user:42}:v        the row version of a cached write (write_through(version=...))
    app:{user:42}:wait     set while callers wait for the fill: it is then published on
                           the channel app:~wake (see hitrate.listener)
    app:~tag:{t}           the set of entries tagged ``t`` (for deleting them at once)
    app:~tag:{t}:v         the tag's version token: an entry records the versions of its
                           tags and is served only while they are current (see below)
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
with tag keys (``app:~tag:``) or the stats hashes (``app:~stats:``), and pattern
invalidation (``app:{<pattern>}*``) never reaches them.

**Prefixes cannot overlap.** Every key of prefix ``app`` starts with ``app:{`` or
``app:~``, and no part of a prefix may start with ``{`` or ``~``, so another cache's prefix
(``app:tags``, ``app:v2``) owns keys that start with ``app:<letter>``: the two never share
a key, and one's SCAN patterns never match the other's keys. Everything of one structure (or of
one object, or one limiter identity) sits inside one hash tag, so every atomic step is a
single-slot operation on Redis Cluster. Names, ids and identities get the same brace and
percent encoding as user keys; where two parts share a tag (``{family:id}``,
``{limiter:identity}``), ``:`` in the first part is also encoded (``%3A``), so
``("a:b", "c")`` and ``("a", "b:c")`` are different keys.
"""

from __future__ import annotations

import difflib
import re
import threading
import warnings
from collections.abc import Iterable, Sequence

from .errors import ConfigurationError, InvalidKeyError

__all__ = [
    "FamilyWatch",
    "KeySpace",
    "check_family_names",
    "escape_glob",
    "family_of",
    "key",
    "tags_of",
]

_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")
MAX_KEY_LENGTH = 16 * 1024


_PART_SPECIAL = str.maketrans({"%": "%25", ":": "%3A", "{": "%7B", "}": "%7D"})


def _text(value: object, what: str) -> str:
    """An id as text: ``str`` as is, anything else by ``str()``; bytes and None refused
    (``str(b"a")`` is ``"b'a'"`` and ``str(None)`` is ``"None"``: both hide a bug)."""
    if isinstance(value, str):
        return value
    if value is None or isinstance(value, bytes | bytearray | memoryview):
        raise InvalidKeyError(
            f"{what} must be text or a number, got {type(value).__name__} {value!r}; "
            "decode bytes first (value.decode())"
        )
    return str(value)


def escape_glob(text: object) -> str:
    r"""Escape ``* ? [ ] \`` so *text* matches only itself inside a SCAN pattern.

    Use it for every untrusted piece of a pattern::

        cache.invalidate_pattern(f"user:{escape_glob(user_id)}:*")

    An id of ``*`` then deletes only the keys of the user literally named ``*``. Ints and
    other non-text ids are converted with ``str()`` (``escape_glob(42) == "42"``); bytes and
    ``None`` raise :class:`~hitrate.InvalidKeyError` (decode bytes first). A ``:`` inside an
    id is not escaped: for ids that may contain one, build keys with :func:`hitrate.key` and
    delete with ``cache.invalidate_prefix(...)``, which are exact for every id.
    """
    return _GLOB_SPECIAL.sub(r"\\\1", _text(text, "escape_glob()'s argument"))


def encode_part(text: str) -> str:
    """One part of a key, with ``%``, ``:``, ``{`` and ``}`` percent-encoded, so that joining
    parts with ``:`` can be split back apart: ``"a:b"`` -> ``"a%3Ab"``."""
    if "%" in text or ":" in text or "{" in text or "}" in text:
        return text.translate(_PART_SPECIAL)
    return text


def key(*parts: object) -> str:
    """Build a cache key from parts, exact for every id::

        hitrate.key("tenant", tenant_id, "item", n)     # "tenant:42:item:7"

    Parts are joined with ``:``; a ``:``, ``{``, ``}`` or ``%`` inside a part is
    percent-encoded (``"a:b"`` -> ``"a%3Ab"``), so ``key("t", "a:b")`` and
    ``key("t", "a", "b")`` are different keys, and ``cache.invalidate_prefix("t", "a")``
    deletes the keys of id ``a`` and never those of ``a:b`` or ``a*``. Ints, UUIDs and
    other ids are converted with ``str()``; empty parts, ``None`` and bytes raise
    :class:`~hitrate.InvalidKeyError`. The first part is the key's family (its policy).
    """
    if not parts:
        raise InvalidKeyError("hitrate.key() needs at least one part, e.g. key('user', 42)")
    out = []
    for part in parts:
        text = _text(part, "key parts")
        if not text:
            raise InvalidKeyError(f"key parts must not be empty: key{parts!r}")
        out.append(encode_part(text))
    return ":".join(out)


def tags_of(tags: Iterable[str]) -> tuple[str, ...]:
    """``tags=`` as a tuple without repeats; one string is refused (it would be split into
    one-letter tags)."""
    if isinstance(tags, str | bytes):
        raise InvalidKeyError(
            f"tags= takes a list of tags, got the string {tags!r}: write tags=[{tags!r}]"
        )
    return tuple(dict.fromkeys(tags))


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


_NOT_A_FAMILY = re.compile(r"[:*?\[\]\\{}\s]")


def check_family_names(names: Iterable[object]) -> None:
    """Refuse ``policies=`` names no key can ever have: a family is the text before a
    key's first ``:``, so it is never empty and never holds a ``:``; glob characters and
    braces mean a pattern was meant, which policies are not."""
    for name in names:
        if not isinstance(name, str) or not name or _NOT_A_FAMILY.search(name):
            hint = ""
            if isinstance(name, str) and ":" in name:
                hint = f" (did you mean {name.split(':', 1)[0]!r}?)"
            raise ConfigurationError(
                f"policies={{{name!r}: ...}}: a policy is named after a key family, the text "
                f"before a key's first ':' ('user' for 'user:42'), without ':', glob "
                f"characters, braces or spaces{hint}"
            )


class FamilyWatch:
    """Warns once when a key's family looks like a misspelt ``policies=`` name.

    ``policies={"users": USER}`` with keys ``user:42`` would silently use the default
    policy for every key; the first time a family without a policy is seen whose name is
    close to a policy name no key has used yet (``user`` / ``users``, ``User`` / ``user``),
    a ``UserWarning`` names both. Runs only the first time a key is seen (the key memo
    of :class:`KeySpace`), so it costs nothing on the hot path.
    """

    __slots__ = ("_lock", "_names", "_seen", "_unused", "_warned")

    def __init__(self, names: Iterable[str]) -> None:
        self._names = frozenset(names)
        self._unused = set(self._names)
        self._seen: set[str] = set()
        self._warned: set[str] = set()
        self._lock = threading.Lock()

    def saw(self, family: str) -> None:
        if family in self._seen or len(self._seen) >= 1024:
            return
        with self._lock:
            self._seen.add(family)
            if family in self._names:
                self._unused.discard(family)
                return
            lowered = {n.lower().rstrip("s"): n for n in self._unused}
            close = lowered.get(family.lower().rstrip("s"))
            if close is None:
                found = difflib.get_close_matches(family, sorted(self._unused), 1, 0.8)
                close = found[0] if found else None
            if close is None or close in self._warned:
                return
            self._warned.add(close)
        warnings.warn(
            f"hitrate: key family {family!r} has no policy, but policies= names {close!r}, "
            f"which no key has used yet; a key's family is the text before its first ':'. "
            f"Rename the policy to {family!r} (or the keys) so it applies",
            UserWarning,
            stacklevel=5,
        )


class KeySpace:
    """Builds every Redis key hitrate writes, under one prefix."""

    __slots__ = ("_entry_cache", "_located", "prefix", "root", "watch")

    def __init__(self, prefix: str, watch: FamilyWatch | None = None) -> None:
        if not isinstance(prefix, str) or not prefix:
            raise ConfigurationError("prefix must be a non-empty string, e.g. prefix='app'")
        if any(c in prefix for c in "{}*?[]\\ \n\r\t"):
            raise ConfigurationError(
                f"prefix {prefix!r} may not contain braces, glob characters or whitespace"
            )
        if any(not part or part.startswith("~") for part in prefix.split(":")):
            raise ConfigurationError(
                f"prefix {prefix!r}: a prefix's ':'-separated parts must be non-empty and "
                "not start with '~' (hitrate's own keys live under 'prefix:~...'), so two "
                "prefixes can never share keys; e.g. prefix='app' or 'app:v2'"
            )
        self.prefix = prefix
        self.root = prefix + ":"
        self.watch = watch
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

    def locate_many(self, keys: Sequence[str]) -> list[tuple[str, str]]:
        """:meth:`locate` of each key; the memoised ones without a call each (``get_many``)."""
        get = self._located.get
        try:
            found = [get(k) for k in keys]
        except TypeError:  # an unhashable key: locate() says what is wrong
            found = [None] * len(keys)
        if None not in found:
            return found  # type: ignore[return-value]
        locate = self.locate
        return [f or locate(k) for f, k in zip(found, keys, strict=True)]

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
        if self.watch is not None:
            self.watch.saw(family_of(key))
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

    @staticmethod
    def waiting(entry: str) -> str:
        """``app:{user:42}:wait``: set while callers wait for the fill (poll.lua)."""
        return entry + ":wait"

    @staticmethod
    def wake_channel(entry: str) -> str:
        """``app:~wake``: where fills of awaited entries of *entry*'s prefix are published."""
        return entry[: entry.find(":{")] + ":~wake"

    def quad(self, key: str) -> list[str]:
        """Entry, lease, write-bookkeeping and version keys of *key* (one hash slot)."""
        rkey = self.entry(key)
        return [rkey, rkey + ":lease", rkey + ":w", rkey + ":v"]

    @staticmethod
    def quad_of(entry: str) -> list[str]:
        return [entry, entry + ":lease", entry + ":w", entry + ":v"]

    def tag(self, tag: str) -> str:
        """``app:~tag:{<tag>}``: the set of entries tagged *tag*."""
        if not isinstance(tag, str) or not tag:
            raise InvalidKeyError(f"tags are non-empty strings, got {tag!r}")
        if len(tag) > MAX_KEY_LENGTH // 4 and len(tag.encode(errors="replace")) > MAX_KEY_LENGTH:
            raise InvalidKeyError(
                f"tag {tag[:40]!r}... is over {MAX_KEY_LENGTH} bytes as UTF-8; keep tags shorter"
            )
        return f"{self.root}~tag:{{{_encode(tag)}}}"

    @staticmethod
    def tag_version(tag_key: str) -> str:
        """``app:~tag:{<tag>}:v``: the tag's current version token."""
        return tag_key + ":v"

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
