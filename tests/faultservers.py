"""A private server the fault suite can kill, pause and restart on the same port.

:class:`hitrate.server.EmbeddedServer` picks a new free port at every start, which a cache
cannot follow; :class:`Managed` keeps its port and working directory, so a restart is the
same server as far as a client is concerned::

    srv = Managed.start()
    srv.kill()               # SIGKILL: no goodbye, no snapshot (restarted empty)
    srv.start_again()
    srv.pause(); srv.resume()   # SIGSTOP / SIGCONT: a hung server, sockets stay open
    srv.restart(keep_data=True) # SAVE, stop, start from the snapshot
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence

import redis

from hitrate.server import find_servers, free_port

__all__ = ["FLAVOUR", "Managed"]

FLAVOURS = sorted(find_servers())
FLAVOUR = os.environ.get("HITRATE_TEST_SERVER") or (FLAVOURS[0] if FLAVOURS else "")


class Managed:
    """A redis-server (or valkey-server) on a fixed loopback port, under the test's control."""

    def __init__(self, flavour: str, extra_args: Sequence[str] = ()) -> None:
        self.binary = find_servers()[flavour]
        self.flavour = flavour
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.workdir = tempfile.mkdtemp(prefix="hitrate-faults-")
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def start(cls, flavour: str = "", extra_args: Sequence[str] = ()) -> Managed:
        server = cls(flavour or FLAVOUR, extra_args)
        server.start_again()
        return server

    def start_again(self, timeout: float = 10.0) -> None:
        """Start the process (after :meth:`kill` or :meth:`stop`); waits until it answers."""
        args = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", self.workdir, "--dbfilename", "dump.rdb",
            "--daemonize", "no", "--loglevel", "warning", *self.extra_args,
        ]  # fmt: skip
        log = open(os.path.join(self.workdir, "server.log"), "ab")
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, f"server exited: {self.log_tail()}"
            try:
                with redis.Redis(port=self.port, socket_timeout=0.5) as probe:
                    probe.ping()
                return
            except redis.AuthenticationError:
                return  # requirepass: it answers
            except redis.RedisError:
                assert time.monotonic() < deadline, f"server did not start: {self.log_tail()}"
                time.sleep(0.02)

    def log_tail(self) -> str:
        with open(os.path.join(self.workdir, "server.log"), errors="replace") as f:
            return f.read()[-800:]

    def admin(self, **kwargs: object) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=5, **kwargs)  # type: ignore[arg-type]

    def kill(self) -> None:
        """SIGKILL: the data in memory is lost (no snapshot is taken)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        dump = os.path.join(self.workdir, "dump.rdb")
        if os.path.exists(dump):
            os.unlink(dump)  # restarted empty, even after an earlier restart with data

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def restart(self, *, keep_data: bool = True, down: float = 0.0) -> None:
        """Stop (after SAVE when *keep_data*), stay down *down* seconds, start again."""
        assert self.proc is not None
        if keep_data:
            with self.admin() as admin:
                admin.save()
        self.proc.terminate()
        self.proc.wait(10)
        time.sleep(down)
        self.start_again()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a paused server cannot handle SIGTERM
            self.proc.kill()
            self.proc.wait(10)
        subprocess.run(["rm", "-rf", self.workdir], check=False)
