"""Namespace generations and fill epochs: O(1) invalidation of a whole family or prefix,
and the check that keeps pattern invalidation exact against fills in flight.

Both live in one Redis hash per prefix, ``app:~gen``, with random tokens as values:

* ``ns:<family>`` / ``ns:*`` - the **namespace generation**. Every entry's header carries
  a 32-bit stamp of the generations it was written under (:func:`stamp`); an entry whose
  stamp is not the current one is a miss. ``cache.bump("user")`` writes a new token, so
  every ``user`` entry becomes unreachable at once, without SCAN (Redis expires them).
* ``id`` - the hash's own identity, made by whoever finds it missing, and part of every
  stamp: if the hash is ever lost (evicted under ``allkeys-*`` memory pressure, deleted),
  a new id makes every entry stamped under the old one unreachable - entries a bump had
  retired never come back.
* ``ep:<family>`` / ``ep:*`` - the **fill epoch**. ``lease.lua`` returns it with the lease
  and ``fill.lua`` refuses the fill if it changed meanwhile. Pattern invalidation and bump
  change it before they start, so a value loaded before either began is never cached.

Reads compare stamps against this process's copy of the hash (no extra round trip on a
hit), refreshed at most every ``interval`` seconds and by every lease reply; the cache
that bumps sees its bump at once, another process within ``interval``. Fills are checked
in Lua against Redis itself.
"""

from __future__ import annotations

import os
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = ["ALL", "Generations", "stamp"]

ALL = "*"


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else str(value)


def stamp(ns_all: str, ns_family: str, ident: str = "") -> int:
    """The 32-bit stamp of the hash's id and a pair of namespace tokens (0 for none)."""
    if not ns_all and not ns_family and not ident:
        return 0
    return zlib.crc32(f"{ident}|{ns_all}|{ns_family}".encode()) or 1


def new_token() -> str:
    return os.urandom(6).hex()


class Generations:
    """This process's view of ``app:~gen``: tokens by field, and stamps by family."""

    __slots__ = (
        "_lock",
        "_stamps",
        "_tokens",
        "changes",
        "checked_at",
        "interval",
        "monotonic",
    )

    def __init__(
        self, interval: float = 1.0, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self.interval = interval
        self.monotonic = monotonic
        self.checked_at = float("-inf")
        self._tokens: dict[str, str] = {}
        self._stamps: dict[str, int] = {}
        self._lock = threading.Lock()
        #: How many times the hash was seen to change (the near cache's invalidation
        #: listener, see :meth:`changed`).
        self.changes = 0

    def changed(self) -> None:
        """The hash changed in Redis (the near cache's listener saw it): read it again
        before judging the next entry, and take no reply to a read sent before now."""
        self.changes += 1
        self.checked_at = float("-inf")

    def due(self) -> bool:
        """Time to read the hash again (the hit path then takes the plan's slow path)."""
        return self.monotonic() - self.checked_at >= self.interval

    def stamp(self, family: str) -> int:
        found = self._stamps.get(family)
        if found is None:
            tokens = self._tokens
            found = stamp(
                tokens.get("ns:*", ""), tokens.get("ns:" + family, ""), tokens.get("id", "")
            )
            if len(self._stamps) < 4096:
                self._stamps[family] = found
        return found

    def replace(self, reply: Mapping[Any, Any] | Iterable[Any], seen: int | None = None) -> None:
        """Take a fresh ``HGETALL`` of the hash (a dict, or a flat list from RESP2).
        *seen*: :attr:`changes` when the read was sent; if the hash changed since, the
        view stays due (the reply may predate the change)."""
        if isinstance(reply, Mapping):
            pairs = list(reply.items())
        else:
            flat = list(reply)
            pairs = list(zip(flat[::2], flat[1::2], strict=True))
        tokens = {
            _text(k): _text(v)
            for k, v in pairs
            if _text(k).startswith(("ns:", "ep:")) or _text(k) == "id"
        }
        with self._lock:
            self._tokens = tokens
            self._stamps = {}
            stale = seen is not None and seen != self.changes
            self.checked_at = float("-inf") if stale else self.monotonic()

    def saw(self, family: str, ns_all: Any, ns_family: Any, ident: Any) -> int:
        """Tokens read in Lua (a lease reply): authoritative for *family*. Returns its stamp."""
        a, f, i = _text(ns_all), _text(ns_family), _text(ident)
        tokens = self._tokens
        if (tokens.get("ns:*", ""), tokens.get("ns:" + family, ""), tokens.get("id", "")) != (
            a,
            f,
            i,
        ):
            with self._lock:
                tokens = dict(self._tokens)
                tokens["ns:*"], tokens["ns:" + family], tokens["id"] = a, f, i
                self._tokens = {k: v for k, v in tokens.items() if v}
                self._stamps = {}
        return stamp(a, f, i)

    def fields(self, family: str) -> tuple[str, str, str, str, str]:
        """What ``lease.lua`` reads of the hash for *family* - fill epochs ``ep:*`` and
        ``ep:<family>``, namespace tokens ``ns:*`` and ``ns:<family>``, and ``id`` - from
        this view: on Redis Cluster the hash is in another slot than the entry, so the
        lease script is given them (and fills are checked against Redis afterwards)."""
        t = self._tokens
        return (
            t.get("ep:*", ""),
            t.get("ep:" + family, ""),
            t.get("ns:*", ""),
            t.get("ns:" + family, ""),
            t.get("id", ""),
        )

    def bumped(self, family: str, token: str, epoch: str = "") -> None:
        """This process bumped *family* (``"*"``: the prefix): see it at once. *epoch*:
        the new fill epoch written with it (or alone, by pattern invalidation)."""
        with self._lock:
            tokens = dict(self._tokens)
            if token:
                tokens["ns:" + family] = token
            if epoch:
                tokens["ep:" + family] = epoch
            self._tokens = tokens
            self._stamps = {}


def family_of_pattern(pattern: str) -> str:
    """The one family every key matching the glob *pattern* belongs to, or ``"*"`` when the
    pattern can match keys of several families (its head has glob characters, or no ``:``)."""
    head, sep, _ = pattern.partition(":")
    if any(c in head for c in "*?[\\"):
        return ALL
    return head if sep else "default"
