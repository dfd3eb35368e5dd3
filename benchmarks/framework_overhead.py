"""Per-request cost of hitrate's framework backends versus each framework's built-in Redis
backend, on the same views, side by side in one process, in µs per request.

* Django: ``django.core.cache.backends.redis.RedisCache`` vs
  ``hitrate.contrib.django.HitrateCache`` (two ``CACHES`` aliases on one server), through
  Django's test ``Client``: a view that reads a 14-field profile with ``cache.get`` and
  returns it as JSON, and a ``cache_page`` view (a warm page served by the middleware).
* Flask: Flask-Caching's ``RedisCache`` vs ``hitrate.contrib.flask.HitrateCache`` (two
  apps), through Flask's test client: the same ``cache.get`` view and a ``@cache.cached``
  view.

Each case is a warm hit. After a warm-up, each of R rounds makes N requests per case in
turns of --chunk requests cycling through the cases (order reversed every other turn), so
noise hits all cases alike; µs/request is the median of the per-round means, ratio = hitrate
/ built-in (1.00 = same cost), +µs the difference. "no cache" is the same view without the
cache, the framework's own floor. hitrate's backends also count hits per family and sign
every value (HMAC-SHA256) - the built-in ones do neither. The process and a private server
share one pinned CPU (Linux; --no-pin to disable), as in hit_path.py.

    .venv/bin/python benchmarks/framework_overhead.py [--n N] [--rounds R] [--no-pin]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from collections.abc import Callable
from time import perf_counter
from typing import Any

from hitrate.server import EmbeddedServer, find_servers

PROFILE: dict[str, Any] = {
    "id": 42, "username": "ada.lovelace", "email": "ada.lovelace@example.com",
    "display_name": "Ada Lovelace", "created_at": "2021-03-14T09:26:53Z",
    "last_login": "2025-11-02T18:04:11Z", "is_active": True, "is_staff": False,
    "locale": "en-GB", "timezone": "Europe/London", "followers": 1843,
    "avatar_url": "https://cdn.example.com/avatars/42/7f3a9c.png",
    "roles": ["member", "editor"], "settings": {"theme": "dark", "newsletter": False},
}  # fmt: skip

Case = tuple[str, Callable[[], Any]]


def django_cases(url: str) -> list[Case]:
    import django
    from django.conf import settings

    settings.configure(
        SECRET_KEY="benchmark-secret-key-0123456789",
        ALLOWED_HOSTS=["testserver"],
        ROOT_URLCONF=__name__ + "_urls",
        MIDDLEWARE=[],
        INSTALLED_APPS=[],
        CACHES={
            "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
            "builtin": {
                "BACKEND": "django.core.cache.backends.redis.RedisCache",
                "LOCATION": url,
                "KEY_PREFIX": "bench-django-builtin",
            },
            "hitrate": {
                "BACKEND": "hitrate.contrib.django.HitrateCache",
                "LOCATION": url,
                "KEY_PREFIX": "bench-django-hitrate",
            },
        },
    )
    django.setup()
    import types

    from django.core.cache import caches
    from django.http import HttpRequest, JsonResponse
    from django.test import Client
    from django.urls import path
    from django.views.decorators.cache import cache_page

    def reader(alias: str | None) -> Callable[[HttpRequest], JsonResponse]:
        def view(request: HttpRequest) -> JsonResponse:
            if alias is None:
                return JsonResponse(PROFILE)
            return JsonResponse(caches[alias].get("user:42"))

        return view

    def page(request: HttpRequest) -> JsonResponse:
        return JsonResponse(PROFILE)

    urls = types.ModuleType(__name__ + "_urls")
    urls.urlpatterns = [  # type: ignore[attr-defined]
        path("none/get", reader(None)),
        path("builtin/get", reader("builtin")),
        path("hitrate/get", reader("hitrate")),
        path("builtin/page", cache_page(600, cache="builtin")(page)),
        path("hitrate/page", cache_page(600, cache="hitrate")(page)),
    ]
    sys.modules[urls.__name__] = urls
    for alias in ("builtin", "hitrate"):
        caches[alias].set("user:42", PROFILE, 600)
    client = Client()

    def request(url: str) -> Callable[[], Any]:
        return lambda: client.get(url)

    names = ("none get", "builtin get", "hitrate get", "builtin page", "hitrate page")
    return [(name, request("/" + name.replace(" ", "/"))) for name in names]


def flask_cases(url: str) -> list[Case]:
    import flask
    import flask_caching

    cases: list[Case] = []
    for name, kind in (("none", None), ("builtin", "RedisCache"),
                       ("hitrate", "hitrate.contrib.flask.HitrateCache")):  # fmt: skip
        app = flask.Flask(f"bench_{name}")
        app.config.update(
            SECRET_KEY="benchmark-secret-key-0123456789",
            CACHE_TYPE=kind or "NullCache",
            CACHE_NO_NULL_WARNING=True,
            CACHE_REDIS_URL=url,
            CACHE_KEY_PREFIX=f"bench-flask-{name}",
        )
        cache = flask_caching.Cache(app)

        def make(app: Any = app, cache: Any = cache, kind: Any = kind) -> None:
            @app.get("/get")
            def get() -> Any:
                return PROFILE if kind is None else cache.get("user:42")

            @app.get("/page")
            @cache.cached(timeout=600)
            def page() -> Any:
                return PROFILE

        make()
        with app.app_context():
            cache.set("user:42", PROFILE, timeout=600)
        client = app.test_client()
        cases.append((f"{name} get", lambda c=client: c.get("/get")))
        if kind is not None:
            cases.append((f"{name} page", lambda c=client: c.get("/page")))
    return cases


def measure(cases: list[Case], n: int, rounds: int, chunk: int) -> dict[str, float]:
    for _, call in cases:
        for _ in range(200):  # warm-up (and the cached pages get filled)
            assert call().status_code == 200
    means: dict[str, list[float]] = {name: [] for name, _ in cases}
    for r in range(rounds):
        spent = dict.fromkeys(means, 0.0)
        order = cases if r % 2 == 0 else cases[::-1]
        for _ in range(n // chunk):
            for name, call in order:
                start = perf_counter()
                for _ in range(chunk):
                    call()
                spent[name] += perf_counter() - start
        for name, total in spent.items():
            means[name].append(total / (n // chunk * chunk) * 1e6)
    return {name: statistics.median(values) for name, values in means.items()}


def report(title: str, result: dict[str, float]) -> None:
    print(f"\n{title}                         µs/request   ratio hitrate/built-in   +µs")
    floor = result.get("none get")
    if floor is not None:
        print(f"  view without a cache               {floor:8.1f}")
    for view in ("get", "page"):
        base, ours = result[f"builtin {view}"], result[f"hitrate {view}"]
        label = "cache.get in the view" if view == "get" else "cached page (hit)"
        print(f"  {label:<24} built-in  {base:8.1f}")
        print(f"  {'':<24} hitrate   {ours:8.1f}   {ours / base:10.3f}       {ours - base:+7.1f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="requests per case per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--chunk", type=int, default=50)
    parser.add_argument("--no-pin", action="store_true", help="don't pin to one CPU")
    args = parser.parse_args()
    cpu = None
    if not args.no_pin and hasattr(os, "sched_setaffinity"):
        cpu = max(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})  # before the start, so the server inherits it
    flavour = sorted(find_servers())[0]
    server = EmbeddedServer.start(flavour)
    try:
        from importlib.metadata import version

        import django
        import flask_caching

        pinned = f"pinned to CPU {cpu}" if cpu is not None else "not pinned"
        print(f"private {flavour} server, {pinned}; Django {django.get_version()}, "
              f"Flask-Caching {version('flask-caching')} ({flask_caching.__name__}); "
              f"{args.rounds} rounds x {args.n} requests per case")  # fmt: skip
        report("Django", measure(django_cases(server.url), args.n, args.rounds, args.chunk))
        report("Flask", measure(flask_cases(server.url), args.n, args.rounds, args.chunk))
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
