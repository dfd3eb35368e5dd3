"""Auth, ACLs and TLS on private servers: the ways a cache can connect, and the ways it
can be misconfigured, each said once, out loud, with the cause (never a cache that
quietly serves everything uncached).

Wrong password, missing password, DB index out of range and ``rediss://`` to a plain
server are in test_loud.py; this file adds ACL users (full, without ``@scripting``,
without ``SCAN``), TLS with a self-signed CA generated at test time, and plain
``redis://`` to a TLS-only port.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from hitrate import Breaker, Cache
from hitrate.server import free_port

from .faultservers import FLAVOUR, Managed

pytestmark = pytest.mark.skipif(not FLAVOUR, reason="no redis-server or valkey-server")


@pytest.fixture(scope="module")
def acl_server() -> Iterator[Managed]:
    server = Managed.start(extra_args=("--requirepass", "adminpw"))
    with server.admin(password="adminpw") as admin:
        admin.acl_setuser("full", enabled=True, passwords=["+fullpw"], keys=["*"],
                          commands=["+@all"])  # fmt: skip
        admin.acl_setuser("noscript", enabled=True, passwords=["+pw"], keys=["*"],
                          commands=["+@all", "-@scripting"])  # fmt: skip
        admin.acl_setuser("noscan", enabled=True, passwords=["+pw"], keys=["*"],
                          commands=["+@all", "-scan"])  # fmt: skip
    yield server
    server.stop()


def hitrate_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "hitrate" and r.levelno >= logging.WARNING
    ]


def test_password_and_acl_users_connect_and_hit(acl_server: Managed) -> None:
    for url in (
        f"redis://:adminpw@127.0.0.1:{acl_server.port}/0",
        f"redis://full:fullpw@127.0.0.1:{acl_server.port}/0",
    ):
        with Cache.from_url(url, prefix="auth", flush_interval=0) as cache:
            assert cache.get_or_fetch("user:1", lambda: {"n": 1}) == {"n": 1}
            assert cache.get_or_fetch("user:1", lambda: {"n": 2}) == {"n": 1}  # a hit
            assert cache.invalidate_pattern("user:*") >= 1
            assert cache.health().ok
            assert cache.counters.total().hits == 1


def test_acl_user_without_scripting_is_said_once(
    acl_server: Managed, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "hitrate")
    url = f"redis://noscript:pw@127.0.0.1:{acl_server.port}/0"
    with Cache.from_url(url, prefix="auth", breaker=Breaker(2, 0), flush_interval=0) as cache:
        for n in range(6):
            assert cache.get_or_fetch(f"user:{n % 2}", lambda: "loaded") == "loaded"
        said = [m for m in hitrate_warnings(caplog) if "lacks a permission" in m]
        print(f"\n[fault figures] no @scripting: {said}")
        assert len(said) == 1 and "NOPERM" in said[0] and "ACL SETUSER" in said[0]
        assert cache.counters.total().errors >= 6  # every refused fill is counted


def test_acl_user_without_scan_is_said_when_pattern_invalidation_fails(
    acl_server: Managed, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "hitrate")
    url = f"redis://noscan:pw@127.0.0.1:{acl_server.port}/0"
    with Cache.from_url(url, prefix="auth", flush_interval=0) as cache:
        assert cache.get_or_fetch("user:1", lambda: "v") == "v"
        cache.invalidate_pattern("user:*")
        said = [m for m in hitrate_warnings(caplog) if "NOPERM" in m or "permission" in m]
        print(f"\n[fault figures] no SCAN: {said}")
        assert said and "scan" in said[0].lower()


# -- TLS ------------------------------------------------------------------------------------


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Managed, int, Path]]:
    """A server with a TLS-only port and a certificate from a CA made here; skipped with
    a message where openssl or the server's TLS support is missing."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl not found: cannot make a test CA")
    d = tmp_path_factory.mktemp("tls")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
             "/CN=hitrate test CA", "-keyout", "ca.key", "-out", "ca.crt", cwd=d)  # fmt: skip
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
             "-keyout", "server.key", "-out", "server.csr", cwd=d)  # fmt: skip
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "2", "-extfile", "san.ext",
             "-out", "server.crt", cwd=d)  # fmt: skip
    tls_port = free_port()
    try:
        server = Managed.start(
            extra_args=(
                "--tls-port",
                str(tls_port),
                "--tls-cert-file",
                str(d / "server.crt"),
                "--tls-key-file",
                str(d / "server.key"),
                "--tls-ca-cert-file",
                str(d / "ca.crt"),
                "--tls-auth-clients",
                "no",
            )
        )
    except AssertionError as exc:
        pytest.skip(f"this {FLAVOUR}-server has no TLS support: {str(exc)[-200:]}")
    yield server, tls_port, d
    server.stop()


def test_rediss_with_a_private_ca_connects_and_hits(tls_server: tuple[Managed, int, Path]) -> None:
    _server, port, d = tls_server
    url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={d / 'ca.crt'}&ssl_cert_reqs=required"
    with Cache.from_url(url, prefix="tls", timeout=1, connect_timeout=1) as cache:
        assert cache.get_or_fetch("user:1", lambda: "v") == "v"
        assert cache.get_or_fetch("user:1", lambda: "w") == "v"
        health = cache.health()
        assert health.ok and health.url.startswith("rediss://")
        assert cache.counters.total().hits == 1


def test_rediss_without_the_ca_is_said_once(
    tls_server: tuple[Managed, int, Path], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "hitrate")
    _server, port, _d = tls_server
    url = f"rediss://127.0.0.1:{port}/0"  # the system's CAs do not know ours
    with Cache.from_url(url, prefix="tls", breaker=Breaker(2, 0), timeout=1) as cache:
        for n in range(5):
            assert cache.get_or_fetch(f"user:{n}", lambda: "loaded") == "loaded"
        said = [m for m in hitrate_warnings(caplog) if "circuit breaker" not in m]
        print(f"\n[fault figures] rediss:// without the CA: {said}")
        assert len(said) == 1 and "certificate" in said[0].lower()
        assert not cache.health().ok


def test_plain_redis_to_a_tls_port_is_said_once(
    tls_server: tuple[Managed, int, Path], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "hitrate")
    _server, port, _d = tls_server
    url = f"redis://127.0.0.1:{port}/0"
    with Cache.from_url(url, prefix="tls", breaker=Breaker(2, 0), timeout=0.2) as cache:
        for n in range(5):
            assert cache.get_or_fetch(f"user:{n}", lambda: "loaded") == "loaded"
        said = [m for m in hitrate_warnings(caplog) if "circuit breaker" not in m]
        print(f"\n[fault figures] redis:// to a TLS port: {said}")
        # Not a misconfiguration for sure (a reset is also what a restart looks like),
        # so it is an outage: the breaker's one WARNING says to try rediss://.
        assert said == []
        opened = [m for m in hitrate_warnings(caplog) if "circuit breaker open" in m]
        assert len(opened) == 1 and "use rediss://" in opened[0]
        assert not cache.health().ok
