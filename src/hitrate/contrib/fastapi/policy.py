"""The HTTP response cache's decisions, without I/O: which rule a route has, the cache key
of a request, ``Cache-Control`` in both directions, what may be stored, ETags.

Pure functions over ASGI scopes and header lists, tested without a server.
"""

from __future__ import annotations

import base64
import hashlib
import string
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode

from ...errors import ConfigurationError
from ...keys import encode_part
from ...policy import Policy, TTLLike

__all__ = [
    "HttpRule",
    "cache_control",
    "http_cache",
    "not_modified",
    "request_key",
    "stored",
    "strong_etag",
]

F = TypeVar("F", bound=Callable[..., Any])
MARK = "__hitrate_http__"
Headers = Sequence[tuple[bytes, bytes]]


@dataclass(frozen=True)
class HttpRule:
    """How one route's responses are cached.

    ``ttl``: the longest a response is kept (seconds, ``timedelta`` or
    :class:`~hitrate.Policy`; default: the ``http`` family's policy); a response's own
    ``max-age``/``s-maxage`` may shorten it. ``tags``: tags of its entries, templates over
    the path parameters (``"product:{product_id}"``), for ``cache.invalidate_tag`` from write
    routes. ``vary``: request headers that make responses differ (``"accept-language"``);
    they are part of the key. ``statuses``: which statuses are stored (2xx). ``set_cookie``:
    store responses that set cookies (never, unless true). ``max_size``: larger bodies are
    not stored.
    """

    ttl: TTLLike = None
    tags: tuple[str, ...] = ()
    vary: tuple[str, ...] = ()
    statuses: frozenset[int] = field(default_factory=lambda: frozenset(range(200, 300)))
    set_cookie: bool = False
    max_size: int = 1024 * 1024

    def __post_init__(self) -> None:
        if isinstance(self.tags, str) or isinstance(self.vary, str):
            raise ConfigurationError("tags= and vary= take lists of names, not one str")
        object.__setattr__(self, "tags", tuple(self.tags))
        object.__setattr__(self, "vary", tuple(sorted({v.lower() for v in self.vary})))
        object.__setattr__(self, "statuses", frozenset(self.statuses))

    def tags_for(self, params: Mapping[str, Any]) -> list[str]:
        """The tags of an entry of this route, filled in with its path parameters."""
        out = []
        for tag in self.tags:
            try:
                out.append(_FORMAT.vformat(tag, (), params))
            except KeyError as exc:
                raise ConfigurationError(
                    f"http_cache tag {tag!r} names {exc}, which is not a path parameter of "
                    f"the route (it has: {', '.join(sorted(params)) or 'none'})"
                ) from None
        return sorted(out)


class _PartFormatter(string.Formatter):
    def format_field(self, value: Any, format_spec: str) -> str:
        return encode_part(format(value, format_spec))


_FORMAT = _PartFormatter()


def http_cache(
    ttl: TTLLike = None,
    *,
    tags: Iterable[str] = (),
    vary: Iterable[str] = (),
    statuses: Iterable[int] | None = None,
    set_cookie: bool = False,
    max_size: int = 1024 * 1024,
) -> Callable[[F], F]:
    """Mark a route for :class:`ResponseCache`; the function itself is returned unchanged
    (FastAPI sees its signature as written)::

        @app.get("/products/{product_id}")
        @http_cache(ttl=60, tags=["products", "product:{product_id}"])
        async def product(product_id: int) -> Product: ...
    """
    if callable(ttl) and not isinstance(ttl, Policy):
        raise ConfigurationError("use @http_cache() with parentheses")
    rule = HttpRule(
        ttl=ttl,
        tags=tuple(tags),
        vary=tuple(vary),
        statuses=frozenset(statuses) if statuses is not None else frozenset(range(200, 300)),
        set_cookie=set_cookie,
        max_size=max_size,
    )

    def mark(func: F) -> F:
        setattr(func, MARK, rule)
        return func

    return mark


def header(headers: Headers, name: bytes) -> str | None:
    """One header's value (repeated headers joined with ``, ``), or None."""
    found = [v.decode("latin-1") for k, v in headers if k.lower() == name]
    return ", ".join(found) if found else None


def cache_control(value: str | None) -> dict[str, int | None]:
    """``"public, max-age=60"`` -> ``{"public": None, "max-age": 60}`` (bad numbers: 0)."""
    out: dict[str, int | None] = {}
    for part in (value or "").split(","):
        name, _, arg = part.strip().partition("=")
        if not name:
            continue
        if arg:
            try:
                out[name.lower()] = max(0, int(arg.strip().strip('"')))
            except ValueError:
                out[name.lower()] = 0
        else:
            out[name.lower()] = None
    return out


def request_key(scope: Mapping[str, Any], rule: HttpRule) -> str:
    """The key of a GET or HEAD request: path, the query normalised (pairs sorted, blank
    values kept, encoded alike) and the values of the rule's ``vary`` headers."""
    headers: Headers = scope.get("headers", [])
    query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
    parts = [
        scope.get("root_path", "") + scope["path"],
        urlencode(sorted(query)),
        *(f"{name}={header(headers, name.encode()) or ''}" for name in rule.vary),
    ]
    digest = hashlib.blake2b("\n".join(parts).encode(), digest_size=16).hexdigest()
    return f"http:{digest}"


def strong_etag(body: bytes) -> str:
    """A strong ETag from the body: ``"<blake2b-128 hex>"``."""
    return '"' + hashlib.blake2b(body, digest_size=16).hexdigest() + '"'


def not_modified(if_none_match: str | None, etag: str | None) -> bool:
    """True if ``If-None-Match`` matches *etag* (weak comparison, as RFC 9110 says)."""
    if not if_none_match or not etag:
        return False
    if if_none_match.strip() == "*":
        return True
    mine = etag.removeprefix("W/")
    return any(t.strip().removeprefix("W/") == mine for t in if_none_match.split(","))


def stored(
    rule: HttpRule, status: int, headers: Headers, body: bytes, ttl: float | None
) -> tuple[dict[str, Any] | None, str]:
    """The entry to cache for a response, or ``(None, why not)``. The entry keeps the
    status, headers (with a strong ETag added when the app gave none), the body and when
    it expires, when the response's ``max-age`` is shorter than the rule's TTL."""
    if status not in rule.statuses:
        return None, f"status {status}"
    cc = cache_control(header(headers, b"cache-control"))
    for directive in ("no-store", "no-cache", "private"):
        if directive in cc:
            return None, f"Cache-Control: {directive}"
    if not rule.set_cookie and header(headers, b"set-cookie") is not None:
        return None, "Set-Cookie"
    vary = header(headers, b"vary")
    if vary is not None:
        named = {v.strip().lower() for v in vary.split(",") if v.strip()}
        if "*" in named or not named <= set(rule.vary):
            return None, f"Vary: {vary} (name them in vary=)"
    if len(body) > rule.max_size:
        return None, f"body over {rule.max_size} bytes"
    now = time.time()
    max_age = cc.get("s-maxage", cc.get("max-age"))
    if max_age == 0:
        return None, "max-age=0"
    out = [[k.decode("latin-1"), v.decode("latin-1")] for k, v in headers]
    if header(headers, b"etag") is None:
        out.append(["etag", strong_etag(body)])
    entry = {
        "s": status,
        "h": out,
        "b": base64.b64encode(body).decode(),
        "t": now,
        # the response's own max-age, when shorter than the rule's TTL, ends it sooner
        "exp": now + max_age if max_age is not None and (ttl is None or max_age < ttl) else None,
    }
    return entry, ""
