"""Local topologies for tests, the demo and ``hitrate server --cluster``: a Redis Cluster
of private servers (3 primaries with a replica each by default), built with ``CLUSTER``
commands only, so it needs no ``redis-cli`` and works with the bundled ``valkey-server``.

>>> cluster = EmbeddedCluster.start()                 # doctest: +SKIP
>>> cache = Cache.from_url(cluster.url)               # redis+cluster://127.0.0.1:p1,...
>>> cluster.kill(cluster.primaries()[0])              # a failover: its replica takes over
>>> cluster.stop()
"""

from __future__ import annotations

import atexit
import contextlib
import time
from typing import Any

import redis

from .server import EmbeddedServer, free_port

__all__ = ["EmbeddedCluster"]

SLOTS = 16384


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
