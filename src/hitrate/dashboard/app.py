"""The dashboard's ASGI app: the page, its static files, ``/api/stats`` and ``/metrics``.

Each ``/api/stats`` reads the cache's stats (counts flushed by every process, the server's
INFO) with an :class:`~hitrate.AsyncCache` that counts nothing itself. Answers are reused
for a moment (so many open pages cost Redis the same as one), and the SCAN sample behind
keys and memory per family is taken at most every ``sample_every`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import html
import time
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..cache import AsyncCache
from ..errors import HitrateError
from ..stats import Stats

__all__ = ["create_app"]

STATIC = resources.files("hitrate.dashboard") / "static"
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class _Source:
    """Stats for the page and the scrapes, reused for ``fresh_for`` seconds."""

    def __init__(
        self, cache: AsyncCache, minutes: int, sample: int, sample_every: float, fresh_for: float
    ) -> None:
        self.cache = cache
        self.minutes = minutes
        self.sample = sample
        self.sample_every = sample_every
        self.fresh_for = fresh_for
        self._last: Stats | None = None
        self._last_at = 0.0
        self._sampled: Stats | None = None
        self._sampled_at = 0.0
        self._lock = asyncio.Lock()

    async def get(self) -> Stats:
        async with self._lock:
            now = time.monotonic()
            if self._last is not None and now - self._last_at < self.fresh_for:
                return self._last
            sample_now = self.sample > 0 and (
                self._sampled is None or now - self._sampled_at >= self.sample_every
            )
            stats = await self.cache.stats(
                history=self.minutes, sample=self.sample if sample_now else 0
            )
            if sample_now:
                self._sampled, self._sampled_at = stats, now
            elif self._sampled is not None:
                stats = _with_sample(stats, self._sampled)
            self._last, self._last_at = stats, time.monotonic()
            return stats


def _with_sample(stats: Stats, sampled: Stats) -> Stats:
    """*stats* with the keys and memory per family of the last sample."""
    rows = []
    for row in stats.families:
        seen = sampled.family(row.family)
        rows.append(dataclasses.replace(row, keys=seen.keys, memory_bytes=seen.memory_bytes))
    return dataclasses.replace(stats, families=tuple(rows), sample=sampled.sample)


def create_app(
    url: str | None = None,
    *,
    prefix: str = "hitrate",
    refresh: float = 2.0,
    minutes: int = 60,
    sample: int = 10_000,
    sample_every: float = 15.0,
    cache: AsyncCache | None = None,
) -> Starlette:
    """The dashboard for the cache under *prefix* on *url* (or an existing *cache*).

    *refresh*: seconds between the page's updates; *minutes*: the span of the charts
    (per-minute buckets, up to 1440); *sample*: keys SCAN may examine for keys and memory
    per family, at most every *sample_every* seconds.
    """
    if not 1 <= minutes <= 1440:
        raise ValueError("minutes must be between 1 and 1440 (the buckets are kept 24 h)")
    own_cache = cache is None
    state: dict[str, Any] = {}

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        source_cache = cache or AsyncCache.from_url(
            url, prefix=prefix, count=False, strict=True, timeout=2.0, connect_timeout=2.0
        )
        state["source"] = _Source(
            source_cache, minutes, sample, sample_every, min(refresh, 1.0) / 2
        )
        try:
            yield
        finally:
            if own_cache:
                await source_cache.close()

    async def page(_: Request) -> Response:
        text = (STATIC / "index.html").read_text(encoding="utf-8")
        text = text.replace("{{prefix}}", html.escape(prefix)).replace(
            "{{refresh_ms}}", str(int(refresh * 1000))
        )
        return HTMLResponse(text, headers={**SECURITY_HEADERS, "Cache-Control": "no-store"})

    async def api_stats(_: Request) -> Response:
        try:
            stats = await state["source"].get()
        except HitrateError as exc:
            return JSONResponse({"error": str(exc)}, status_code=503, headers=_no_store())
        body = stats.as_dict()
        body["refresh"] = refresh
        return JSONResponse(body, headers=_no_store())

    async def metrics(_: Request) -> Response:
        try:
            from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

            from ..prometheus import StatsCollector
        except ImportError:
            return PlainTextResponse(
                "# /metrics needs prometheus-client: pip install 'hitrate[prometheus]'\n",
                status_code=501,
            )
        try:
            stats = await state["source"].get()
        except HitrateError as exc:
            return PlainTextResponse(f"# {exc}\n", status_code=503)
        registry = CollectorRegistry()
        registry.register(StatsCollector(lambda: stats))
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    routes = [
        Route("/", page),
        Route("/api/stats", api_stats),
        Route("/metrics", metrics),
        Mount("/static", StaticFiles(directory=str(STATIC)), name="static"),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


def _no_store() -> dict[str, str]:
    return {"Cache-Control": "no-store"}
