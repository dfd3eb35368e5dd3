"""Fixtures for the data-structure suites (helpers in :mod:`tests.structs`):

* ``c`` - a :class:`~tests.structs.Caches` on a sync ``Cache`` and on an ``AsyncCache``
* ``raw`` - a plain redis-py client on the same server
* ``dead_url`` - the URL of a stopped server (connections refused)
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import redis

import hitrate
from hitrate.server import EmbeddedServer, find_servers

from .structs import Caches, settle


@pytest.fixture(params=["sync", "async"])
async def c(request: pytest.FixtureRequest, url: str, prefix: str) -> AsyncIterator[Caches]:
    kind = hitrate.Cache if request.param == "sync" else hitrate.AsyncCache
    caches = Caches(kind, url, prefix)
    yield caches
    for inner in caches.made:
        await settle(inner.close())


@pytest.fixture
def raw(url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(url)
    yield client
    client.close()


@pytest.fixture(scope="module")
def dead_url() -> str:
    """A server that was started and stopped: connections are refused at once."""
    flavours = find_servers()
    server = EmbeddedServer.start(sorted(flavours)[0])
    server.stop()
    return server.url
