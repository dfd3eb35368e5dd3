"""Sentinel and Cluster URLs, connecting to a local Redis Cluster (sync, asyncio, ``aio``),
how cluster failures are classified, and a cluster failover under a cache."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
import redis
import redis.asyncio.cluster as acluster
import redis.cluster as rcluster
import redis.exceptions as rexc

from hitrate import AsyncCache, Cache, CacheUnavailableError, CommandRefusedError
from hitrate.breaker import Breaker
from hitrate.connect import mask_url, parse_url
from hitrate.errors import ConfigurationError, MisconfiguredError, translate
from hitrate.health import server_url
from hitrate.testing import unique_prefix
from hitrate.topologies import EmbeddedCluster

# -- URLs (no server) ----------------------------------------------------------------------


def test_cluster_url_gives_every_host_as_a_startup_node() -> None:
    target = parse_url("redis+cluster://bob:s%40cret@h1:7000,h2,[::1]:7002?ssl_cert_reqs=none")
    assert target.kind == "cluster"
    assert target.hosts == (("h1", 7000), ("h2", 6379), ("::1", 7002))
    assert (target.username, target.password) == ("bob", "s@cret")
    assert not target.tls
    assert target.options == {"ssl_cert_reqs": "none"}
    assert parse_url("rediss+cluster://h1:7000").tls


def test_sentinel_url_keeps_server_and_sentinel_passwords_apart() -> None:
    target = parse_url(
        "rediss+sentinel://app:pw@s1:26379,s2/mymaster/3?sentinel_password=spw&socket_keepalive=1"
    )
    assert target.kind == "sentinel" and target.tls
    assert target.hosts == (("s1", 26379), ("s2", 26379))
    assert (target.service, target.db) == ("mymaster", 3)
    assert (target.username, target.password) == ("app", "pw")
    assert (target.sentinel_username, target.sentinel_password) == (None, "spw")
    assert target.options == {"socket_keepalive": "1"}  # the sentinel password is not passed on


def test_one_server_urls_are_left_to_redis_py() -> None:
    for url in ("redis://h:1/0", "rediss://h:1/0", "unix:///tmp/r.sock?db=1"):
        assert parse_url(url).kind == "server"


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("redis+cluster://", "no host; write redis+cluster://"),
        ("redis+cluster://:pw@", "no host"),
        ("redis+cluster://h1:7000,,h2:7001", "an empty host"),
        ("redis+cluster://h1:port", "port 'port' of 'h1' is not a port number"),
        ("redis+cluster://h1:70000", "port '70000' of 'h1' is not a port number"),
        ("redis+cluster://h1:7000/2", "Redis Cluster has only database 0"),
        ("redis+sentinel://s1:26379", "no service name"),
        ("redis+sentinel://s1:26379/", "no service name"),
        ("redis+sentinel://s1:26379/svc/x", "database 'x' is not a number"),
        ("redis+sentinel://s1:26379/svc/1/2", "unexpected '2' at the end"),
        ("redis+cluster://h1?sentinel_password=x", "are for redis+sentinel:// URLs"),
        ("redis-cluster://h1:7000", "unknown scheme 'redis-cluster://'; use one of redis://"),
        ("localhost:6379", "no scheme; write redis://host:6379/0"),
    ],
)
def test_bad_urls_say_what_to_write(url: str, words: str) -> None:
    with pytest.raises(ConfigurationError, match="bad Redis URL") as info:
        parse_url(url)
    assert words in str(info.value)
    with pytest.raises(ConfigurationError):  # what from_url does with it
        Cache.from_url(url)


def test_bad_url_errors_mask_the_passwords() -> None:
    with pytest.raises(ConfigurationError) as info:
        Cache.from_url("redis+sentinel://u:topsecret@s1:26379?sentinel_password=alsosecret")
    text = str(info.value)
    assert "topsecret" not in text and "alsosecret" not in text
    assert "redis+sentinel://u:****@s1:26379?sentinel_password=****" in text
    assert mask_url("redis://:pw@h:1/0") == "redis://:****@h:1/0"


# -- how failures are classified (no server) ----------------------------------------------


@pytest.mark.parametrize(
    "exc",
    [
        rexc.RedisClusterException("Redis Cluster cannot be connected. Please provide ..."),
        rexc.SlotNotCoveredError("Slot 42 is not covered by the cluster."),
        rexc.ClusterError("TTL exhausted."),
        rexc.ClusterDownError("CLUSTERDOWN The cluster is down"),
        rexc.MasterDownError("MASTERDOWN Link with MASTER is down"),
        rexc.TryAgainError("TRYAGAIN Multiple keys request during rehashing of slot"),
        rexc.ReadOnlyError("READONLY You can't write against a read only replica."),
        redis.sentinel.MasterNotFoundError("No master found for 'hitrate'"),
        redis.asyncio.sentinel.MasterNotFoundError("No master found for 'hitrate'"),
    ],
)
def test_cluster_and_sentinel_failures_are_outages(exc: Exception) -> None:
    err = translate(exc, "GET 'app:{user:1}'", "redis+cluster://h1:7000")
    assert isinstance(err, CacheUnavailableError) and not isinstance(err, CommandRefusedError)
    assert err.outage and not err.refused
    assert "redis+cluster://h1:7000" in err.cause


def test_keys_of_two_slots_are_our_bug_not_an_outage() -> None:
    for exc in (
        rexc.RedisClusterException("EVALSHA - all keys must map to the same key slot"),
        rexc.ResponseError("CROSSSLOT Keys in request don't hash to the same slot"),
    ):
        err = translate(exc, "script lease on 'app:{user:1}'", "redis+cluster://h1:7000")
        assert isinstance(err, CommandRefusedError), exc
        assert not err.outage


def test_a_cluster_url_to_a_plain_server_is_a_misconfiguration() -> None:
    exc = rexc.RedisClusterException("Cluster mode is not enabled on this node")
    err = translate(exc, "GET 'k'", "redis+cluster://h1:7000")
    assert isinstance(err, MisconfiguredError)
    assert "not a Redis Cluster" in err.cause


# -- a local cluster ----------------------------------------------------------------------


def test_from_url_on_a_cluster_sync(cluster: EmbeddedCluster) -> None:
    prefix = unique_prefix()
    with Cache.from_url(cluster.url, prefix=prefix) as cache:
        assert isinstance(cache.client, rcluster.RedisCluster)
        for i in range(20):  # keys on every primary
            cache.set(f"user:{i}", {"id": i})
        assert [cache.get(f"user:{i}") for i in range(20)] == [{"id": i} for i in range(20)]
        assert cache.get("user:missing", "none") == "none"
        assert server_url(cache.client).startswith("redis+cluster://127.0.0.1:")
        assert cache.health().ok
        # every node is bounded, and waits for a free connection like one server's pool
        pool = cache.client.get_default_node().redis_connection.connection_pool
        assert isinstance(pool, redis.BlockingConnectionPool)
        assert pool.max_connections == 64
        assert cache.client.retry.get_retries() == 1


async def test_from_url_on_a_cluster_async(cluster: EmbeddedCluster) -> None:
    prefix = unique_prefix()
    cache = AsyncCache.from_url(cluster.url, prefix=prefix)
    try:
        assert isinstance(cache.client, acluster.RedisCluster)
        for i in range(20):
            await cache.set(f"user:{i}", i)
        assert [await cache.get(f"user:{i}") for i in range(20)] == list(range(20))
        assert (await cache.health()).ok
        assert cache._flusher is not None  # the stats timer's sync twin is a cluster client
    finally:
        await cache.close()


async def test_aio_twin_on_a_cluster(cluster: EmbeddedCluster) -> None:
    with Cache.from_url(cluster.url, prefix=unique_prefix()) as cache:
        cache.set("user:1", "sync")
        assert await cache.aio.get("user:1") == "sync"
        await cache.aio.set("user:2", "async")
        assert cache.get("user:2") == "async"
        assert isinstance(cache.aio.client, acluster.RedisCluster)


async def test_cluster_clients_of_ones_own_are_accepted(cluster: EmbeddedCluster) -> None:
    client = rcluster.RedisCluster(startup_nodes=[rcluster.ClusterNode(*cluster.startup_nodes[0])])
    cache = Cache(client, prefix=unique_prefix())
    try:
        cache.set("user:1", 1)
        assert cache.get("user:1") == 1
    finally:
        cache.close()
        client.close()
    aclient = acluster.RedisCluster(host="127.0.0.1", port=cluster.ports[0])
    acache = AsyncCache(aclient, prefix=unique_prefix())
    try:
        await acache.set("user:1", 1)
        assert await acache.get("user:1") == 1
    finally:
        await acache.close()
        await aclient.aclose()


def test_keys_of_two_slots_from_the_cluster_client_are_refused_not_outages(
    cluster: EmbeddedCluster,
) -> None:
    client = rcluster.RedisCluster(host="127.0.0.1", port=cluster.ports[0])
    try:
        with pytest.raises(rexc.RedisClusterException) as client_side:
            client.execute_command("MGET", "a", "b")  # refused before it is sent
        node = client.get_node_from_key("a").redis_connection
        with pytest.raises(rexc.ResponseError) as server_side:
            node.execute_command("MGET", "a", "b")  # the server's CROSSSLOT
    finally:
        client.close()
    for exc in (client_side.value, server_side.value):
        err = translate(exc, "MGET", cluster.url)
        assert isinstance(err, CommandRefusedError) and not err.outage, exc


def test_a_cluster_url_to_one_server_says_so(url: str) -> None:
    port = url.rsplit(":", 1)[1].split("/", maxsplit=1)[0]
    with pytest.raises(ConfigurationError, match="could not be reached or is not a cluster"):
        Cache.from_url(f"redis+cluster://127.0.0.1:{port}")


# -- a failover under a cache (a private cluster: its nodes are killed) -------------------


@pytest.fixture(scope="module")
def doomed_cluster() -> Iterator[EmbeddedCluster]:
    from .conftest import _topology_flavour

    topology = EmbeddedCluster.start(_topology_flavour())
    yield topology
    topology.stop()


def test_cluster_failover_fails_open_and_hits_come_back(
    doomed_cluster: EmbeddedCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster = doomed_cluster
    cache = Cache.from_url(cluster.url, prefix=unique_prefix(), breaker=Breaker(cooldown=0.2))
    try:
        key = "user:1"
        cache.set(key, "one")
        node = cache.client.get_node_from_key(cache.redis_key(key))
        # the replica has the entry before its primary dies
        cache.client.execute_command("WAIT", 1, 2000, target_nodes=node)
        leaked: list[BaseException] = []
        answers: list[object] = []
        cluster.kill(node.port)
        start = time.monotonic()
        back = None
        while time.monotonic() - start < 30:
            try:
                value = cache.get(key, "MISS")
            except Exception as exc:  # what fail-open must never let through
                leaked.append(exc)
                value = "ERROR"
            answers.append(value)
            if value == "one":
                back = time.monotonic() - start
                break
            time.sleep(0.02)
        assert leaked == []
        assert back is not None, answers[-5:]
        assert set(answers) <= {"MISS", "one"}  # never a wrong value
        assert "MISS" in answers  # it did fail (open) while the slot had no primary
        with capsys.disabled():
            print(f"\ncluster failover: hits back after {back:.2f} s ({len(answers)} gets)")
        cache.set("user:2", "two")  # writes go to the promoted replica
        assert cache.get("user:2") == "two"
    finally:
        cache.close()


# -- the command line ----------------------------------------------------------------------


def _serve(*flags: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "hitrate", "server", *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


@pytest.mark.parametrize("flag", ["--cluster", "--sentinel"])
def test_server_command_starts_a_topology_and_stops_it(flag: str) -> None:
    proc, url = _serve(flag)
    try:
        assert url.startswith(f"redis+{flag[2:]}://127.0.0.1:"), (
            proc.stderr.read() if not url else url
        )
        with Cache.from_url(url, prefix=unique_prefix()) as cache:
            cache.set("user:1", "there")
            assert cache.get("user:1") == "there"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    for _, port in parse_url(url).hosts:  # every process went with it
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()


def test_server_command_refuses_both_topologies() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "hitrate", "server", "--cluster", "--sentinel"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode != 0
    assert "--cluster and --sentinel exclude each other" in out.stderr


def test_a_one_server_url_to_a_cluster_node_says_to_use_redis_cluster(
    cluster: EmbeddedCluster, caplog: pytest.LogCaptureFixture
) -> None:
    """``redis://`` to one node of a cluster: keys of other nodes' slots answer MOVED. That
    is a configuration to fix, said once in words, not a WRONGTYPE-like refusal per key."""
    port = cluster.primaries()[0]
    cache = Cache.from_url(f"redis://127.0.0.1:{port}/0", prefix=unique_prefix(), count=False)
    with caplog.at_level("WARNING", logger="hitrate"):
        for i in range(30):  # some land on other nodes
            assert cache.get_or_fetch(f"user:{i}", lambda i=i: i) == i
    said = [r.getMessage() for r in caplog.records if "redis+cluster://" in r.getMessage()]
    assert len(said) == 1, [r.getMessage() for r in caplog.records]
    assert "is a Redis Cluster node" in said[0]
    with pytest.raises(CacheUnavailableError, match="redis\\+cluster://"):
        Cache.from_url(f"redis://127.0.0.1:{port}/0", strict=True).get_many(
            [f"user:{i}" for i in range(30)]
        )
    cache.close()


async def test_from_url_with_cluster_true(cluster: EmbeddedCluster) -> None:
    """``from_url("redis://node:port", cluster=True)`` is ``redis+cluster://node:port``."""
    port = cluster.primaries()[0]
    cache = Cache.from_url(f"redis://127.0.0.1:{port}/0", cluster=True, prefix=unique_prefix())
    assert isinstance(cache.client, rcluster.RedisCluster)
    cache.set_many({f"k:{i}": i for i in range(30)})  # keys of every node
    assert cache.get_many([f"k:{i}" for i in range(30)]) == {f"k:{i}": i for i in range(30)}
    cache.close()
    acache = AsyncCache.from_url(f"redis://127.0.0.1:{port}", cluster=True, prefix=unique_prefix())
    assert isinstance(acache.client, acluster.RedisCluster)
    await acache.set("k:1", 1)
    assert await acache.get("k:1") == 1
    await acache.close()
    with pytest.raises(ConfigurationError, match="cluster=True takes a redis://"):
        Cache.from_url("redis+sentinel://127.0.0.1:26379/hitrate", cluster=True)


def test_a_cluster_down_at_start_up_fails_open_then_serves(cluster: EmbeddedCluster) -> None:
    """No node answers when the sync cache is made (every node paused): the application
    still starts, calls fail open, and once the cluster answers the cache works."""
    pausing = [redis.Redis(port=p) for p in cluster.ports]
    for node in pausing:
        node.execute_command("CLIENT", "PAUSE", 3000, "ALL")
    started = time.monotonic()
    cache = Cache.from_url(
        cluster.url, prefix=unique_prefix(), breaker=Breaker(cooldown=0.2), count=False
    )
    assert "PendingCluster" in repr(cache.client)
    assert cache.get_or_fetch("user:1", lambda: "loaded") == "loaded"  # fails open
    time.sleep(max(0.0, 3.0 - (time.monotonic() - started)) + 0.3)
    for node in pausing:
        node.close()
    deadline = time.monotonic() + 10
    while cache.get_or_fetch("user:1", lambda: "loaded") != "loaded" or cache.get("user:1") is None:
        assert time.monotonic() < deadline, "the cache never reached the cluster"
        time.sleep(0.1)
    cache.set_many({f"k:{i}": i for i in range(30)})
    assert cache.get_many([f"k:{i}" for i in range(30)]) == {f"k:{i}": i for i in range(30)}
    cache.close()
