"""Local topologies for tests, the demo and ``hitrate server --cluster`` / ``--sentinel``,
made of private servers on loopback, so they need no ``redis-cli`` and work with the bundled
``valkey-server``:

* :class:`EmbeddedCluster`: a Redis Cluster (3 primaries with a replica each by default),
  built with ``CLUSTER`` commands only;
* :class:`EmbeddedSentinel`: a primary, its replicas and the sentinels that watch it
  (service name ``hitrate``).

>>> cluster = EmbeddedCluster.start()                 # doctest: +SKIP
>>> cache = Cache.from_url(cluster.url)               # redis+cluster://127.0.0.1:p1,...
>>> cluster.kill(cluster.primaries()[0])              # a failover: its replica takes over
>>> cluster.stop()

>>> sentinel = EmbeddedSentinel.start()               # doctest: +SKIP
>>> cache = Cache.from_url(sentinel.url)              # redis+sentinel://127.0.0.1:s1,.../hitrate
>>> sentinel.kill_primary()                           # the sentinels promote a replica
>>> sentinel.wait_failover()                          # seconds until they did
>>> sentinel.stop()
"""

from __future__ import annotations

import atexit
import contextlib
import time
from typing import Any

import redis

from .server import EmbeddedServer, free_port

__all__ = ["SERVICE", "EmbeddedCluster", "EmbeddedSentinel"]

SLOTS = 16384
#: The name the sentinels of :class:`EmbeddedSentinel` know the primary by.
SERVICE = "hitrate"


def _client(port: int) -> Any:
    return redis.Redis(port=port, socket_timeout=2, socket_connect_timeout=1)


class EmbeddedCluster:
    """A Redis Cluster on loopback: ``primaries`` primaries, each with ``replicas`` replicas.

    ``node_timeout`` (milliseconds) is how long a primary may be unreachable before its
    replica is promoted: short here (1 s), so a failover takes a few seconds."""

    def __init__(self, nodes: list[EmbeddedServer], primaries: int, node_timeout: int) -> None:
        self.nodes = nodes
        self.node_timeout = node_timeout
        self._first_primaries = [n.port for n in nodes[:primaries]]
        self.flavour = nodes[0].flavour
        self.buses: dict[int, int] = {}  # port -> cluster bus port

    @property
    def ports(self) -> list[int]:
        return [n.port for n in self.nodes]

    @property
    def url(self) -> str:
        """``redis+cluster://`` with every node as a seed."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports)

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", p) for p in self.ports]

    @classmethod
    def start(
        cls,
        flavour: str | None = None,
        *,
        primaries: int = 3,
        replicas: int = 1,
        node_timeout: int = 1000,
        timeout: float = 30.0,
    ) -> EmbeddedCluster:
        nodes: list[EmbeddedServer] = []
        buses: dict[int, int] = {}
        try:
            for _ in range(primaries * (1 + replicas)):
                bus = free_port()
                args = (
                    "--cluster-enabled", "yes",
                    "--cluster-port", str(bus),
                    "--cluster-config-file", "nodes.conf",
                    "--cluster-node-timeout", str(node_timeout),
                    "--cluster-require-full-coverage", "no",
                    "--cluster-allow-reads-when-down", "no",
                )  # fmt: skip
                nodes.append(EmbeddedServer.start(flavour, extra_args=args))
                buses[nodes[-1].port] = bus
            cluster = cls(nodes, primaries, node_timeout)
            cluster.buses = buses
            cluster._form(primaries, replicas, timeout)
        except BaseException:
            for node in nodes:
                node.stop()
            raise
        atexit.register(cluster.stop)
        return cluster

    def _form(self, primaries: int, replicas: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        ports = self.ports
        ids = [_client(p).execute_command("CLUSTER", "MYID").decode() for p in ports]
        per = SLOTS // primaries
        for i in range(primaries):
            end = SLOTS - 1 if i == primaries - 1 else (i + 1) * per - 1
            _client(ports[i]).execute_command("CLUSTER", "ADDSLOTSRANGE", i * per, end)
        first = _client(ports[0])
        for p in ports[1:]:
            first.execute_command("CLUSTER", "MEET", "127.0.0.1", p, self.buses[p])
        self._until(deadline, lambda: all(self._known(p) == len(ports) for p in ports))
        for j, p in enumerate(ports[primaries:]):
            primary_id = ids[j % primaries]
            self._until(deadline, lambda p=p, i=primary_id: self._replicate(p, i))
        self._until(deadline, self.healthy)
        self._until(deadline, lambda: self._synced(ports[primaries:]))
        if replicas:  # clients read the slot map once: it must name the replicas already
            self._until(deadline, self.replicas_listed)

    @staticmethod
    def _known(port: int) -> int:
        lines = _client(port).execute_command("CLUSTER", "NODES").decode().splitlines()
        return len([line for line in lines if line.strip()])

    @staticmethod
    def _replicate(port: int, primary_id: str) -> bool:
        try:
            _client(port).execute_command("CLUSTER", "REPLICATE", primary_id)
        except redis.ResponseError:
            return False  # the node has not heard of its primary yet
        return True

    @staticmethod
    def _until(deadline: float, done: Any) -> None:
        while not done():
            if time.monotonic() > deadline:
                raise RuntimeError("the local cluster did not form in time")
            time.sleep(0.05)

    def _info(self, port: int) -> dict[str, str]:
        text = _client(port).execute_command("CLUSTER", "INFO").decode()
        return dict(line.split(":", 1) for line in text.split() if ":" in line)

    def healthy(self) -> bool:
        """Every live node says the cluster is ok, and every slot is served by a live
        primary."""
        alive = {n.port for n in self.nodes if n.process.poll() is None}
        for port in alive:
            try:
                if self._info(port).get("cluster_state") != "ok":
                    return False
            except redis.RedisError:
                return False
        primaries = self.primaries()
        return bool(primaries) and set(primaries) <= alive

    def _synced(self, replicas: list[int]) -> bool:
        for port in replicas:
            try:
                info = _client(port).info("replication")
            except redis.RedisError:
                return False
            if info.get("master_link_status") != "up":
                return False
        return True

    def primaries(self) -> list[int]:
        """Ports of the live primaries that serve slots, in slot order."""
        for node in self.nodes:
            if node.process.poll() is not None:
                continue
            with contextlib.suppress(redis.RedisError):
                slots = _client(node.port).execute_command("CLUSTER", "SLOTS")
                return [int(r[2][1]) for r in sorted(slots, key=lambda r: r[0])]
        return []

    def replicas_listed(self) -> bool:
        """Does every live node's ``CLUSTER SLOTS`` name a replica for every slot range?
        (Gossip takes a few seconds after the cluster forms; a client reading from replicas
        finds none before.)"""
        for node in self.nodes:
            if node.process.poll() is not None:
                continue
            try:
                ranges = _client(node.port).execute_command("CLUSTER", "SLOTS")
            except redis.RedisError:
                return False
            if not ranges or any(len(r) < 4 for r in ranges):
                return False
        return True

    def wait_replicas_listed(self, timeout: float = 30.0) -> float:
        """Wait until :meth:`replicas_listed`; returns the seconds it took."""
        start = time.monotonic()
        self._until(start + timeout, self.replicas_listed)
        return time.monotonic() - start

    def wait_healthy(self, timeout: float = 30.0) -> float:
        """Wait until :meth:`healthy`; returns the seconds it took."""
        start = time.monotonic()
        self._until(start + timeout, self.healthy)
        return time.monotonic() - start

    def node(self, port: int) -> EmbeddedServer:
        return next(n for n in self.nodes if n.port == port)

    def kill(self, port: int) -> None:
        """SIGKILL the node on *port* (its replica is promoted after ``node_timeout``)."""
        proc = self.node(port).process
        proc.kill()
        proc.wait()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> EmbeddedCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<EmbeddedCluster {self.flavour} {self.url}>"


class EmbeddedSentinel:
    """A primary with ``replicas`` replicas, watched by ``sentinels`` sentinels (``redis-server
    --sentinel`` / ``valkey-server --sentinel``) that agree by majority.

    ``down_after_ms`` is how long the primary may be unreachable before the sentinels
    promote a replica: short here (1 s), so a failover takes a few seconds."""

    def __init__(
        self, servers: list[EmbeddedServer], sentinels: list[EmbeddedServer], down_after_ms: int
    ) -> None:
        self.servers = servers
        self.sentinels = sentinels
        self.down_after_ms = down_after_ms
        self.flavour = servers[0].flavour
        self.service = SERVICE
        self._killed: set[int] = set()

    @property
    def url(self) -> str:
        """``redis+sentinel://`` with every sentinel, and the service name."""
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.service}"

    @property
    def sentinel_addresses(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", s.port) for s in self.sentinels]

    @classmethod
    def start(
        cls,
        flavour: str | None = None,
        *,
        replicas: int = 2,
        sentinels: int = 3,
        down_after_ms: int = 1000,
        timeout: float = 30.0,
    ) -> EmbeddedSentinel:
        if sentinels < 1 or replicas < 0:
            raise ValueError("EmbeddedSentinel needs at least one sentinel and replicas >= 0")
        servers: list[EmbeddedServer] = []
        watchers: list[EmbeddedServer] = []
        try:
            servers.append(EmbeddedServer.start(flavour))
            primary = servers[0].port
            for _ in range(replicas):
                args = ("--replicaof", "127.0.0.1", str(primary))
                servers.append(EmbeddedServer.start(servers[0].flavour, extra_args=args))
            quorum = sentinels // 2 + 1
            config = (
                f"sentinel monitor {SERVICE} 127.0.0.1 {primary} {quorum}\n"
                f"sentinel down-after-milliseconds {SERVICE} {down_after_ms}\n"
                f"sentinel failover-timeout {SERVICE} {max(5000, 4 * down_after_ms)}\n"
                f"sentinel parallel-syncs {SERVICE} {max(1, replicas)}\n"
            )
            for _ in range(sentinels):
                watchers.append(
                    EmbeddedServer.start(
                        servers[0].flavour, config=config, extra_args=("--sentinel",)
                    )
                )
            topology = cls(servers, watchers, down_after_ms)
            topology._until(time.monotonic() + timeout, topology.ready)
        except BaseException:
            for node in watchers + servers:
                node.stop()
            raise
        atexit.register(topology.stop)
        return topology

    @staticmethod
    def _until(deadline: float, done: Any, what: str = "the local sentinels did not agree") -> None:
        while not done():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} in time")
            time.sleep(0.05)

    def _ask(self, sentinel: EmbeddedServer, *args: Any) -> Any:
        return _client(sentinel.port).execute_command("SENTINEL", *args)

    def _live(self) -> list[EmbeddedServer]:
        return [s for s in self.sentinels if s.process.poll() is None]

    def ready(self) -> bool:
        """Every live sentinel knows the primary, every live replica and the other
        sentinels, and the replicas are in sync: a failover can happen."""
        live_replicas = [
            s for s in self.servers if s.process.poll() is None and s.port != self.primary_port()
        ]
        for sentinel in self._live():
            try:
                raw = self._ask(sentinel, "MASTER", SERVICE)
            except redis.RedisError:
                return False
            info = _pairs(raw)
            if int(info.get("num-slaves", 0)) < len(live_replicas):
                return False
            if int(info.get("num-other-sentinels", 0)) < len(self._live()) - 1:
                return False
            if "down" in info.get("flags", "") or "failover" in info.get("flags", ""):
                return False
        for server in live_replicas:
            try:
                if _client(server.port).info("replication").get("master_link_status") != "up":
                    return False
            except redis.RedisError:
                return False
        return True

    def primary_port(self) -> int:
        """The port of the primary the sentinels name now (asked of the first that answers)."""
        for sentinel in self._live():
            with contextlib.suppress(redis.RedisError):
                reply = _client(sentinel.port).execute_command(
                    "SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE
                )
                if reply:
                    return int(reply[1])
        raise RuntimeError("no sentinel answers")

    def server(self, port: int) -> EmbeddedServer:
        return next(s for s in self.servers if s.port == port)

    def kill_primary(self) -> int:
        """SIGKILL the primary; returns its port. The sentinels promote a replica after
        ``down_after_ms`` and an election (:meth:`wait_failover`)."""
        port = self.primary_port()
        proc = self.server(port).process
        proc.kill()
        proc.wait()
        self._killed.add(port)
        return port

    def _failed_over(self) -> bool:
        try:
            port = self.primary_port()
        except RuntimeError:
            return False
        if port in self._killed:
            return False
        try:
            role = _client(port).info("replication").get("role")
        except redis.RedisError:
            return False
        return bool(role == "master")

    def wait_failover(self, timeout: float = 60.0) -> float:
        """Wait until the sentinels name a live primary that is not one killed here, and it
        says it is a primary; returns the seconds it took."""
        start = time.monotonic()
        self._until(start + timeout, self._failed_over, "the sentinels did not fail over")
        return time.monotonic() - start

    def stop(self) -> None:
        for node in self.sentinels + self.servers:
            node.stop()

    def __enter__(self) -> EmbeddedSentinel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<EmbeddedSentinel {self.flavour} {self.url}>"


def _pairs(reply: Any) -> dict[str, str]:
    """A flat ``[name, value, ...]`` (RESP2) or a map reply, as text."""
    if isinstance(reply, dict):
        items = list(reply.items())
    else:
        items = list(zip(reply[::2], reply[1::2], strict=False))
    return {
        (k.decode() if isinstance(k, bytes) else str(k)): (
            v.decode() if isinstance(v, bytes) else str(v)
        )
        for k, v in items
    }
