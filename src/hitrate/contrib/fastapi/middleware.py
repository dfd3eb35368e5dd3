"""``ResponseCache``: a pure ASGI middleware that caches GET responses in Redis (FastAPI,
Starlette, or any ASGI app).

A request is served from the cache when its route has a rule (``@http_cache`` on the
endpoint, or ``rules=`` by path pattern). A miss runs the app with a fill lease
(:meth:`AsyncCache.get_or_fetch <hitrate.AsyncCache.get_or_fetch>`): concurrent misses of
one URL run the app once, in this process and across processes, and a fill that raced
``invalidate_tag`` is refused. Responses sent in more than one body message (streaming,
files) are passed through as they come and never stored.
"""

from __future__ import annotations

import asyncio
import base64
import fnmatch
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

from ...cache import AsyncCache
from ...errors import ConfigurationError
from ...policy import Policy
from .policy import MARK, HttpRule, cache_control, header, not_modified, request_key, stored

__all__ = ["STATE_KEY", "ResponseCache"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

STATE_KEY = "hitrate_cache"
_KEPT_ON_304 = {"etag", "cache-control", "vary", "expires", "content-location", "date"}


class _Response:
    """What the app sent: captured, or already streamed to the client."""

    def __init__(self) -> None:
        self.start: Message | None = None
        self.chunks: list[bytes] = []
        self.streamed = False


def _empty_body() -> Receive:
    """The request body of a GET: empty; then nothing until the app is done (a streaming
    response waits on receive() for a disconnect while it sends)."""
    given = False

    async def receive() -> Message:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.Event().wait()  # cancelled by the app when its response is sent
        return {"type": "http.disconnect"}  # pragma: no cover

    return receive


class ResponseCache:
    """Cache GET (and serve HEAD) responses of the routes that have a rule.

    ``ResponseCache(app, cache=None, rules=None)``: *cache* is an
    :class:`~hitrate.AsyncCache`, or None to use the one :func:`cache_lifespan` puts in
    the lifespan state. *rules* maps path globs to :class:`HttpRule` (``{"/products*":
    HttpRule(ttl=60, tags=("products",))}``), for apps without ``@http_cache``.

    Headers added: ``X-Cache: HIT | MISS | STALE``, ``Age`` on cached responses, a strong
    ``ETag`` when the app gave none; ``If-None-Match`` gets ``304 Not Modified``. Request
    ``Cache-Control: no-store`` bypasses the cache, ``no-cache`` (or ``max-age=0``) makes it
    reload, ``max-age=N`` reloads an older entry. Requests with ``Authorization`` bypass
    it unless the rule varies on that header. Not stored: other statuses than the rule's
    (2xx), ``Set-Cookie`` (unless ``set_cookie=True``), ``Cache-Control: no-store,
    no-cache, private`` or ``max-age=0``, a ``Vary`` naming headers the rule does not vary
    on, bodies over ``max_size``, streamed responses.
    """

    def __init__(
        self,
        app: ASGIApp,
        cache: AsyncCache | None = None,
        rules: Mapping[str, HttpRule] | None = None,
    ) -> None:
        if cache is not None and not isinstance(cache, AsyncCache):
            raise ConfigurationError(
                f"ResponseCache needs an AsyncCache, not {type(cache).__name__}: "
                "AsyncCache.from_url(...) or Cache.aio"
            )
        self.app = app
        self.cache = cache
        self.rules = dict(rules or {})
        self._seen: dict[tuple[int, str], tuple[HttpRule, Mapping[str, Any]] | None] = {}

    # -- which rule ------------------------------------------------------------------------
    def _rule(self, scope: Scope) -> tuple[HttpRule, Mapping[str, Any]] | None:
        """The rule of this path (remembered for the last 4,096 paths: routing is fixed)."""
        seen = (id(scope.get("app")), scope.get("root_path", "") + scope["path"])
        try:
            return self._seen[seen]
        except KeyError:
            pass
        found = self._find_rule(scope)
        if len(self._seen) >= 4096:
            self._seen.clear()
        self._seen[seen] = found
        return found

    def _find_rule(self, scope: Scope) -> tuple[HttpRule, Mapping[str, Any]] | None:
        for pattern, rule in self.rules.items():
            if fnmatch.fnmatchcase(scope["path"], pattern):
                return rule, {}
        router = getattr(scope.get("app"), "router", None)
        as_get = {**scope, "method": "GET"}  # a HEAD is answered by the GET route's entry
        for route in getattr(router, "routes", ()):
            matches = getattr(route, "matches", None)
            if matches is None:
                continue
            match, child = matches(as_get)
            if getattr(match, "name", "") != "FULL":
                continue
            marked = getattr(getattr(route, "endpoint", None), MARK, None)
            if isinstance(marked, HttpRule):
                return marked, child.get("path_params", {})
            return None
        return None

    def _cache(self, scope: Scope) -> AsyncCache:
        cache = self.cache or scope.get("state", {}).get(STATE_KEY)
        if not isinstance(cache, AsyncCache):
            raise ConfigurationError(
                "ResponseCache has no cache: pass ResponseCache(app, cache=AsyncCache...) or "
                "give the app lifespan=cache_lifespan(...)"
            )
        return cache

    # -- the request -----------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("GET", "HEAD"):
            return await self.app(scope, receive, send)
        found = self._rule(scope)
        if found is None:
            return await self.app(scope, receive, send)
        rule, params = found
        headers = scope.get("headers", [])
        req_cc = cache_control(header(headers, b"cache-control"))
        if "no-store" in req_cc or (
            header(headers, b"authorization") is not None and "authorization" not in rule.vary
        ):
            return await self.app(scope, receive, send)
        cache = self._cache(scope)
        key = request_key(scope, rule)
        if scope["method"] == "HEAD":  # served from a GET's entry; never filled by a HEAD
            entry = await cache.get(key)
            if entry is None or _expired(entry):
                return await self.app(scope, receive, send)
            return await self._send_entry(scope, send, entry, "HIT", head=True)
        policy = cache.policy_for(key, rule.ttl)
        max_age = req_cc.get("max-age")
        if "no-cache" in req_cc or max_age == 0:
            await cache.invalidate(key)
        tags = rule.tags_for(params)
        me = asyncio.current_task()
        ours: list[_Response | dict[str, Any]] = []

        async def fetch() -> dict[str, Any]:
            foreground = asyncio.current_task() is me
            response = await self._run(scope, send if foreground else None)
            if response.streamed or response.start is None:
                if foreground:
                    ours.append(response)
                return {"streamed": True}
            start, body = response.start, b"".join(response.chunks)
            entry, _ = stored(rule, start["status"], start.get("headers", []), body, policy.ttl)
            if entry is None:  # sent as it is, not stored
                entry = {
                    "s": start["status"],
                    "h": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in start["headers"]],
                    "b": base64.b64encode(body).decode(),
                    "t": time.time(),
                    "exp": 0,
                    "no": True,
                }
            if foreground:
                ours.append(entry)
            return entry

        for _ in range(2):
            entry = await cache.get_or_fetch(key, fetch, policy, tags, unless=_unstorable)
            if ours:
                break
            if (max_age is not None and time.time() - entry["t"] > max_age) or _expired(entry):
                await cache.invalidate(key)  # older than the client (or the response) allows
                continue
            break
        if ours and isinstance(ours[0], _Response):
            return None  # streamed to the client as it came
        if entry.get("streamed"):  # pragma: no cover - only our own fetch streams
            return await self.app(scope, _empty_body(), send)
        state = "MISS" if ours else ("STALE" if _stale(entry, policy) else "HIT")
        return await self._send_entry(scope, send, entry, state, head=False)

    async def _run(self, scope: Scope, send: Send | None) -> _Response:
        """Run the app for a GET with an empty body; capture a single-message response, or
        (in the request's own task) pass a streamed one through to *send* as it comes."""
        response = _Response()

        async def capture(message: Message) -> None:
            kind = message["type"]
            if kind == "http.response.start":
                response.start = message
                return
            if response.streamed:
                if send is not None:
                    await send(message)
                return
            if kind == "http.response.body" and not message.get("more_body", False):
                response.chunks.append(message.get("body", b""))
                return
            response.streamed = True  # more than one body message, or an extension
            if send is not None and response.start is not None:
                await send(_with_headers(response.start, [(b"x-cache", b"MISS")]))
                for chunk in response.chunks:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send(message)

        await self.app(dict(scope), _empty_body(), capture)
        return response

    async def _send_entry(
        self, scope: Scope, send: Send, entry: dict[str, Any], state: str, *, head: bool
    ) -> None:
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in entry["h"]]
        extra = [(b"x-cache", state.encode())]
        if state != "MISS" or not entry.get("no"):
            extra.append((b"age", str(max(0, int(time.time() - entry["t"]))).encode()))
        status = entry["s"]
        body = base64.b64decode(entry["b"])
        if not entry.get("no") and not_modified(
            header(scope.get("headers", []), b"if-none-match"), header(headers, b"etag")
        ):
            status, body = 304, b""
            headers = [(k, v) for k, v in headers if k.decode("latin-1").lower() in _KEPT_ON_304]
        start = {"type": "http.response.start", "status": status, "headers": headers}
        await send(_with_headers(start, extra))
        await send({"type": "http.response.body", "body": b"" if head else body})


def _with_headers(start: Message, extra: list[tuple[bytes, bytes]]) -> Message:
    names = {k for k, _ in extra}
    kept = [(k, v) for k, v in start.get("headers", []) if k.lower() not in names]
    return {**start, "headers": kept + extra}


def _unstorable(entry: dict[str, Any]) -> bool:
    return bool(entry.get("streamed") or entry.get("no"))


def _expired(entry: dict[str, Any]) -> bool:
    """Past the expiry the response itself gave (a ``max-age`` shorter than the TTL)."""
    exp = entry.get("exp")
    return exp is not None and exp != 0 and time.time() >= exp


def _stale(entry: dict[str, Any], policy: Policy) -> bool:
    """Served inside the policy's ``stale`` window, while one caller refreshes it."""
    ttl = policy.ttl
    return ttl is not None and time.time() >= entry["t"] + ttl + policy.jitter
