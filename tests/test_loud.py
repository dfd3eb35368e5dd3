"""Issue 9 items 5 and 16 on real servers: what counts toward the circuit breaker, and a
misconfigured or unreachable Redis is said out loud (log, ``health()``, ``stats()``).

* an error reply about one key (``WRONGTYPE``) fails that call open and leaves the breaker
  closed, so every other key stays cached;
* connection errors, timeouts and server states (LOADING, READONLY, ...) are outages; OOM
  refuses writes only;
* a wrong password, DB index, TLS mismatch or host is logged once at WARNING with the fix,
  and ``ping()`` / ``health()`` say it; the breaker's opening and closing are logged.
"""

from __future__ import annotations

import functools
import logging
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
import redis
from redis._parsers.base import BaseParser

import hitrate
from hitrate import AsyncCache, Breaker, Cache
from hitrate.errors import CommandRefusedError, MisconfiguredError, translate
from hitrate.health import Health
from hitrate.server import EmbeddedServer, find_servers, free_port
from hitrate.testing import FakeClock

FLAVOURS = sorted(find_servers())
FLAVOUR = os.environ.get("HITRATE_TEST_SERVER") or (FLAVOURS[0] if FLAVOURS else "")
needs_server = pytest.mark.skipif(not FLAVOUR, reason="no redis-server or valkey-server")


def warnings_about(caplog: pytest.LogCaptureFixture, words: str) -> list[str]:
    """The hitrate WARNING lines that announce *words* (not the breaker's line quoting it)."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "hitrate"
        and r.levelno == logging.WARNING
        and words in r.getMessage()
        and "circuit breaker" not in r.getMessage()
    ]


@pytest.fixture
def private() -> Iterator[EmbeddedServer]:
    """A private server of its own, for tests that reconfigure it (password, replica)."""
    server = EmbeddedServer.start(FLAVOUR)
    yield server
    server.stop()


# -- item 5: breaker scope ---------------------------------------------------------------


@pytest.mark.ttl_audit_exempt  # plants a key of another type
def test_wrongtype_at_one_key_fails_that_call_open_and_keeps_other_keys_cached(
    cache: Cache, url: str, caplog: pytest.LogCaptureFixture
) -> None:
    raw = redis.Redis.from_url(url)
    raw.rpush(cache.redis_key("user:1"), "someone else's list")
    loads: list[str] = []

    def load(key: str) -> dict[str, str]:
        loads.append(key)
        return {"id": key}

    caplog.set_level(logging.WARNING, "hitrate")
    assert cache.get_or_fetch("user:2", lambda: load("user:2")) == {"id": "user:2"}
    for _ in range(3 * cache.breaker.threshold + 2):  # more than it takes to open the breaker
        assert cache.get_or_fetch("user:1", lambda: load("user:1")) == {"id": "user:1"}
    assert loads.count("user:1") == 3 * cache.breaker.threshold + 2  # the loader, each time
    for key in ("user:2", "user:3", "user:3"):  # every other key stays cached
        assert cache.get_or_fetch(key, functools.partial(load, key)) == {"id": key}
    assert loads.count("user:2") == 1 and loads.count("user:3") == 1
    assert cache.breaker.failures == 0 and cache.breaker.state == "closed"
    assert cache.counters.snapshot()["user"].errors >= 1  # counted for its family
    assert raw.type(cache.redis_key("user:1")) == b"list"  # the foreign value is not ours
    assert len(warnings_about(caplog, "WRONGTYPE")) == 1  # said once, with the fix
    assert "delete that key" in warnings_about(caplog, "WRONGTYPE")[0]
    assert cache.health().ok  # Redis itself is fine
    raw.close()


@pytest.mark.ttl_audit_exempt  # plants a key of another type
def test_wrongtype_raises_command_refused_in_strict_mode(url: str, prefix: str) -> None:
    raw = redis.Redis.from_url(url)
    with Cache.from_url(url, prefix=prefix, strict=True) as cache:
        raw.rpush(cache.redis_key("user:1"), "x")
        for _ in range(3):
            with pytest.raises(CommandRefusedError, match="WRONGTYPE") as info:
                cache.get_or_fetch("user:1", lambda: 1)
            assert isinstance(info.value, hitrate.CacheUnavailableError)
            assert not info.value.outage
        assert cache.get_or_fetch("user:2", lambda: 2) == 2  # no CircuitOpenError
        assert cache.breaker.state == "closed"
    raw.close()


@pytest.mark.ttl_audit_exempt  # plants a key of another type
async def test_async_wrongtype_leaves_the_breaker_closed(acache: AsyncCache, url: str) -> None:
    raw = redis.Redis.from_url(url)
    raw.set(acache.redis_key("user:2"), b"x")
    raw.sadd(acache.redis_key("user:1"), "a set")
    loads: list[int] = []

    def load(n: int) -> int:
        loads.append(n)
        return n

    for _ in range(6):
        assert await acache.get_or_fetch("user:1", lambda: load(1)) == 1
    raw.delete(acache.redis_key("user:2"))
    assert await acache.get_or_fetch("user:2", lambda: load(2)) == 2
    assert await acache.get_or_fetch("user:2", lambda: load(2)) == 2
    assert loads.count(2) == 1 and acache.breaker.state == "closed"
    raw.close()


@pytest.mark.parametrize(
    ("reply", "state"),
    [
        ("LOADING Redis is loading the dataset in memory", "LOADING"),
        ("READONLY You can't write against a read only replica.", "READONLY"),
        (
            "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.",
            "MASTERDOWN",
        ),
        (
            "BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN.",
            "BUSY",
        ),
        ("CLUSTERDOWN The cluster is down", "CLUSTERDOWN"),
        ("TRYAGAIN Multiple keys request during rehashing of slot", "TRYAGAIN"),
        ("NOREPLICAS Not enough good replicas to write.", "NOREPLICAS"),
        (
            "MISCONF Redis is configured to save RDB snapshots, but it's unable to persist",
            "MISCONF",
        ),
    ],
)
def test_server_states_are_outages(reply: str, state: str) -> None:
    exc = BaseParser.parse_error(reply)  # type: ignore[no-untyped-call]  # redis-py's own
    err = translate(exc, "GET 'k'", "redis://h:1/0")
    assert err is not None and err.outage and not isinstance(err, CommandRefusedError)
    assert state in err.cause and "redis://h:1/0" in err.cause


@pytest.mark.parametrize(
    "reply",
    [
        "WRONGTYPE Operation against a key holding the wrong kind of value",
        "ERR value is not an integer or out of range",
        "ERR Error running script (call to f_1): @user_script:1: user_script:1: bad argument",
    ],
)
def test_replies_about_one_command_are_not_outages(reply: str) -> None:
    exc = BaseParser.parse_error(reply)  # type: ignore[no-untyped-call]
    err = translate(exc, "GET 'k'", "redis://h:1/0")
    assert isinstance(err, CommandRefusedError) and not err.outage


def test_connection_errors_and_timeouts_are_outages() -> None:
    for exc in (redis.ConnectionError("refused"), redis.TimeoutError("timed out"), OSError(9)):
        err = translate(exc, "GET 'k'", "redis://h:1/0")
        assert err is not None and err.outage


@needs_server
def test_readonly_replica_is_an_outage_that_opens_the_breaker(
    private: EmbeddedServer, caplog: pytest.LogCaptureFixture
) -> None:
    primary = EmbeddedServer.start(FLAVOUR)
    admin = redis.Redis.from_url(private.url)
    try:
        admin.replicaof("127.0.0.1", primary.port)
        caplog.set_level(logging.WARNING, "hitrate")
        with Cache.from_url(private.url, prefix="ro", breaker=Breaker(2, cooldown=60)) as cache:
            with pytest.raises(redis.ReadOnlyError):
                admin.set("probe", 1)  # the server really refuses writes now
            for n in range(4):
                assert cache.get_or_fetch(f"user:{n}", lambda: "loaded") == "loaded"
                cache.set(f"user:{n}", "v")
            assert cache.breaker.state == "open"
            assert cache.breaker.cause is not None and "READONLY" in cache.breaker.cause
            opened = [r.getMessage() for r in caplog.records if "breaker open" in r.getMessage()]
            assert len(opened) == 1 and "read-only replica" in opened[0]
    finally:
        admin.close()
        primary.stop()


@pytest.mark.parametrize(
    "reply",
    [
        "OOM command not allowed when used memory > 'maxmemory'.",
        "ERR Error running script (call to f_1): @user_script:1: OOM command not allowed",
    ],
)
def test_out_of_memory_refuses_writes_but_is_no_outage(reply: str) -> None:
    exc = BaseParser.parse_error(reply)  # type: ignore[no-untyped-call]
    err = translate(exc, "SET 'k'", "redis://h:1/0")
    assert isinstance(err, CommandRefusedError) and not err.outage
    assert not err.refused  # owed work is kept and retried: memory may be freed
    assert "out of memory" in err.cause and "maxmemory" in err.cause


@needs_server
def test_out_of_memory_writes_fail_open_while_hits_go_on(
    private: EmbeddedServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Under noeviction with maxmemory reached, writes are refused but reads work: the
    breaker stays closed (hits are still served) and the cause is logged once."""
    admin = redis.Redis.from_url(private.url)
    try:
        with Cache.from_url(private.url, prefix="oom") as cache:
            cache.set("user:0", "cached before")
            admin.config_set("maxmemory-policy", "noeviction")
            admin.config_set("maxmemory", 1)
            with caplog.at_level(logging.WARNING, logger="hitrate"):
                for i in range(5):
                    assert cache.set(f"user:{i + 1}", "v") is False
                    assert cache.get("user:0") == "cached before"
            assert cache.breaker.failures == 0 and not cache.breaker.is_open
            said = [r.getMessage() for r in caplog.records if "out of memory" in r.getMessage()]
            assert len(said) == 1 and "maxmemory" in said[0]
    finally:
        admin.config_set("maxmemory", 0)
        admin.close()


# -- item 16: loud, not silent -------------------------------------------------------------


def misconfigured(url: str, timeout: float = 0.25) -> Cache:
    # cooldown 0: every call probes and fails again, yet the cause is logged once
    return Cache.from_url(
        url, prefix="loud", breaker=Breaker(2, cooldown=0), timeout=timeout, connect_timeout=timeout
    )


def check_loud(
    cache: Cache, caplog: pytest.LogCaptureFixture, words: str, fix: str, calls: int = 8
) -> Health:
    caplog.set_level(logging.INFO, "hitrate")
    for n in range(calls):
        assert cache.get_or_fetch(f"user:{n % 3}", lambda: "loaded") == "loaded"  # fail-open
    said = warnings_about(caplog, words)
    assert len(said) == 1, said  # once, not once per call or per probe
    assert fix in said[0]
    opened = [r for r in caplog.records if "circuit breaker open" in r.getMessage()]
    assert len(opened) == 1 and opened[0].levelno == logging.WARNING
    assert cache.ping() is False
    health = cache.health()
    assert not health.ok and health.error is not None
    assert words in health.error and fix in health.error
    assert health.breaker in ("open", "half-open") and health.latency_ms is None
    return health


@needs_server
def test_wrong_password_is_logged_once_and_again_after_recovery(
    private: EmbeddedServer, caplog: pytest.LogCaptureFixture
) -> None:
    admin = redis.Redis.from_url(private.url)
    admin.config_set("requirepass", "secret")
    admin.auth("secret")
    url = f"redis://:wrong@127.0.0.1:{private.port}/0"
    with misconfigured(url) as cache:
        health = check_loud(
            cache, caplog, "wrong password", "check the URL's user name and password"
        )
        assert "wrong" not in health.url.replace("wrong password", "")  # password masked
        # Fixed on the server: the next call closes the breaker, logged at INFO.
        admin.config_set("requirepass", "wrong")
        assert cache.get_or_fetch("user:1", lambda: "loaded") == "loaded"
        closed = [r for r in caplog.records if "breaker closed" in r.getMessage()]
        assert len(closed) == 1 and closed[0].levelno == logging.INFO
        assert cache.ping() and cache.breaker.state == "closed"
        # Broken again (a new connection must authenticate): said again, once.
        admin.config_set("requirepass", "secret")
        admin.client_kill_filter(_type="normal", skipme=True)
        for n in range(5):
            assert cache.get_or_fetch(f"user:{n}", lambda: "loaded") == "loaded"
        assert len(warnings_about(caplog, "wrong password")) == 2
    admin.config_set("requirepass", "")
    admin.close()


@needs_server
def test_missing_password_says_put_it_in_the_url(
    private: EmbeddedServer, caplog: pytest.LogCaptureFixture
) -> None:
    admin = redis.Redis.from_url(private.url)
    admin.config_set("requirepass", "secret")
    with misconfigured(private.url) as cache:
        check_loud(cache, caplog, "requires a password", "put it in the URL")
    admin.close()


def test_db_index_out_of_range(url: str, caplog: pytest.LogCaptureFixture) -> None:
    with misconfigured(url.rsplit("/", 1)[0] + "/99") as cache:
        health = check_loud(cache, caplog, "DB index 99 is out of range", "end of the URL")
        assert health.url.endswith("/99")


@needs_server
def test_tls_to_a_plain_server(url: str, caplog: pytest.LogCaptureFixture) -> None:
    tls_url = url.replace("redis://", "rediss://")
    with misconfigured(tls_url, timeout=0.1) as cache:
        check_loud(cache, caplog, "TLS handshake", "use redis:// instead of rediss://", calls=4)


def test_unknown_host(caplog: pytest.LogCaptureFixture) -> None:
    with misconfigured("redis://no-such-host.invalid:6379/0") as cache:
        check_loud(cache, caplog, "unknown host 'no-such-host.invalid'", "check the URL's host")


def test_misconfiguration_raises_misconfigured_error_in_strict_mode(url: str) -> None:
    with Cache.from_url(url.rsplit("/", 1)[0] + "/99", prefix="loud", strict=True) as cache:
        with pytest.raises(MisconfiguredError, match="DB index 99"):
            cache.get("user:1")


def test_breaker_logs_opening_once_and_closing(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    breaker = Breaker(threshold=2, cooldown=1.0, clock=clock)
    caplog.set_level(logging.INFO, "hitrate")
    for _ in range(2):
        breaker.failure("Redis is unreachable at redis://h:1/0 (refused)")
    assert breaker.state == "open" and breaker.failures == 2
    clock.advance(1.0)
    assert breaker.allow() and breaker.state == "half-open"
    breaker.failure("Redis is unreachable at redis://h:1/0 (refused)")  # the probe failed
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert "refused" in caplog.records[0].getMessage()
    assert breaker.success() and breaker.state == "closed" and breaker.cause is None
    assert [r.levelno for r in caplog.records] == [logging.WARNING, logging.INFO]


def test_health_of_a_working_cache(cache: Cache, url: str) -> None:
    assert cache.ping() is True
    health = cache.health()
    assert health.ok and health.error is None and health.url == url
    assert health.breaker == "closed" and health.failures == 0 and health.owed == 0
    assert health.latency_ms is not None and health.latency_ms >= 0
    assert health.as_dict()["ok"] is True and "healthy" in str(health)


async def test_async_health(acache: AsyncCache) -> None:
    assert await acache.ping() is True
    assert (await acache.health()).ok
    down = AsyncCache.from_url(f"redis://127.0.0.1:{free_port()}/0", prefix="loud")
    try:
        assert await down.ping() is False
        health = await down.health()
        assert not health.ok and health.error is not None and "unreachable" in health.error
    finally:
        await down.close()


def test_health_counts_owed_invalidations() -> None:
    cache = Cache.from_url(f"redis://127.0.0.1:{free_port()}/0", prefix="loud", flush_interval=0)
    try:
        cache.invalidate("user:1", "user:2")
        health = cache.health()
        assert not health.ok and health.owed == 2
    finally:
        cache.close()


# -- stats() with Redis unreachable ---------------------------------------------------------


def test_stats_say_redis_is_unreachable_at_the_url() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    for warm in (False, True):  # a fresh cache, and one whose breaker is already open
        cache = Cache.from_url(url, prefix="down", flush_interval=0)
        try:
            if warm:
                for n in range(3):
                    assert cache.get_or_fetch(f"user:{n}", lambda: 1) == 1
                assert cache.breaker.is_open
            with pytest.raises(hitrate.CacheUnavailableError) as info:
                cache.stats()
            assert f"Redis is unreachable at {url}" in str(info.value)
        finally:
            cache.close()


async def test_async_stats_say_redis_is_unreachable_at_the_url() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    cache = AsyncCache.from_url(url, prefix="down", flush_interval=0)
    try:
        assert await cache.get_or_fetch("user:1", lambda: 1) == 1
        with pytest.raises(hitrate.CacheUnavailableError, match=f"unreachable at {url}"):
            await cache.stats()
    finally:
        await cache.close()


def test_cli_stats_on_a_misconfigured_url_is_one_line(url: str) -> None:
    bad = url.rsplit("/", 1)[0] + "/99"
    out = subprocess.run(
        [sys.executable, "-m", "hitrate", "stats", "--url", bad],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 1 and "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "DB index 99 is out of range" in lines[0], lines
