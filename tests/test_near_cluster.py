"""The near cache and the fill-wake listener on Redis Cluster (a local cluster of private
servers): one tracking connection per primary, so another process's change of a key on any
node evicts the copy within the one-server bound; a tracking connection killed, or a primary
killed and replaced by its replica, bypasses the near cache - never stale - until every
current primary is tracked again (a near cache that stays live while one node's tracking is
down is caught serving stale values); a fill on any node wakes a waiter, and the wake
subscription moves to another node when its node dies."""

from __future__ import annotations

import asyncio
import statistics
import textwrap
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import redis.asyncio.cluster as acluster
from redis.cluster import ClusterNode, RedisCluster

from hitrate import AsyncCache, Cache, NearCache
from hitrate.breaker import Breaker
from hitrate.listener_cluster import ClusterListener, parse_nodes
from hitrate.testing import unique_prefix
from hitrate.topologies import EmbeddedCluster

from .test_near import BOUND, Other, until


class Runner:
    """Runs what a cache's verbs return: the value itself (sync), or an awaitable on a
    loop of its own (async)."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.loop = loop

    def __call__(self, value: Any) -> Any:
        return value if self.loop is None else self.loop.run_until_complete(value)


def _start() -> EmbeddedCluster:
    return EmbeddedCluster.start()


@pytest.fixture(scope="module")
def doomed() -> Iterator[EmbeddedCluster]:
    """A cluster for the tests that kill primaries (one each)."""
    c = _start()
    yield c
    c.stop()


def sync_client(cluster: EmbeddedCluster) -> RedisCluster:
    return RedisCluster(
        startup_nodes=[ClusterNode(h, p) for h, p in cluster.startup_nodes], socket_timeout=2
    )


def make(cluster: EmbeddedCluster, flavour: str, prefix: str, **kw: Any) -> tuple[Any, Runner]:
    """A cache of *flavour* on *cluster*, and how to run what its verbs return."""
    if flavour == "sync":
        return Cache(sync_client(cluster), prefix=prefix, **kw), Runner()
    client = acluster.RedisCluster(
        startup_nodes=[acluster.ClusterNode(h, p) for h, p in cluster.startup_nodes],
        socket_timeout=2,
    )
    return AsyncCache(client, prefix=prefix, **kw), Runner(asyncio.new_event_loop())


def close(cache: Any, run: Runner) -> None:
    if isinstance(cache, Cache):
        cache.close()
        cache.client.close()
        return
    run(cache.close())
    run(cache.client.aclose())
    assert run.loop is not None
    run.loop.close()


def live(cache: Any, timeout: float = 10.0) -> ClusterListener:
    near = cache.near
    assert near is not None and isinstance(near.listener, ClusterListener)
    assert near.listener.wait_live(timeout), "tracking did not come up on every primary"
    return near.listener


def keys_by_primary(admin: RedisCluster, cache: Any, family: str = "user") -> dict[int, str]:
    """One user key per primary port, whose entry that primary owns."""
    found: dict[int, str] = {}
    primaries = {n.port for n in admin.get_primaries()}
    for i in range(1000):
        key = f"{family}:{i}"
        port = admin.get_node_from_key(cache.redis_key(key)).port
        found.setdefault(port, key)
        if set(found) == primaries:
            return found
    raise AssertionError("no key found for some primary")


def keep(cache: Any, run: Runner, key: str) -> None:
    """Read *key* until the near cache keeps it (the invalidation of a write just made
    comes back asynchronously and refuses a read taken before it)."""
    near = cache.near
    for _ in range(200):
        run(cache.get(key))
        if key in near:
            return
        time.sleep(0.005)
    pytest.fail(f"{key!r} was never kept")


# -- what must be tracked --------------------------------------------------------------------
NODES = """\
a1 10.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460
a2 10.0.0.2:7000@17000 master,fail - 0 0 2 disconnected 5461-10922
a3 10.0.0.3:7000@17000 master,fail - 0 0 3 disconnected
a4 :7003@17003 master - 0 0 4 connected
a5 10.0.0.5:7000@17000 slave a2 0 0 2 connected
a6 10.0.0.6:7000@17000 master,fail? - 0 0 6 connected 10923-16383
a7 10.0.0.7:7000@17000 handshake - 0 0 0 connected
a8 :0@0 master,noaddr - 0 0 8 disconnected
"""


def test_every_primary_that_owns_or_may_own_slots_is_tracked() -> None:
    primaries, nodes = parse_nodes(NODES, "10.0.0.9")
    assert primaries == [
        ("10.0.0.1", 7000),  # serves slots
        ("10.0.0.2", 7000),  # failed, but its slots are its own until its replica takes them
        ("10.0.0.6", 7000),  # suspected failing, serves slots
        ("10.0.0.9", 7003),  # no slots yet, healthy: may be given some (no host: the asked)
    ]
    assert nodes == [("10.0.0.5", 7000), *primaries]  # a failed primary with no slots: out


# -- another process's writes ------------------------------------------------------------------
CHILD = textwrap.dedent(
    """
    import sys, time
    from redis.cluster import ClusterNode, RedisCluster
    from hitrate import Cache
    nodes = [ClusterNode("127.0.0.1", int(p)) for p in sys.argv[2].split(",")]
    cache = Cache(RedisCluster(startup_nodes=nodes), prefix=sys.argv[1])
    print("ready", flush=True)
    for line in sys.stdin:
        verb, _, arg = line.strip().partition(" ")
        if verb == "set":
            cache.set(arg, time.time())
        elif verb == "invalidate":
            cache.invalidate(arg)
        print(time.time(), flush=True)
    """
)


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_another_process_evicts_the_copy_on_every_node(
    cluster: EmbeddedCluster, flavour: str
) -> None:
    prefix = unique_prefix()
    cache, run = make(cluster, flavour, prefix, near=NearCache(hot_only=False))
    listener = live(cache)
    assert len(listener.trackers) == 3 and all(listener.client_ids.values())
    admin = sync_client(cluster)
    keys = keys_by_primary(admin, cache)
    other = Other(prefix, ",".join(str(p) for p in cluster.ports), child=CHILD)
    near = cache.near
    delays: list[float] = []
    for port, key in keys.items():
        for command in (f"set {key}", f"invalidate {key}"):
            for _ in range(3):
                run(cache.set(key, "mine"))
                keep(cache, run, key)
                done = other.do(command)
                until(lambda key=key: key not in near, BOUND)
                delays.append(max(0.0, time.time() - done))
                assert run(cache.get(key)) != "mine", (port, command)
    ms = sorted(d * 1000 for d in delays)
    print(f"cluster {flavour}: evicted after median {statistics.median(ms):.2f} ms, "
          f"max {ms[-1]:.2f} ms ({len(ms)} changes on {len(keys)} primaries)")  # fmt: skip
    other.close()
    admin.close()
    threads = [listener._thread, *(t._thread for t in listener.trackers.values())]
    close(cache, run)
    assert all(t is not None and not t.is_alive() for t in threads)  # closing stops them


# -- a tracking connection killed ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("flavour", "kind"), [("sync", "ours"), ("async", "ours"), ("sync", "naive")]
)
def test_killed_tracking_connection_bypasses_then_recovers(
    cluster: EmbeddedCluster, flavour: str, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CLIENT KILL of one primary's tracking connection: the near cache is dropped and
    bypassed (every read sees the last write to a key on that primary) until tracking is
    back there. The naive cluster near cache - live while any node is tracked - is caught
    serving the old value of a key on the node whose tracking is down."""
    if kind == "naive":
        real = ClusterListener._tracking

        def naive(self: ClusterListener, view: Any, up: bool) -> None:
            if up:
                real(self, view, up)  # goes live, never down

        monkeypatch.setattr(ClusterListener, "_tracking", naive)
    prefix = unique_prefix()
    cache, run = make(cluster, flavour, prefix, near=NearCache(hot_only=False))
    listener = live(cache)
    near = cache.near
    admin = sync_client(cluster)
    keys = keys_by_primary(admin, cache)
    writer = Cache(sync_client(cluster), prefix=prefix)
    victim = next(iter(keys))
    key = keys[victim]
    for k in keys.values():
        writer.set(k, 1)
    time.sleep(0.05)
    for k in keys.values():
        keep(cache, run, k)
    tracker = listener.trackers[("127.0.0.1", victim)]
    tracker.backoff = (0.5, 2.0)  # a reconnect 0.25 to 0.75 s away
    client_id = tracker.client_id
    assert client_id is not None
    killed = time.monotonic()
    redis.Redis(port=victim).execute_command("CLIENT", "KILL", "ID", client_id)
    until(lambda: not tracker.live, 1.0)  # the loss noticed (a read error, at once)
    stale = 0
    for version in range(2, 6):
        writer.set(key, version)
        seen = run(cache.get(key))
        stale += seen != version
        if kind == "ours":
            assert seen == version and run(cache.get_or_fetch(key, lambda: -1)) == version
            assert not near.live and len(near) == 0
    if kind == "naive":
        assert stale > 0  # the check catches a near cache that stays live
    else:
        until(lambda: near.live, 10.0)
        back = time.monotonic() - killed
        assert listener.reconnects >= 1 and near.outages >= 1
        keep(cache, run, key)  # serving again
        writer.set(key, 10)
        until(lambda: key not in near, BOUND)  # and coherent again on that node
        assert run(cache.get(key)) == 10
        print(f"cluster {flavour}: tracking back {back * 1000:.0f} ms after CLIENT KILL "
              f"(reconnect backoff 0.25-0.75 s)")  # fmt: skip
    writer.close()
    writer.client.close()
    admin.close()
    close(cache, run)


# -- a manual failover: no connection drops ------------------------------------------------------
def test_manual_failover_is_followed(cluster: EmbeddedCluster) -> None:
    """CLUSTER FAILOVER on a replica: the roles swap with every connection up. A write on
    the new primary still evicts the copy within the bound (the demoted primary relays
    its invalidation, or the topology read dropped the near cache first), and the new
    primary is tracked after the next topology read."""
    prefix = unique_prefix()
    cache, run = make(cluster, "sync", prefix, near=NearCache(hot_only=False))
    listener = live(cache)
    near = cache.near
    admin = sync_client(cluster)
    port, key = next(iter(keys_by_primary(admin, cache).items()))
    writer = Cache(sync_client(cluster), prefix=prefix, breaker=Breaker(threshold=10**6))
    writer.set(key, 1)
    time.sleep(0.05)
    keep(cache, run, key)
    replica = next(
        n.port
        for n in cluster.nodes
        if n.process.poll() is None
        and int(redis.Redis(port=n.port).info("replication").get("master_port", 0)) == port
    )
    redis.Redis(port=replica).execute_command("CLUSTER", "FAILOVER")
    until(lambda: redis.Redis(port=replica).info("replication")["role"] == "master", 5.0)
    until(lambda: writer.set(key, 2), 5.0)  # the writer finds the new primary
    until(lambda: key not in near, BOUND)
    assert run(cache.get(key)) == 2
    until(lambda: ("127.0.0.1", replica) in listener.primaries and near.live, 5.0)
    assert listener.topology_changes >= 1
    writer.set(key, 3)
    time.sleep(0.05)
    keep(cache, run, key)
    writer.set(key, 4)  # tracked on the new primary itself now
    until(lambda: key not in near, BOUND)
    assert run(cache.get(key)) == 4
    writer.close()
    writer.client.close()
    admin.close()
    close(cache, run)


# -- a primary killed: failover ------------------------------------------------------------------
def primary_with_replica(cluster: EmbeddedCluster) -> int:
    """A primary whose replica is alive (so killing it fails over)."""
    alive = {n.port for n in cluster.nodes if n.process.poll() is None}
    for port in cluster.primaries():
        for replica in alive - {port}:
            with redis.Redis(port=replica, socket_timeout=2) as r:
                if int(r.info("replication").get("master_port", 0)) == port:
                    return port
    raise AssertionError("no primary with a live replica left")


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_primary_killed_bypasses_until_its_replica_is_tracked(
    doomed: EmbeddedCluster, flavour: str
) -> None:
    """SIGKILL of a primary: its tracking connection drops, the near cache is dropped and
    bypassed through the failover (reads that work see the last write), and it is live
    again once the promoted replica is tracked - then coherent for keys on it."""
    doomed.wait_healthy()
    prefix = unique_prefix()
    cache, run = make(doomed, flavour, prefix, near=NearCache(hot_only=False))
    listener = live(cache)
    near = cache.near
    admin = sync_client(doomed)
    victim = primary_with_replica(doomed)
    keys = keys_by_primary(admin, cache)
    key = keys[victim]
    writer = Cache(sync_client(doomed), prefix=prefix, breaker=Breaker(threshold=10**6))
    for k in keys.values():
        writer.set(k, 1)
    time.sleep(0.05)
    for k in keys.values():
        keep(cache, run, k)
    before = set(listener.primaries)
    killed = time.monotonic()
    doomed.kill(victim)
    until(lambda: not near.live, 2.0)
    down_after = time.monotonic() - killed
    assert len(near) == 0
    last = 1
    stale = 0
    while not near.live and time.monotonic() - killed < 20:
        if writer.set(key, last + 1):  # False while the slot has no primary
            last += 1
        seen = run(cache.get(key))
        stale += seen is not None and seen != last
        time.sleep(0.02)
    assert near.live, "tracking never came back after the failover"
    back = time.monotonic() - killed
    assert stale == 0
    assert set(listener.primaries) != before and ("127.0.0.1", victim) not in listener.primaries
    assert listener.topology_changes >= 1
    admin.close()
    writer.close()
    writer.client.close()
    writer = Cache(sync_client(doomed), prefix=prefix)  # the new topology from the start
    writer.set(key, 100)
    time.sleep(0.05)
    keep(cache, run, key)
    assert run(cache.get(key)) == 100
    writer.set(key, 101)  # on the promoted replica: its invalidation is heard
    until(lambda: key not in near, BOUND)
    assert run(cache.get(key)) == 101
    print(f"cluster {flavour}: near cache down {down_after * 1000:.1f} ms after SIGKILL, "
          f"live again after {back:.2f} s ({last - 1} writes meanwhile, none stale)")  # fmt: skip
    writer.close()
    writer.client.close()
    close(cache, run)


# -- wake-ups ------------------------------------------------------------------------------------
def waits(holder: Cache, waiter: Any, run: Runner, key: str) -> float:
    """*holder* loads *key* for 0.5 s; *waiter* asks for it meanwhile: seconds it waited."""

    def load() -> str:
        time.sleep(0.5)
        return "filled"

    thread = threading.Thread(target=holder.get_or_fetch, args=(key, load))
    thread.start()
    lease = holder.redis_key(key) + ":lease"
    until(lambda: holder.client.exists(lease), 2.0)
    t0 = time.monotonic()
    assert run(waiter.get_or_fetch(key, lambda: "not waited")) == "filled"
    waited = time.monotonic() - t0
    thread.join()
    return waited


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_a_fill_on_any_node_wakes_a_waiter(cluster: EmbeddedCluster, flavour: str) -> None:
    """A waiter for a key on each primary is woken by the fill's message (one
    subscription, on one node: a cluster broadcasts PUBLISH), not by its poll."""
    prefix = unique_prefix()
    holder = Cache(sync_client(cluster), prefix=prefix)
    waiter, run = make(cluster, flavour, prefix)
    listener = waiter._listener
    assert isinstance(listener, ClusterListener)
    admin = sync_client(cluster)
    for key in keys_by_primary(admin, holder).values():
        woken = listener.woken
        waits(holder, waiter, run, key)
        assert listener.woken == woken + 1, key  # woken by the fill's message
    assert len({listener.wake._conn.port}) == 1
    admin.close()
    holder.close()
    holder.client.close()
    close(waiter, run)


def test_the_wake_subscription_moves_when_its_node_dies(doomed: EmbeddedCluster) -> None:
    """The node holding the wake subscription is killed: the subscription moves to another
    node, and a fill on every primary wakes waiters again."""
    doomed.wait_healthy()
    prefix = unique_prefix()
    holder = Cache(sync_client(doomed), prefix=prefix)
    waiter = Cache(sync_client(doomed), prefix=prefix)
    listener = waiter._listener
    assert isinstance(listener, ClusterListener)
    admin = sync_client(doomed)
    keys = keys_by_primary(admin, holder)
    waits(holder, waiter, Runner(), next(iter(keys.values())))
    assert listener.woken == 1 and listener.wake.live
    node = listener.wake._conn.port  # where the subscription is (a replica first)
    doomed.kill(node)
    until(lambda: listener.wake.live and listener.wake._conn.port != node, 5.0)
    doomed.wait_healthy()
    for key in keys_by_primary(admin, holder, "order").values():
        woken = listener.woken
        waits(holder, waiter, Runner(), key)
        assert listener.woken == woken + 1, key
    print(f"wake subscription moved from {node} to {listener.wake._conn.port}")
    admin.close()
    holder.close()
    holder.client.close()
    waiter.close()
    waiter.client.close()
