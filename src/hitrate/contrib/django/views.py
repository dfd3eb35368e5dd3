"""The hitrate dashboard inside a Django project: mount :mod:`hitrate.contrib.django.urls`
(``path("hitrate/", include("hitrate.contrib.django.urls"))``) to get the page, its
``api/stats`` JSON and static files, for the ``CACHES`` alias named by the
``HITRATE_DASHBOARD_CACHE`` setting (default ``"default"``).

Only staff users see it (``request.user.is_staff``); set ``HITRATE_DASHBOARD_ALLOW`` to a
function of the request (or its dotted path) to decide otherwise.
"""

from __future__ import annotations

import html
import mimetypes
import threading
import time
from collections.abc import Callable
from importlib import resources
from typing import Any

from django.conf import settings
from django.core.cache import caches
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.utils.module_loading import import_string

from ...errors import HitrateError
from ...stats import Stats
from .backend import HitrateCache

__all__ = ["api_stats", "page", "static"]

STATIC = resources.files("hitrate") / "dashboard" / "static"
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
REFRESH = 2.0  # seconds between the page's updates
FRESH_FOR = 1.0  # an answer is reused this long, so many open pages cost Redis one read
SAMPLE_EVERY = 15.0  # seconds between SCAN samples of keys and memory per family

_memo: dict[str, tuple[float, Stats]] = {}
_sampled_at: dict[str, float] = {}
_memo_lock = threading.Lock()


def _allowed(request: HttpRequest) -> bool:
    rule: Any = getattr(settings, "HITRATE_DASHBOARD_ALLOW", None)
    if rule is not None:
        check: Callable[[HttpRequest], bool] = (
            import_string(rule) if isinstance(rule, str) else rule
        )
        return bool(check(request))
    user = getattr(request, "user", None)
    return bool(user is not None and user.is_active and user.is_staff)


def _guard(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    def guarded(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not _allowed(request):
            return HttpResponse("hitrate dashboard: staff only", status=403, headers=HEADERS)
        return view(request, *args, **kwargs)

    guarded.__name__ = guarded.__qualname__ = view.__name__
    guarded.__doc__ = view.__doc__
    return guarded


def _backend() -> tuple[str, HitrateCache]:
    alias = getattr(settings, "HITRATE_DASHBOARD_CACHE", "default")
    backend = caches[alias]
    if not isinstance(backend, HitrateCache):
        raise Http404(
            f"CACHES[{alias!r}] is not hitrate.contrib.django.HitrateCache; set "
            "HITRATE_DASHBOARD_CACHE to the alias of one"
        )
    return alias, backend


def _stats(alias: str, backend: HitrateCache) -> Stats:
    now = time.monotonic()
    with _memo_lock:
        found = _memo.get(alias)
        if found is not None and now - found[0] < FRESH_FOR:
            return found[1]
        sample = 10_000 if now - _sampled_at.get(alias, -SAMPLE_EVERY) >= SAMPLE_EVERY else 0
        stats = backend.hitrate.stats(history=60, sample=sample)
        if sample:
            _sampled_at[alias] = now
        _memo[alias] = (now, stats)
        return stats


@_guard
def page(request: HttpRequest) -> HttpResponse:
    """The dashboard page (the one ``hitrate dashboard`` serves), with URLs relative to
    where it is mounted."""
    _, backend = _backend()
    text = (STATIC / "index.html").read_text(encoding="utf-8")
    text = text.replace('"/static/', '"static/').replace('"/api/stats"', '"api/stats"')
    text = text.replace('"/metrics"', '"api/stats"').replace(">/metrics<", "><")
    text = text.replace("{{prefix}}", html.escape(backend.hitrate.prefix))
    text = text.replace("{{refresh_ms}}", str(int(REFRESH * 1000)))
    return HttpResponse(text, headers=HEADERS)


@_guard
def api_stats(request: HttpRequest) -> HttpResponse:
    """The cache's stats as JSON (``Stats.as_dict()``), or 503 with the error."""
    alias, backend = _backend()
    try:
        stats = _stats(alias, backend)
    except HitrateError as exc:
        return JsonResponse({"error": str(exc)}, status=503, headers=HEADERS)
    body = stats.as_dict()
    body["refresh"] = REFRESH
    return JsonResponse(body, headers=HEADERS)


@_guard
def static(request: HttpRequest, name: str) -> HttpResponse:
    """The page's script, style sheet and chart library."""
    target = STATIC
    for part in name.split("/"):
        if part in ("", ".", "..") or part.startswith("."):
            raise Http404(name)
        target = target / part
    if not target.is_file():
        raise Http404(name)
    data = target.read_bytes()
    if name == "dashboard.js":  # it asks for /api/stats: ask where the page is mounted
        data = data.replace(b'fetch("/api/stats"', b'fetch("api/stats"')
    kind = mimetypes.guess_type(name)[0] or "application/octet-stream"
    return HttpResponse(data, content_type=kind, headers=HEADERS)
