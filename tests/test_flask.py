"""hitrate.contrib.flask with Flask's test client on real Redis: the Flask-Caching backend
under ``@cache.cached`` and ``@cache.memoize``, and the ``Hitrate(app)`` extension.
Flask-Caching's own tests run in ``make test-frameworks`` (tests/frameworks/)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

flask = pytest.importorskip("flask")
flask_caching = pytest.importorskip("flask_caching")

from hitrate import USER, ConfigurationError, Policy  # noqa: E402
from hitrate.contrib.flask import Hitrate, HitrateCache  # noqa: E402

SECRET = "hitrate-tests-secret-key-0123456789"


def make_app(url: str, prefix: str, **config: Any) -> Any:
    app = flask.Flask(__name__)
    app.config.update(
        {
            "SECRET_KEY": SECRET,
            "CACHE_TYPE": "hitrate.contrib.flask.HitrateCache",
            "CACHE_REDIS_URL": url,
            "CACHE_KEY_PREFIX": prefix,
            **config,
        }
    )
    return app


def backend_of(app: Any, cache: Any) -> HitrateCache:
    found = app.extensions["cache"][cache]
    assert isinstance(found, HitrateCache)
    return found


def test_cached_view_and_memoize_are_served_from_redis(url: str, prefix: str) -> None:
    app = make_app(url, prefix)
    cache = flask_caching.Cache(app)
    calls = {"view": 0, "memo": 0}

    @app.get("/report")
    @cache.cached(timeout=60)
    def report() -> str:
        calls["view"] += 1
        return f"report {calls['view']}"

    @cache.memoize(60)
    def price(sku: str) -> float:
        calls["memo"] += 1
        return 9.5

    client = app.test_client()
    assert client.get("/report").data == client.get("/report").data == b"report 1"
    with app.app_context():
        assert price("a") == price("a") == 9.5 and calls["memo"] == 1
        cache.delete_memoized(price, "a")
        price("a")
        assert calls["memo"] == 2
        backend = backend_of(app, cache)
        assert backend.hitrate.prefix == prefix
        assert backend.stats().hits >= 2
        backend.hitrate.close()


def test_backend_semantics(url: str, prefix: str) -> None:
    app = make_app(
        url, prefix, CACHE_DEFAULT_TIMEOUT=120, CACHE_OPTIONS={"policies": {"user": 900}}
    )
    cache = flask_caching.Cache(app)
    with app.app_context():
        c = backend_of(app, cache)
        rkey = c.hitrate.redis_key
        client = c.hitrate.client
        assert c.set("user:1", {"a": (1, 2)}) and c.get("user:1") == {"a": (1, 2)}
        assert c.set("page", None) and c.has("page") and c.get("page") is None
        assert c.set("forever", 1, timeout=0) and client.ttl(rkey("forever")) == -1
        assert 890 <= client.ttl(rkey("user:1")) <= 900  # the family's policy
        assert 110 <= client.ttl(rkey("page")) <= 120  # CACHE_DEFAULT_TIMEOUT
        assert c.add("page", 2) is False and c.add("new", 2) is True
        assert c.inc("counter") == 1 and c.inc("counter", 5) == 6 and c.dec("counter") == 5
        assert c.get_many("user:1", "nope", "counter") == [{"a": (1, 2)}, None, 5]
        assert sorted(c.delete_many("new", "nope")) == ["new", "nope"]
        assert c.set("gone", 1, timeout=-1) and c.get("gone") is None
        c.clear()
        assert c.get("user:1") is None and c.has("forever") is False
        c.hitrate.close()


def test_inc_is_atomic_across_threads(url: str, prefix: str) -> None:
    """Eight threads incrementing one key: cachelib's generic inc (get then set) would
    lose updates; compare-and-set counts every one."""
    app = make_app(url, prefix)
    cache = flask_caching.Cache(app)
    with app.app_context():
        c = backend_of(app, cache)
        c.set("n", 0)

        def work() -> None:
            for _ in range(50):
                c.inc("n")

        threads = [threading.Thread(target=work) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert c.get("n") == 400
        c.hitrate.close()


def test_a_secret_is_required_to_pickle(url: str, prefix: str) -> None:
    app = make_app(url, prefix, SECRET_KEY=None)
    with pytest.raises(ConfigurationError, match="SECRET_KEY"):
        flask_caching.Cache(app)
    app = make_app(url, prefix, CACHE_OPTIONS={"socket_timeout": 1})
    with pytest.raises(ConfigurationError, match="unknown CACHE_OPTIONS"):
        flask_caching.Cache(app)


def test_hitrate_extension_from_app_config(url: str, prefix: str) -> None:
    app = flask.Flask(__name__)
    app.config.update(
        HITRATE_URL=url,
        HITRATE_PREFIX=prefix,
        HITRATE_POLICIES={"user": USER, "report": Policy(30)},
    )
    hitrate = Hitrate()
    hitrate.init_app(app)
    loads = {"n": 0}

    def load(user_id: int) -> dict[str, Any]:
        loads["n"] += 1
        return {"id": user_id}

    @app.get("/users/<int:user_id>")
    def user(user_id: int) -> dict[str, Any]:
        found: dict[str, Any] = hitrate.cache.get_or_fetch(f"user:{user_id}", lambda: load(user_id))
        return found

    @app.get("/async/<int:user_id>")
    async def user_async(user_id: int) -> dict[str, Any]:
        found: dict[str, Any] = await hitrate.acache.get_or_fetch(
            f"user:{user_id}", lambda: load(user_id)
        )
        return found

    client = app.test_client()
    assert client.get("/users/7").json == client.get("/users/7").json == {"id": 7}
    assert client.get("/async/7").json == {"id": 7} and loads["n"] == 1
    with app.app_context():
        cache = hitrate.cache
        assert cache.prefix == prefix and cache.policy_for("report:1").ttl == 30
        assert hitrate.get("user:7") == {"id": 7}  # the verbs, on the extension too
        hitrate.close()
        assert hitrate.cache is not cache  # a new one after close


def test_async_view_teardown_closes_its_connections(url: str, prefix: str) -> None:
    app = flask.Flask(__name__)
    app.config.update(HITRATE_URL=url, HITRATE_PREFIX=prefix)
    hitrate = Hitrate(app)
    pools: list[Any] = []

    @app.get("/")
    async def index() -> str:
        await hitrate.acache.set("k", "v")
        pools.append(hitrate.acache.client.connection_pool)
        return str(await hitrate.acache.get("k"))

    client = app.test_client()
    for _ in range(3):  # Flask runs each async view in a new event loop
        assert client.get("/").data == b"v"
        pool = pools[-1]
        connections = [*pool._available_connections, *pool._in_use_connections]
        assert connections and not any(c.is_connected for c in connections)
    with app.app_context():
        hitrate.close()
    asyncio.run(asyncio.sleep(0))


def test_readme_flask_examples_run(url: str, prefix: str) -> None:
    from hitrate import REFERENCE
    from tests.readme.frameworks import blocks, run
    from tests.readme.prelude import db

    backend_block, extension_block = blocks("Flask")
    app = flask.Flask(__name__)
    ns: dict[str, Any] = {"app": app, "secret": SECRET, "flask_caching": flask_caching,
                          "USER": USER, "REFERENCE": REFERENCE, "Any": Any, "db": db}  # fmt: skip

    def local(block: str) -> str:
        return block.replace('"redis://localhost:6379/0"', repr(url)).replace(
            '"shop"', repr(prefix)
        )

    run(local(backend_block), ns, "README Flask-Caching")
    assert backend_of(app, ns["cache"]).hitrate.prefix == prefix
    run(local(extension_block), ns, "README Hitrate(app)")
    client = app.test_client()
    assert client.get("/users/7").json["id"] == 7 and client.get("/a/users/7").json["id"] == 7
    with app.app_context():
        ns["hitrate"].close()
        backend_of(app, ns["cache"]).hitrate.close()
