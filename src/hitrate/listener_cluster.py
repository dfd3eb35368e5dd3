"""The listener of a Redis Cluster cache (see :mod:`hitrate.listener` for what a listener
does): one tracking connection per primary for the near cache, and one wake subscription on
any node.

Why the near cache stays coherent through topology changes: a key's invalidation comes
from the primary that owns it, so every primary that owns slots - or may be given some -
must be tracked before anything is kept; any tracking connection dropping (a primary
killed, ``CLIENT KILL``, a network fault) drops the near cache at once, and the topology is
read again (``CLUSTER NODES``) until every current primary is tracked. A failed primary
keeps its slots until its replica takes them over, so it stays required meanwhile: the near
cache is bypassed until the promoted replica is tracked. Resharding moves keys with
``MIGRATE``, which deletes them at the source (an invalidation there) and writes them at
the target (tracked too). What is read again only every ``ping_interval`` seconds is a
change of role without a connection dropping (a manual failover of a live primary, a new
node given slots): a copy may be served that long after such a change.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
from collections.abc import Callable
from typing import Any

import redis

from .listener import Listener, Waiter, connection_factory
from .slots import is_cluster

__all__ = [
    "ClusterListener",
    "cluster_connector",
    "cluster_nodes",
    "is_cluster",
    "make_listener",
    "parse_nodes",
]

log = logging.getLogger("hitrate")
Node = tuple[str, int]

#: Connection settings of a cluster client's nodes that belong to that client's own
#: connections (its hooks, its maintenance handling), not to a listener's.
_NOT_CARRIED = frozenset(
    {
        "cache",
        "event_dispatcher",
        "himport_registry",
        "host",
        "maint_notifications_config",
        "maint_notifications_pool_handler",
        "maintenance_notification_hash",
        "maintenance_state",
        "orig_host_address",
        "orig_socket_connect_timeout",
        "orig_socket_timeout",
        "oss_cluster_maint_notifications_handler",
        "port",
        "redis_connect_func",
        "retry",
    }
)


def cluster_nodes(client: Any) -> list[Node]:
    """The nodes a redis-py cluster client (sync or asyncio) knows of, replicas first (a
    wake subscription and topology reads are better kept off the primaries)."""
    manager = client.nodes_manager
    found: dict[Node, bool] = {}
    for table in ("startup_nodes", "nodes_cache"):
        with contextlib.suppress(Exception):  # read from another thread: best effort
            for node in list(getattr(manager, table, {}).values()):
                replica = getattr(node, "server_type", None) == "replica"
                found[(node.host, int(node.port))] = replica
    return sorted(found, key=lambda node: not found[node])


def cluster_connector(client: Any) -> Callable[[str, int], Any] | None:
    """A function making a RESP2 connection to one node (host, port) of a redis-py
    cluster client (sync or asyncio), with that client's settings (auth, TLS, timeouts)."""
    manager = client.nodes_manager
    nodes = list(manager.startup_nodes.values()) + list(manager.nodes_cache.values())
    classes: dict[str, Any] = {"Connection": redis.Connection, "SSLConnection": redis.SSLConnection}
    for node in nodes:
        pool = getattr(getattr(node, "redis_connection", None), "connection_pool", None)
        if pool is not None:  # a sync client's node: a Redis client of its own
            cls, kwargs = pool.connection_class, pool.connection_kwargs
        elif hasattr(node, "connection_kwargs"):  # an asyncio client's node
            cls, kwargs = node.connection_class, node.connection_kwargs
        else:
            continue
        sync_cls = classes.get(getattr(cls, "__name__", ""))
        if sync_cls is None:
            return None
        break
    else:
        return None
    settings = {k: v for k, v in kwargs.items() if k not in _NOT_CARRIED}
    settings["protocol"] = 2  # pub/sub messages, not RESP3 pushes
    settings["socket_timeout"] = max(1.0, settings.get("socket_timeout") or 0.0)
    try:
        sync_cls(host="localhost", port=6379, **settings)  # unknown settings fail now
    except TypeError:
        return None

    def connect(host: str, port: int) -> Any:
        conn: Any = sync_cls(host=host, port=port, **settings)
        conn.connect()
        return conn

    return connect


def parse_nodes(text: str, asked: str) -> tuple[list[Node], list[Node]]:
    """From a ``CLUSTER NODES`` reply (asked of host *asked*): the primaries whose
    invalidations must be heard - every primary that serves slots (even one flagged as
    failing: until its replica takes its slots over, its keys are its own) and every
    healthy primary without slots yet (it may be given some at any time) - and all the
    nodes with an address, replicas first (see :func:`cluster_nodes`)."""
    primaries: list[Node] = []
    others: list[Node] = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 8:
            continue
        flags = set(fields[2].split(","))
        address = fields[1].split("@", 1)[0]
        host, _, port = address.rpartition(":")
        if "noaddr" in flags or "handshake" in flags or not port.isdigit() or port == "0":
            continue
        node = (host or asked, int(port))
        failed = "fail" in flags
        if "master" in flags and (len(fields) > 8 or not failed):
            primaries.append(node)
        elif not failed:
            others.append(node)
    return sorted(primaries), sorted(others) + sorted(primaries)


class _NodeView:
    """What the tracking listener of one primary sees as its near cache: invalidations go
    to the near cache itself; going live or down is reported to the :class:`ClusterListener`,
    which keeps the near cache live only while every primary is tracked."""

    __slots__ = ("node", "owner")

    def __init__(self, owner: ClusterListener, node: Node) -> None:
        self.owner, self.node = owner, node

    @property
    def tracking_prefixes(self) -> tuple[str, ...]:
        return tuple(self.owner.near.tracking_prefixes)

    def invalidated(self, keys: list[bytes] | None) -> None:
        self.owner.near.invalidated(keys)

    def went_live(self) -> None:
        self.owner._tracking(self, True)

    def went_down(self) -> None:
        self.owner._tracking(self, False)


class ClusterListener:
    """The listener of a Redis Cluster cache (see the module): the same interface as
    :class:`Listener`, built from one :class:`Listener` per connection.

    * **Wake-ups**: ``PUBLISH`` in a cluster reaches every node, so one subscription on
      any node suffices: :attr:`wake`, a wake-only listener whose reconnects go to the next
      node known (its node dying moves it; waiters poll meanwhile). Started on the first
      wait.
    * **The near cache**: one tracking listener per primary (``BCAST`` on each: a key's
      invalidation comes from the node that owns it), in :attr:`trackers`. A thread reads
      the topology (``CLUSTER NODES``) every ``ping_interval`` seconds, and at once
      (every 0.1 s until it settles) when a tracking connection drops; the near cache is
      live only while every primary that :func:`parse_nodes` names has its tracking up.
      Any tracking connection dropping, or a primary appearing (a failover, a node added),
      drops the near cache and bypasses it until tracking is on at every current primary.
    """

    def __init__(
        self,
        seeds: Callable[[], list[Node]],
        connect: Callable[[str, int], Any],
        prefix: str,
        near: Any = None,
        *,
        remap: Callable[[Node], Node] | None = None,
        ping_interval: float = 1.0,
        backoff: tuple[float, float] = (0.05, 2.0),
    ) -> None:
        self._seeds = seeds
        self._connect_to = connect
        self._remap = remap
        self.prefix = prefix
        self.near = near
        self.ping_interval = ping_interval
        self.backoff = backoff
        self.known: list[Node] = list(seeds())  # every node heard of, replicas first
        self.primaries: tuple[Node, ...] = ()  # the primaries tracked (or being connected)
        self.trackers: dict[Node, Listener] = {}
        self.topology_changes = 0  # times the set of primaries changed after the first
        self._retired_reconnects = 0
        self._up: set[Node] = set()
        self._turn = 0
        self._lock = threading.RLock()
        self._changed = threading.Event()
        self._all_up = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self.wake = Listener(
            self._connect_next, prefix, None, ping_interval=ping_interval, backoff=backoff,
            name="hitrate-wake",
        )  # fmt: skip

    # -- what a Listener offers -----------------------------------------------------------
    @property
    def live(self) -> bool:
        """With a near cache: every primary tracked; without: the wake subscription up."""
        return self._all_up.is_set() if self.near is not None else self.wake.live

    @property
    def reconnects(self) -> int:
        with self._lock:
            trackers = sum(t.reconnects for t in self.trackers.values())
        return self.wake.reconnects + trackers + self._retired_reconnects

    @property
    def woken(self) -> int:
        return self.wake.woken

    @property
    def client_ids(self) -> dict[Node, int | None]:
        """Each tracked primary's tracking connection CLIENT ID (None while it is down)."""
        with self._lock:
            return {node: t.client_id for node, t in self.trackers.items()}

    def ensure(self) -> None:
        """Start the topology thread (with a near cache) if it is not running."""
        if self.near is None or self._stop.is_set():
            return
        if self._thread is not None and self._pid == os.getpid():
            return
        if self._pid != os.getpid():
            self._lock = threading.RLock()  # another thread may have held it at the fork
        with self._lock:
            if self._pid != os.getpid():  # a forked child: the parent's threads are not here
                self._pid, self._thread = os.getpid(), None
                self.trackers, self._up, self.primaries = {}, set(), ()
                self._all_up.clear()
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="hitrate-topology", daemon=True
                )
                self._thread.start()

    def wait_live(self, timeout: float) -> bool:
        if self.near is None:
            return self.wake.wait_live(timeout)
        self.ensure()
        return self._all_up.wait(timeout)

    def register(self, waiter: Waiter) -> None:
        self.wake.register(waiter)

    def unregister(self, waiter: Waiter) -> None:
        self.wake.unregister(waiter)

    def close(self, join: bool = True) -> None:
        self._stop.set()
        self._changed.set()
        with self._lock:
            trackers = list(self.trackers.values())
        for listener in [self.wake, *trackers]:
            listener.close(join=False)
        if join:
            for listener in [self.wake, *trackers]:
                listener.close()
            thread = self._thread
            if thread is not None and thread is not threading.current_thread():
                thread.join(2.0)

    # -- connections ----------------------------------------------------------------------
    def _candidates(self) -> list[Node]:
        with self._lock:
            known = list(self.known)
        for node in self._seeds():
            if node not in known:
                known.append(node)
        return known

    def _connect_next(self) -> Any:
        """A connection to the next node known that answers (each call starts one further
        on, so a node that died is not tried first again)."""
        nodes = self._candidates()
        last: Exception = redis.ConnectionError("no cluster node known")
        for i in range(len(nodes)):
            host, port = nodes[(self._turn + i) % len(nodes)]
            try:
                conn = self._connect_to(host, port)
            except Exception as exc:
                last = exc
                continue
            self._turn += i + 1
            return conn
        self._turn += 1
        raise last

    # -- the topology thread ----------------------------------------------------------------
    def _run(self) -> None:
        conn: Any = None
        while not self._stop.is_set():
            try:
                if conn is None:
                    conn = self._connect_next()
                conn.send_command("CLUSTER", "NODES")
                reply = conn.read_response()
                text = reply.decode() if isinstance(reply, bytes) else str(reply)
                self._apply(*parse_nodes(text, conn.host))
            except Exception as exc:
                if not self._stop.is_set():
                    log.debug("hitrate: cluster topology not read: %r", exc)
                if conn is not None:
                    with contextlib.suppress(Exception):  # gone already
                        conn.disconnect()
                conn = None
            self._changed.wait(self.ping_interval if self._all_up.is_set() else 0.1)
            self._changed.clear()
        if conn is not None:
            with contextlib.suppress(Exception):  # closing
                conn.disconnect()

    def _apply(self, primaries: list[Node], nodes: list[Node]) -> None:
        if self._remap is not None:
            primaries = [self._remap(n) for n in primaries]
            nodes = [self._remap(n) for n in nodes]
        if not primaries:
            raise redis.ConnectionError("the cluster has no primary serving slots")
        with self._lock:
            if self._stop.is_set():
                return
            self.known = nodes + [n for n in self.known if n not in nodes]
            if set(primaries) == set(self.trackers):
                return
            if self.trackers:
                self.topology_changes += 1
                log.info("hitrate: near cache: cluster primaries now %s", primaries)
            for node in [n for n in self.trackers if n not in primaries]:
                gone = self.trackers.pop(node)
                self._up.discard(node)
                self._retired_reconnects += gone.reconnects
                gone.close(join=False)
            for node in primaries:
                if node not in self.trackers:
                    tracker = Listener(
                        functools.partial(self._connect_to, *node),
                        self.prefix,
                        _NodeView(self, node),
                        ping_interval=self.ping_interval,
                        backoff=self.backoff,
                        wake=False,
                        name=f"hitrate-tracking-{node[0]}:{node[1]}",
                    )
                    self.trackers[node] = tracker
                    tracker.ensure()
            self.primaries = tuple(primaries)
            self._settle()

    def _tracking(self, view: _NodeView, up: bool) -> None:
        """A primary's tracking connection came up or went down."""
        with self._lock:
            tracker = self.trackers.get(view.node)
            if tracker is None or tracker.near is not view:
                return  # a primary no longer tracked: its connection is being closed
            if up:
                self._up.add(view.node)
            else:
                self._up.discard(view.node)
                self._changed.set()  # read the topology again now: a failover?
            self._settle()

    def _settle(self) -> None:
        """Live only while every primary is tracked (called holding the lock)."""
        near = self.near
        if self.trackers and self._up >= set(self.trackers) and not self._stop.is_set():
            if not self._all_up.is_set():
                near.went_live()
                self._all_up.set()
        else:
            self._all_up.clear()
            near.went_down()


def make_listener(client: Any, prefix: str, near: Any = None) -> Listener | ClusterListener | None:
    """The listener for *client* (one server, or a Redis Cluster), or None where a
    connection of its own cannot be made from the client's settings."""
    if is_cluster(client):
        connect = cluster_connector(client)
        if connect is None:
            return None
        remap = getattr(client.nodes_manager, "address_remap", None)
        return ClusterListener(lambda: cluster_nodes(client), connect, prefix, near, remap=remap)
    single = connection_factory(client)
    return None if single is None else Listener(single, prefix, near)
