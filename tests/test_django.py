"""hitrate.contrib.django with Django's test client on real Redis: the CACHES backend under
cache_page, the cache middleware, template fragments and cache sessions; the async
methods; the guarantees it adds (atomic incr, single-flight get_or_fetch, signed values,
prefix-confined clear, fail-open); the dashboard views and the management command.
Django's own BaseCacheTests run in ``make test-frameworks`` (tests/frameworks/)."""

from __future__ import annotations

import asyncio
import inspect
import io
import json
import pickle
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

django = pytest.importorskip("django")

from django.conf import settings  # noqa: E402

if not settings.configured:
    settings.configure(
        SECRET_KEY="hitrate-tests-secret-key-0123456789",
        ALLOWED_HOSTS=["testserver"],
        INSTALLED_APPS=[
            "django.contrib.contenttypes",
            "django.contrib.auth",
            "django.contrib.sessions",
            "hitrate.contrib.django",
        ],
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
        ROOT_URLCONF=__name__,
        MIDDLEWARE=["django.contrib.sessions.middleware.SessionMiddleware"],
        SESSION_ENGINE="django.contrib.sessions.backends.cache",
        TEMPLATES=[{"BACKEND": "django.template.backends.django.DjangoTemplates"}],
        CACHES={"default": {"BACKEND": "django.core.cache.backends.dummy.DummyCache"}},
        USE_TZ=True,
    )
    django.setup()

import redis  # noqa: E402
from django.core.cache import caches  # noqa: E402
from django.core.cache.backends.base import BaseCache  # noqa: E402
from django.core.cache.utils import make_template_fragment_key  # noqa: E402
from django.core.exceptions import ImproperlyConfigured  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.http import HttpRequest, HttpResponse, JsonResponse  # noqa: E402
from django.template import Context, Template  # noqa: E402
from django.test import Client, override_settings  # noqa: E402
from django.urls import include, path  # noqa: E402
from django.views.decorators.cache import cache_page  # noqa: E402

from hitrate import CacheUnavailableError, Policy  # noqa: E402
from hitrate.contrib.django import HitrateCache, versioned_key  # noqa: E402
from hitrate.contrib.django import backend as backend_module  # noqa: E402

CALLS = {"page": 0, "site": 0}


@cache_page(60)
def cached_page(request: HttpRequest) -> HttpResponse:
    CALLS["page"] += 1
    return HttpResponse(f"page {CALLS['page']}")


def site_page(request: HttpRequest) -> HttpResponse:
    CALLS["site"] += 1
    return HttpResponse(f"site {CALLS['site']}")


def counter(request: HttpRequest) -> HttpResponse:
    request.session["n"] = request.session.get("n", 0) + 1
    return JsonResponse({"n": request.session["n"]})


urlpatterns = [
    path("page/", cached_page),
    path("site/", site_page),
    path("counter/", counter),
    path("hitrate/", include("hitrate.contrib.django.urls")),
]


def config(url: str, prefix: str, **more: Any) -> dict[str, Any]:
    return {
        "default": {
            "BACKEND": "hitrate.contrib.django.HitrateCache",
            "LOCATION": url,
            "KEY_PREFIX": prefix,
            **more,
        }
    }


def close_shared() -> None:
    with backend_module._shared_lock:
        for cache in backend_module._shared.values():
            cache.close()
        backend_module._shared.clear()


@pytest.fixture
def dj(url: str, prefix: str) -> Iterator[HitrateCache]:
    """The default cache is a HitrateCache on a private server, under a fresh prefix."""
    with override_settings(CACHES=config(url, prefix)):
        backend = caches["default"]
        assert isinstance(backend, HitrateCache)
        yield backend
    close_shared()


def redis_keys(url: str, prefix: str) -> list[str]:
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        return sorted(client.scan_iter(f"{prefix}:{{*"))
    finally:
        client.close()


# -- the framework's caching features, through the test client ------------------------------
def test_cache_page_serves_the_second_request_from_redis(
    dj: HitrateCache, url: str, prefix: str
) -> None:
    client = Client()
    before = CALLS["page"]
    first = client.get("/page/").content
    assert client.get("/page/").content == first
    assert CALLS["page"] == before + 1
    keys = redis_keys(url, prefix)
    assert any(k.startswith(f"{prefix}:{{views:views.decorators.cache.cache_page") for k in keys)
    dj.clear()  # and clear() really empties it: the view runs again
    client.get("/page/")
    assert CALLS["page"] == before + 2


def test_site_wide_cache_middleware(url: str, prefix: str) -> None:
    middleware = [
        "django.middleware.cache.UpdateCacheMiddleware",
        "django.middleware.common.CommonMiddleware",
        "django.middleware.cache.FetchFromCacheMiddleware",
    ]
    with override_settings(
        CACHES=config(url, prefix), MIDDLEWARE=middleware, CACHE_MIDDLEWARE_SECONDS=30
    ):
        client = Client()
        before = CALLS["site"]
        assert client.get("/site/").content == client.get("/site/").content
        assert CALLS["site"] == before + 1
        assert client.get("/site/?other=1").status_code == 200
        assert CALLS["site"] == before + 2
    close_shared()


def test_template_fragment_caching(dj: HitrateCache) -> None:
    template = Template("{% load cache %}{% cache 60 sidebar %}{{ n }}{% endcache %}")
    assert template.render(Context({"n": 1})) == "1"
    assert template.render(Context({"n": 2})) == "1"  # served from the cache
    dj.delete(make_template_fragment_key("sidebar"))
    assert template.render(Context({"n": 3})) == "3"
    assert dj.make_key(make_template_fragment_key("sidebar")).startswith("template:")


def test_cache_sessions_keep_their_data_in_redis(dj: HitrateCache, url: str, prefix: str) -> None:
    client = Client()
    assert [client.get("/counter/").json()["n"] for _ in range(3)] == [1, 2, 3]
    sessions = [k for k in redis_keys(url, prefix) if "{sessions:" in k]
    assert len(sessions) == 1
    assert dj.stats().family("sessions").hits >= 2  # sessions are a family of their own


# -- Django's semantics, and what hitrate adds ------------------------------------------------
@pytest.mark.ttl_audit_exempt  # timeout=None: Django's 'forever', no TTL by design
def test_timeouts_and_family_policies(url: str, prefix: str) -> None:
    options = {"policies": {"user": Policy(1000)}}
    with override_settings(CACHES=config(url, prefix, TIMEOUT=120, OPTIONS=options)):
        cache = caches["default"]
        client = redis.Redis.from_url(url)
        try:
            cache.set("user:1", "a")  # default timeout: the family's policy
            cache.set("page:1", "b")  # no policy: TIMEOUT
            cache.set("user:2", "c", 5)  # an explicit timeout wins
            cache.set("forever", "d", None)
            cache.set("gone", "e", 0)
            ttl = {k: client.ttl(cache.hitrate.redis_key(cache.make_key(k))) for k in
                   ("user:1", "page:1", "user:2", "forever", "gone")}  # fmt: skip
        finally:
            client.close()
        assert 990 <= ttl["user:1"] <= 1000 and 110 <= ttl["page:1"] <= 120
        assert 1 <= ttl["user:2"] <= 5 and ttl["forever"] == -1 and ttl["gone"] == -2
        assert cache.get("gone", "default") == "default"
        cache.set("n", 1, 60)
        cache.incr("n", 5)  # incr keeps the expiry
        assert cache.get("n") == 6 and 0 < cache.get_backend_timeout(60) == 60
    close_shared()


def test_incr_is_atomic_where_get_then_set_loses_an_update(dj: HitrateCache) -> None:
    """A second increment lands between our read and our write. The naive get-then-set
    (Django's BaseCache.incr) loses it; the compare-and-set incr sees the key changed,
    reads again and counts both."""
    client = dj.hitrate.client
    dj.hitrate._driver._direct = None  # every command through execute_command, seen here
    real = client.execute_command
    state = {"armed": False}

    def interleave(*args: Any, **kwargs: Any) -> Any:
        reply = real(*args, **kwargs)
        if state["armed"] and args[0] == "GET":
            state["armed"] = False
            dj.set("hits", dj.get("hits") + 100)  # another process's write, mid-increment
        return reply

    client.execute_command = interleave  # type: ignore[method-assign]
    try:
        dj.set("hits", 0)
        state["armed"] = True
        BaseCache.incr(dj, "hits")  # the naive read-modify-write
        assert dj.get("hits") == 1  # the other write was lost
        dj.set("hits", 0)
        state["armed"] = True
        assert dj.incr("hits") == 101
        assert dj.get("hits") == 101
    finally:
        client.execute_command = real  # type: ignore[method-assign]


def test_get_or_fetch_loads_once_where_get_or_set_stampedes(dj: HitrateCache) -> None:
    loads = {"naive": 0, "leases": 0}
    lock = threading.Lock()

    def loader(kind: str) -> Any:
        def load() -> str:
            with lock:
                loads[kind] += 1
            time.sleep(0.2)
            return "report"

        return load

    def crowd(call: Any) -> list[Any]:
        barrier = threading.Barrier(12)
        out: list[Any] = []

        def one() -> None:
            barrier.wait()
            out.append(call())

        threads = [threading.Thread(target=one) for _ in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return out

    assert crowd(lambda: dj.get_or_set("naive", loader("naive"), 60)) == ["report"] * 12
    assert crowd(lambda: dj.get_or_fetch("leases", loader("leases"), 60)) == ["report"] * 12
    assert loads["naive"] > 1  # Django's get_or_set: every caller that missed loads
    assert loads["leases"] == 1


def test_clear_is_confined_to_the_prefix(dj: HitrateCache, url: str) -> None:
    client = redis.Redis.from_url(url)
    try:
        client.set("someone-else:key", b"x")
        dj.set_many({"a": 1, "b": 2})
        dj.clear()
        assert dj.get_many(["a", "b"]) == {}
        assert client.get("someone-else:key") == b"x"
    finally:
        client.delete("someone-else:key")
        client.close()


def test_values_are_signed_and_never_unpickled_when_tampered(
    dj: HitrateCache, url: str, prefix: str
) -> None:
    dj.set("k", {"a": 1})
    rkey = dj.hitrate.redis_key(dj.make_key("k"))
    client = redis.Redis.from_url(url)
    try:
        raw = client.get(rkey)
        assert raw is not None
        client.set(rkey, raw[:-1] + bytes([raw[-1] ^ 1]))
        assert dj.get("k", "miss") == "miss"
        dj.set("k", "signed with the old key")
        with override_settings(
            SECRET_KEY="a-brand-new-secret-key-0123456789",
            SECRET_KEY_FALLBACKS=["hitrate-tests-secret-key-0123456789"],
            CACHES=config(url, prefix),
        ):
            assert caches["default"].get("k") == "signed with the old key"  # rotation
        with override_settings(
            SECRET_KEY="another-secret-key-0123456789", CACHES=config(url, prefix)
        ):
            assert caches["default"].get("k", "miss") == "miss"
    finally:
        client.close()


def test_an_unpicklable_value_raises_pickles_error_naming_the_key(dj: HitrateCache) -> None:
    with pytest.raises(TypeError) as info:
        dj.set("lock", threading.Lock())
    assert any("'lock#v1'" in note for note in getattr(info.value, "__notes__", []))

    class Refuses:
        def __getstate__(self) -> Any:
            raise pickle.PickleError("no")

    with pytest.raises(pickle.PickleError):
        dj.add("x", Refuses())


def test_redis_down_fails_open_or_raises_with_strict(prefix: str) -> None:
    from hitrate.server import free_port

    down = f"redis://127.0.0.1:{free_port()}/0"
    with override_settings(CACHES=config(down, prefix)):
        cache = caches["default"]
        assert cache.get("k", "default") == "default"
        assert cache.set("k", 1) is None and cache.add("k", 1) is False
        assert cache.get_or_fetch("k", lambda: "loaded") == "loaded"
        with pytest.raises(CacheUnavailableError):
            cache.incr("k")
    with override_settings(CACHES=config(down, prefix, OPTIONS={"strict": True})):
        with pytest.raises(CacheUnavailableError):
            caches["default"].get("k")
    close_shared()


def test_async_methods_are_native_not_thread_wrappers(dj: HitrateCache) -> None:
    names = ["aadd", "aget", "aset", "atouch", "adelete", "aget_many", "aset_many",
             "adelete_many", "ahas_key", "aincr", "aclear", "aclose"]  # fmt: skip
    for name in names:
        assert getattr(HitrateCache, name) is not getattr(BaseCache, name), name
        assert inspect.iscoroutinefunction(getattr(HitrateCache, name)), name

    def no_sync(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("an async method called the sync one")

    async def scenario() -> None:
        assert await dj.aadd("a", 1) is True and await dj.aadd("a", 2) is False
        await dj.aset_many({"b": 2, "c": None})
        assert await dj.aget_many(["a", "b", "c", "d"]) == {"a": 1, "b": 2, "c": None}
        assert await dj.aincr("a", 10) == 11 and await dj.adecr("a") == 10
        assert await dj.atouch("a", 100) is True and await dj.ahas_key("c") is True
        assert await dj.aget_or_set("e", lambda: "made") == "made"
        assert await dj.aget_or_fetch("f", lambda: "fetched") == "fetched"
        assert await dj.adelete("a") is True and await dj.aget("a", "gone") == "gone"
        await dj.adelete_many(["b", "c"])
        assert await dj.ahas_key("b") is False
        await dj.aclear()
        assert await dj.aget("e") is None

    for name in ("get", "set", "add", "incr", "touch", "delete", "get_many", "set_many",
                 "delete_many", "has_key", "clear"):  # fmt: skip
        setattr(dj, name, no_sync)
    asyncio.run(scenario())


def test_versioned_keys_keep_families_and_never_collide() -> None:
    assert versioned_key("user:42", "", 1) == "user:42#v1"
    assert versioned_key("django.contrib.sessions.cacheabc", "", 1).startswith("sessions:")
    session = "django.contrib.sessions.cachex"
    keys = ["a", "a#v1", session, f"sessions:{session}", f"sessions:sessions:{session}",
            "template.cache.x", "template:template.cache.x"]  # fmt: skip
    made = {versioned_key(k, "", v) for k in keys for v in (1, 2, 12)}
    assert len(made) == len(keys) * 3


def test_bad_settings_are_refused_with_the_fix(url: str) -> None:
    with pytest.raises(ImproperlyConfigured, match="unknown key"):
        HitrateCache(url, {"OPTIONS": {"socket_timeout": 1}})
    with pytest.raises(ImproperlyConfigured, match="one LOCATION"):
        HitrateCache(f"{url};{url}", {})
    with pytest.raises(ImproperlyConfigured, match="KEY_PREFIX"):
        HitrateCache(url, {"KEY_PREFIX": "my app"})


# -- the dashboard and the management command -----------------------------------------------
def test_dashboard_views_and_stats_command(dj: HitrateCache) -> None:
    client = Client()
    assert client.get("/hitrate/").status_code == 403  # staff only by default
    dj.set("user:1", "a")
    dj.get("user:1")
    dj.get("user:2")
    with override_settings(HITRATE_DASHBOARD_ALLOW=lambda request: True):
        page = client.get("/hitrate/").content.decode()
        assert 'src="static/dashboard.js"' in page and dj.hitrate.prefix in page
        script = client.get("/hitrate/static/dashboard.js").content
        assert b'fetch("api/stats"' in script
        assert client.get("/hitrate/static/../views.py").status_code == 404
        body = client.get("/hitrate/api/stats").json()
        assert {row["family"] for row in body["families"]} >= {"user"}
    out = io.StringIO()
    call_command("hitrate_stats", stdout=out)
    assert "user" in out.getvalue() and "hit rate" in out.getvalue()
    out = io.StringIO()
    call_command("hitrate_stats", "--json", stdout=out)
    assert json.loads(out.getvalue())["prefix"] == dj.hitrate.prefix


@pytest.mark.ttl_audit_exempt  # the README's example: timeout=None is Django's 'forever'
def test_readme_django_examples_run(url: str, prefix: str) -> None:
    from tests.readme.frameworks import blocks, run

    settings_block, usage = blocks("Django")
    ns: dict[str, Any] = {}
    run(settings_block.replace('"redis://localhost:6379/0"', repr(url)), ns, "README settings")
    caches_setting = ns["CACHES"]
    caches_setting["default"]["KEY_PREFIX"] = prefix
    built: list[str] = []

    def build_report() -> dict[str, int]:
        built.append("report")
        return {"orders": 3}

    ns.update(row={"id": 42}, cfg={"theme": "dark"}, build_report=build_report)
    with override_settings(CACHES=caches_setting):
        run(usage, ns, "README usage")
        assert ns["report"] == {"orders": 3} and ns["user"] == {"id": 42}
        assert caches["default"].get("hits:home") == 1
    close_shared()
