"""hitrate.contrib.fastapi with the real FastAPI, real test clients (httpx over ASGI,
FastAPI's TestClient) and real Redis: lifespan and dependency, @cache.cached routes, and
the HTTP response cache."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Depends, FastAPI, Response
from fastapi.responses import StreamingResponse
from fastapi.testclient import TestClient
from pydantic import BaseModel

from hitrate import AsyncCache, Policy
from hitrate.contrib.fastapi import (
    CacheDep,
    HttpRule,
    ResponseCache,
    cache_lifespan,
    get_cache,
    http_cache,
)

calls: Counter[str] = Counter()


def settings() -> dict[str, str]:
    return {"region": "eu"}


Settings = Annotated[dict[str, str], Depends(settings)]


class Product(BaseModel):
    id: int
    name: str
    price: float


def make_app(cache: AsyncCache | None = None, lifespan: Any = None) -> FastAPI:
    """The app under test; *cache* given: no lifespan, the middleware and the dependency
    use it (httpx's ASGITransport runs no lifespan)."""
    app = FastAPI(lifespan=lifespan)
    if cache is not None:
        app.state.hitrate_cache = cache
    app.add_middleware(ResponseCache, cache=cache)
    products = {1: Product(id=1, name="tea", price=3.5), 2: Product(id=2, name="cup", price=9)}

    @app.get("/products/{product_id}")
    @http_cache(ttl=60, tags=["products", "product:{product_id}"], vary=["accept-language"])
    async def product(product_id: int, q: str = "") -> Product:
        calls["product"] += 1
        await asyncio.sleep(0.05)  # a slow query: concurrent misses overlap
        return products[product_id]

    @app.post("/products/{product_id}")
    async def rename(product_id: int, name: str, cache: CacheDep) -> Product:
        products[product_id] = products[product_id].model_copy(update={"name": name})
        await cache.invalidate_tag(f"product:{product_id}")
        return products[product_id]

    @app.get("/headers")
    @http_cache(ttl=60)
    async def headers(kind: str, response: Response) -> dict[str, str]:
        calls[f"headers:{kind}"] += 1
        if kind == "cookie":
            response.set_cookie("session", "secret")
        elif kind == "private":
            response.headers["cache-control"] = "private"
        elif kind == "no-store":
            response.headers["cache-control"] = "no-store"
        elif kind == "short":
            response.headers["cache-control"] = "max-age=1"
        elif kind == "missing":
            response.status_code = 404
        elif kind == "vary":
            response.headers["vary"] = "cookie"
        return {"kind": kind}

    @app.get("/stream")
    @http_cache(ttl=60)
    async def stream() -> StreamingResponse:
        calls["stream"] += 1

        async def chunks() -> AsyncIterator[bytes]:
            for i in range(3):
                yield f"chunk {i}\n".encode()

        return StreamingResponse(chunks(), media_type="text/plain")

    @app.get("/stale")
    @http_cache(ttl=Policy(1, stale=30))
    async def stale() -> dict[str, int]:
        calls["stale"] += 1
        return {"n": calls["stale"]}

    @app.get("/uncached")
    async def uncached() -> dict[str, int]:
        calls["uncached"] += 1
        return {"n": calls["uncached"]}

    return app


@pytest.fixture(autouse=True)
def _reset() -> None:
    calls.clear()


@pytest.fixture
async def client(acache: AsyncCache) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=make_app(acache))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


async def test_miss_then_hit_with_age_and_etag(client: httpx.AsyncClient) -> None:
    first = await client.get("/products/1")
    assert first.status_code == 200 and first.headers["x-cache"] == "MISS"
    assert first.json() == {"id": 1, "name": "tea", "price": 3.5}
    etag = first.headers["etag"]
    assert etag.startswith('"') and len(etag) == 34  # strong, from the body
    second = await client.get("/products/1")
    assert second.headers["x-cache"] == "HIT" and int(second.headers["age"]) >= 0
    assert second.content == first.content and second.headers["etag"] == etag
    assert second.headers["content-type"] == "application/json"
    assert calls["product"] == 1
    not_modified = await client.get("/products/1", headers={"if-none-match": etag})
    assert not_modified.status_code == 304 and not_modified.content == b""
    assert not_modified.headers["etag"] == etag
    other = await client.get("/products/1", headers={"if-none-match": '"nope"'})
    assert other.status_code == 200


async def test_key_normalises_the_query_and_varies_on_named_headers(
    client: httpx.AsyncClient,
) -> None:
    await client.get("/products/1?q=a&x=1")
    assert (await client.get("/products/1?x=1&q=a")).headers["x-cache"] == "HIT"
    assert (await client.get("/products/1?q=b&x=1")).headers["x-cache"] == "MISS"
    fr = await client.get("/products/1?q=a&x=1", headers={"accept-language": "fr"})
    assert fr.headers["x-cache"] == "MISS"  # vary=["accept-language"]
    assert calls["product"] == 3


async def test_head_is_served_from_the_get_entry(client: httpx.AsyncClient) -> None:
    await client.get("/headers?kind=plain")
    head = await client.head("/headers?kind=plain")
    assert head.status_code == 200 and head.headers["x-cache"] == "HIT" and head.content == b""


async def test_request_cache_control(client: httpx.AsyncClient) -> None:
    await client.get("/products/2")
    bypass = await client.get("/products/2", headers={"cache-control": "no-store"})
    assert "x-cache" not in bypass.headers and calls["product"] == 2
    reload = await client.get("/products/2", headers={"cache-control": "no-cache"})
    assert reload.headers["x-cache"] == "MISS" and calls["product"] == 3
    assert (await client.get("/products/2")).headers["x-cache"] == "HIT"
    await asyncio.sleep(1.1)
    young = await client.get("/products/2", headers={"cache-control": "max-age=1"})
    assert young.headers["x-cache"] == "MISS" and calls["product"] == 4
    auth = await client.get("/products/2", headers={"authorization": "Bearer x"})
    assert "x-cache" not in auth.headers  # never shared between users


@pytest.mark.parametrize("kind", ["cookie", "private", "no-store", "missing", "vary"])
async def test_responses_that_are_never_stored(client: httpx.AsyncClient, kind: str) -> None:
    first = await client.get(f"/headers?kind={kind}")
    second = await client.get(f"/headers?kind={kind}")
    assert first.headers["x-cache"] == second.headers["x-cache"] == "MISS"
    assert calls[f"headers:{kind}"] == 2
    if kind == "cookie":
        assert "session=secret" in second.headers["set-cookie"]


async def test_response_max_age_shortens_the_ttl(client: httpx.AsyncClient) -> None:
    await client.get("/headers?kind=short")
    assert (await client.get("/headers?kind=short")).headers["x-cache"] == "HIT"
    await asyncio.sleep(1.1)
    assert (await client.get("/headers?kind=short")).headers["x-cache"] == "MISS"


async def test_streaming_passes_through_uncached(client: httpx.AsyncClient) -> None:
    for _ in range(2):
        r = await client.get("/stream")
        assert r.text == "chunk 0\nchunk 1\nchunk 2\n" and r.headers["x-cache"] == "MISS"
    assert calls["stream"] == 2


async def test_write_route_invalidates_by_tag(client: httpx.AsyncClient) -> None:
    await client.get("/products/1")
    await client.get("/products/2")
    await client.post("/products/1?name=green tea")
    assert (await client.get("/products/1")).json()["name"] == "green tea"
    assert (await client.get("/products/2")).headers["x-cache"] == "HIT"  # other tag


async def test_stale_while_refreshing(client: httpx.AsyncClient) -> None:
    assert (await client.get("/stale")).json() == {"n": 1}
    await asyncio.sleep(1.6)  # past the 1 s TTL (no jitter), inside the stale window
    old = await client.get("/stale")
    assert old.headers["x-cache"] == "STALE" and old.json() == {"n": 1}
    for _ in range(50):  # the refresh runs in the background
        await asyncio.sleep(0.02)
        if calls["stale"] == 2:
            break
    await asyncio.sleep(0.05)
    assert (await client.get("/stale")).json() == {"n": 2}


async def test_concurrent_misses_run_the_route_once(client: httpx.AsyncClient) -> None:
    """Single flight: 20 concurrent requests of one cold URL run the endpoint once. The
    same burst on the route without the cache runs it 20 times (the companion)."""
    replies = await asyncio.gather(*(client.get("/products/1?burst=1") for _ in range(20)))
    assert {r.status_code for r in replies} == {200}
    assert calls["product"] == 1
    assert sorted(r.headers["x-cache"] for r in replies).count("MISS") == 1
    await asyncio.gather(*(client.get("/uncached") for _ in range(20)))
    assert calls["uncached"] == 20


async def test_rules_by_path_for_plain_asgi_apps(acache: AsyncCache) -> None:
    served = Counter[str]()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        served[scope["path"]] += 1
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"hello"})

    cached = ResponseCache(app, cache=acache, rules={"/static/*": HttpRule(ttl=30)})
    transport = httpx.ASGITransport(app=cached)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        for _ in range(3):
            await c.get("/static/a.css")
            await c.get("/api/x")
    assert served == {"/static/a.css": 1, "/api/x": 3}


# -- lifespan, dependency, TestClient ----------------------------------------------------------


@pytest.fixture
def lifespan_app(url: str, prefix: str) -> FastAPI:
    seen: list[str] = []

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def own(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        seen.append("start")
        yield {"db": "connected"}
        seen.append("stop")

    app = make_app(lifespan=cache_lifespan(lambda: AsyncCache.from_url(url, prefix=prefix), own))

    @app.get("/state")
    async def state(cache: CacheDep, request: Any = None) -> dict[str, str]:
        return {"prefix": cache.prefix}

    app.state.seen = seen
    return app


def test_lifespan_dependency_and_overrides(lifespan_app: FastAPI, url: str, prefix: str) -> None:
    with TestClient(lifespan_app) as tc:
        assert tc.get("/state").json() == {"prefix": prefix}
        assert tc.get("/products/1").headers["x-cache"] == "MISS"
        assert tc.get("/products/1").headers["x-cache"] == "HIT"
    assert lifespan_app.state.seen == ["start", "stop"]  # the app's own lifespan ran too

    async def other() -> AsyncIterator[AsyncCache]:
        cache = AsyncCache.from_url(url, prefix=prefix + "-other")
        yield cache
        await cache.close()

    lifespan_app.dependency_overrides[get_cache] = other
    with TestClient(lifespan_app) as tc:
        assert tc.get("/state").json() == {"prefix": prefix + "-other"}


def test_without_a_cache_the_error_says_what_to_do() -> None:
    app = FastAPI()

    @app.get("/x")
    async def x(cache: CacheDep) -> str:
        return "never"

    with TestClient(app, raise_server_exceptions=True) as tc, pytest.raises(Exception) as err:
        tc.get("/x")
    assert "cache_lifespan" in str(err.value)


# -- @cache.cached on routes and helpers ----------------------------------------------------


def test_cached_routes_keep_fastapi_signature_inspection(url: str, prefix: str) -> None:
    app = FastAPI(lifespan=cache_lifespan(lambda: AsyncCache.from_url(url, prefix=prefix)))
    cache = AsyncCache.from_url(url, prefix=prefix, count=False)

    @cache.cached(key="price:{sku}")
    async def price(sku: str) -> float:  # a cached helper
        calls["price"] += 1
        return 9.5

    @app.get("/items/{item_id}")
    @cache.cached(key="item:{item_id}:{verbose}")  # the route itself
    async def item(item_id: int, settings: Settings, verbose: bool = False) -> Product:
        calls["item"] += 1
        return Product(id=item_id, name=f"item {settings['region']}", price=await price("x"))

    schema = app.openapi()
    op = schema["paths"]["/items/{item_id}"]["get"]
    assert [p["name"] for p in op["parameters"]] == ["item_id", "verbose"]
    assert op["parameters"][0]["schema"]["type"] == "integer"  # the annotation, not Any
    assert op["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Product"
    }
    with TestClient(app) as tc:
        assert tc.get("/items/3").json() == {"id": 3, "name": "item eu", "price": 9.5}
        assert tc.get("/items/3").json() == {"id": 3, "name": "item eu", "price": 9.5}
        assert tc.get("/items/x").status_code == 422  # validation still on the real params
    assert calls["item"] == 1 and calls["price"] == 1


# -- a real server -----------------------------------------------------------------------------


def test_under_uvicorn_on_a_real_socket(url: str, prefix: str) -> None:
    import threading
    import time

    import uvicorn

    app = make_app(lifespan=cache_lifespan(lambda: AsyncCache.from_url(url, prefix=prefix)))
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.started, "uvicorn did not start"
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as c:
            first = c.get("/products/2")
            assert first.headers["x-cache"] == "MISS"
            hit = c.get("/products/2")
            assert hit.headers["x-cache"] == "HIT" and hit.json() == first.json()
            etag = hit.headers["etag"]
            assert c.get("/products/2", headers={"if-none-match": etag}).status_code == 304
            assert c.get("/stream").text == "chunk 0\nchunk 1\nchunk 2\n"

        async def burst() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as ac:
                return await asyncio.gather(*(ac.get("/products/1?cold") for _ in range(10)))

        replies = asyncio.run(burst())
        assert [r.status_code for r in replies] == [200] * 10
        assert calls["product"] == 2  # /products/2 once, the cold burst once
    finally:
        server.should_exit = True
        thread.join(timeout=10)
