"""A small TCP proxy that puts network faults between a cache and a real server.

toxiproxy is not installable here, so the fault suite brings its own: one thread accepts,
two threads per connection pump bytes, and the fault is switched at runtime. It runs in a
process of its own, as a real network hop would: in the test's process its threads would
compete for the GIL with a busy event loop and add delays of their own. Every switch is a
message to that process, answered once it took effect::

    with FaultProxy(server.port) as proxy:
        cache = Cache.from_url(proxy.url)
        proxy.delay(0.05)        # every chunk, either way, arrives 50 ms late
        proxy.stall()            # black hole: connections are accepted, nothing is forwarded
        proxy.slow(20_000)       # at most 20 kB/s each way, per connection
        proxy.refuse()           # new connections are reset at once; open ones are cut
        proxy.cut()              # reset the open connections now (a dropped link)
        proxy.heal()             # back to a plain pipe

A stalled connection holds its bytes, as a partitioned link does: when healed they are
delivered (the client will usually have timed out and closed the socket by then).
Connections are reset (``SO_LINGER`` 0), never closed politely, so the client sees what a
crashed peer or a middlebox drop looks like.
"""

from __future__ import annotations

import multiprocessing
import select
import socket
import struct
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

__all__ = ["FaultProxy"]

_POLL = 0.02  # how often a pump looks at the fault switches
_CHUNK = 65536


def _reset(sock: socket.socket) -> None:
    """Close *sock* with a TCP RST (linger 0) rather than a FIN."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


class _Link:
    """One client connection and its upstream socket."""

    def __init__(self, client: socket.socket) -> None:
        self.client = client
        self.upstream: socket.socket | None = None
        self.closed = threading.Event()

    def close(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        _reset(self.client)
        if self.upstream is not None:
            _reset(self.upstream)


class _Proxy:
    """The proxy itself (in the proxy process)."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=1024)
        self._listener.settimeout(_POLL)
        self.port: int = self._listener.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._delay = 0.0
        self._rate: float | None = None  # bytes per second per direction, None: unlimited
        self._stalled = False
        self._refusing = False
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._links: set[_Link] = set()
        self.accepted = 0  # connections accepted in total (a reconnect storm shows here)
        self._acceptor = threading.Thread(target=self._accept, name="faultproxy", daemon=True)
        self._acceptor.start()

    # -- the switches ------------------------------------------------------------------------
    def delay(self, seconds: float) -> None:
        """Hold every chunk *seconds* before forwarding it (both directions)."""
        self._delay = seconds

    def stall(self) -> None:
        """Black hole: accept connections, forward nothing either way, until :meth:`heal`."""
        self._stalled = True

    def slow(self, bytes_per_second: float) -> None:
        """Forward at most *bytes_per_second* per direction and connection."""
        self._rate = bytes_per_second

    def refuse(self) -> None:
        """Reset new connections at once and cut the open ones (the server is gone)."""
        self._refusing = True
        self.cut()

    def cut(self) -> None:
        """Reset every open connection now; new ones are accepted as usual."""
        with self._lock:
            links = list(self._links)
        for link in links:
            link.close()

    def heal(self) -> None:
        """No faults: a plain pipe again."""
        self._delay, self._rate, self._stalled, self._refusing = 0.0, None, False, False

    @property
    def open_connections(self) -> int:
        with self._lock:
            return len(self._links)

    # -- the machinery -----------------------------------------------------------------------
    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            if self._refusing:
                _reset(client)
                continue
            link = _Link(client)
            with self._lock:
                self._links.add(link)
            threading.Thread(target=self._serve, args=(link,), daemon=True).start()

    def _serve(self, link: _Link) -> None:
        """Connect upstream (once not stalled: a black hole forwards not even the SYN),
        then pump both ways until either side closes or the link is cut."""
        try:
            while self._stalled and not link.closed.is_set() and not self._stop.is_set():
                time.sleep(_POLL)
            if link.closed.is_set() or self._stop.is_set():
                return
            try:
                link.upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                return
            link.upstream.settimeout(None)
            back = threading.Thread(
                target=self._pump, args=(link, link.upstream, link.client), daemon=True
            )
            back.start()
            self._pump(link, link.client, link.upstream)
            back.join()
        finally:
            link.close()
            with self._lock:
                self._links.discard(link)

    def _pump(self, link: _Link, src: socket.socket, dst: socket.socket) -> None:
        while not link.closed.is_set() and not self._stop.is_set():
            if self._stalled:
                time.sleep(_POLL)
                continue
            try:
                ready, _, _ = select.select([src], [], [], _POLL)
            except (OSError, ValueError):
                break
            if not ready:
                continue
            rate = self._rate
            try:
                data = src.recv(_CHUNK if rate is None else max(1, min(_CHUNK, int(rate / 20))))
            except OSError:
                break
            if not data:
                break
            if self._delay:
                time.sleep(self._delay)
            while self._stalled and not link.closed.is_set():  # stalled mid-flight: hold it
                time.sleep(_POLL)
            try:
                dst.sendall(data)
            except OSError:
                break
            if rate is not None:
                time.sleep(len(data) / rate)
        link.close()

    def close(self) -> None:
        """Stop accepting and reset every connection."""
        self._stop.set()
        self._acceptor.join()
        self._listener.close()
        self.cut()


def _main(target: tuple[str, int], conn: Connection) -> None:
    """The proxy process: run the proxy, obey the switches sent down *conn*."""
    proxy = _Proxy(target[1], target[0])
    conn.send(proxy.port)
    while True:
        try:
            name, args = conn.recv()
        except EOFError:
            name, args = "close", ()
        if name in ("accepted", "open_connections"):
            conn.send(getattr(proxy, name))
            continue
        getattr(proxy, name)(*args)
        if name == "close":
            conn.send(None)
            return
        conn.send(None)


class FaultProxy:
    """Forwards 127.0.0.1:<port> to the server at *target_port* (from a process of its
    own); faults switch at runtime. See the module's docstring."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._process = ctx.Process(
            target=_main, args=((target_host, target_port), child), daemon=True
        )
        self._process.start()
        child.close()
        self.port: int = self._conn.recv()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._lock = threading.Lock()

    def _ask(self, name: str, *args: Any) -> Any:
        with self._lock:
            self._conn.send((name, args))
            return self._conn.recv()

    def delay(self, seconds: float) -> None:
        """Hold every chunk *seconds* before forwarding it (both directions)."""
        self._ask("delay", seconds)

    def stall(self) -> None:
        """Black hole: accept connections, forward nothing either way, until :meth:`heal`."""
        self._ask("stall")

    def slow(self, bytes_per_second: float) -> None:
        """Forward at most *bytes_per_second* per direction and connection."""
        self._ask("slow", bytes_per_second)

    def refuse(self) -> None:
        """Reset new connections at once and cut the open ones (the server is gone)."""
        self._ask("refuse")

    def cut(self) -> None:
        """Reset every open connection now; new ones are accepted as usual."""
        self._ask("cut")

    def heal(self) -> None:
        """No faults: a plain pipe again."""
        self._ask("heal")

    @property
    def accepted(self) -> int:
        """Connections accepted in total (a reconnect storm shows here)."""
        return int(self._ask("accepted"))

    @property
    def open_connections(self) -> int:
        return int(self._ask("open_connections"))

    def close(self) -> None:
        """Stop the proxy process; every connection through it is reset."""
        if self._process.is_alive():
            try:
                self._ask("close")
            except (OSError, EOFError):
                pass
            self._process.join(5)
            if self._process.is_alive():
                self._process.kill()
        self._conn.close()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
