"""hitrate with FastAPI: the cache in the lifespan, a dependency, @cache.cached helpers,
and the HTTP response cache.

    pip install 'hitrate[fastapi,server]' uvicorn
    python examples/fastapi_app.py             # HITRATE_REDIS_URL=... to use your server
    curl -i localhost:8000/products/1          # X-Cache: MISS, then HIT; ETag; Age

Without HITRATE_REDIS_URL, a private Redis/Valkey server is started for the run.
"""

from __future__ import annotations

import asyncio
import os

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

from hitrate import AsyncCache
from hitrate.contrib.fastapi import CacheDep, ResponseCache, cache_lifespan, http_cache


class Product(BaseModel):
    id: int
    name: str
    price: float


PRODUCTS = {1: Product(id=1, name="tea", price=3.5), 2: Product(id=2, name="cup", price=9.0)}


def redis_url() -> str:
    url = os.environ.get("HITRATE_REDIS_URL")
    if url or __name__ != "__main__":
        return url or "redis://localhost:6379/0"
    from hitrate.server import EmbeddedServer

    server = EmbeddedServer.start()  # stopped when the process exits
    print(f"private server at {server.url}")
    return server.url


cache = AsyncCache.from_url(redis_url(), prefix="shop")
app = FastAPI(lifespan=cache_lifespan(cache))  # closed (counts flushed) at shutdown
app.add_middleware(ResponseCache)  # serves the routes marked @http_cache


async def load_product(product_id: int) -> Product:
    await asyncio.sleep(0.02)  # a database query
    if product_id not in PRODUCTS:
        raise HTTPException(404, f"no product {product_id}")
    return PRODUCTS[product_id]


@app.get("/products/{product_id}")
@http_cache(ttl=60, tags=["products", "product:{product_id}"])
async def product(product_id: int) -> Product:
    return await load_product(product_id)


@cache.cached(key="price:{product_id}", ttl=30)  # a cached helper: typed, one load at a time
async def product_price(product_id: int) -> float:
    return (await load_product(product_id)).price


@app.get("/products/{product_id}/price")
async def price(product_id: int) -> dict[str, float]:
    return {"price": await product_price(product_id)}


@app.put("/products/{product_id}")
async def rename(product_id: int, name: str, cache: CacheDep) -> Product:
    PRODUCTS[product_id] = (await load_product(product_id)).model_copy(update={"name": name})
    await cache.invalidate_tag(f"product:{product_id}")  # its HTTP responses
    await cache.invalidate(f"price:{product_id}")
    return PRODUCTS[product_id]


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))
