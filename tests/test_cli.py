"""The ``hitrate`` command, run as a subprocess against real servers: output and exit codes."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis

from hitrate import Cache


def hitrate(*args: str, env: dict[str, str] | None = None, timeout: float = 30) -> Any:
    """Run ``python -m hitrate ARGS`` with a clean Redis environment."""
    base = {k: v for k, v in os.environ.items() if k not in ("HITRATE_REDIS_URL", "REDIS_URL")}
    base.update({"COLUMNS": "200", "HITRATE_PREFIX": "unused-prefix"}, **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "hitrate", *args],
        check=False,
        capture_output=True,
        text=True,
        env=base,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture
def filled(url: str, prefix: str) -> str:
    """user: 2 misses, 6 hits (75 %); config: 1 miss, 19 hits (95 %); 89.29 % in all. Flushed."""
    with Cache.from_url(url, prefix=prefix) as cache:
        for key in ("user:1", "user:2"):
            cache.get_or_fetch(key, lambda: {"name": "Ada"})
        for _ in range(3):
            cache.get("user:1")
            cache.get("user:2")
        cache.get_or_fetch("config:site", lambda: {"theme": secrets.token_urlsafe(4000)})
        for _ in range(19):
            cache.get("config:site")
    return prefix


@pytest.fixture
def busy(url: str, prefix: str) -> str:
    """user: 25 misses, 75 hits (75 %); config: 5 misses, 95 hits (95 %); 85 % in all."""
    with Cache.from_url(url, prefix=prefix) as cache:
        for key in ("user:1", "user:2"):
            cache.get_or_fetch(key, lambda: {"name": "Ada"})
        for i in range(23):
            cache.get(f"user:absent:{i}")
        for i in range(75):
            cache.get(f"user:{i % 2 + 1}")
        cache.get_or_fetch("config:site", lambda: {"theme": secrets.token_urlsafe(4000)})
        for i in range(4):
            cache.get(f"config:absent:{i}")
        for _ in range(95):
            cache.get("config:site")
    return prefix


def test_stats_table_and_json(url: str, busy: str) -> None:
    out = hitrate("stats", "--url", url, "--prefix", busy)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "hit rate" in text and "85.00 %" in text and "target" in text
    for expected in ("user", "75.00 %", "working", "config", "95.00 %", "memory"):
        assert expected in text
    out = hitrate("stats", "--url", url, "--prefix", busy, "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert (doc["hit_rate"], doc["hits"], doc["misses"]) == (85.0, 170, 30)
    rows = {row["family"]: row for row in doc["families"]}
    assert rows["user"]["verdict"] == "working" and rows["config"]["verdict"] == "target"
    assert rows["config"]["keys"] == 1


def test_few_reads_get_no_verdict(url: str, filled: str) -> None:
    out = hitrate("stats", "--url", url, "--prefix", filled, "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert (doc["hits"], doc["misses"], doc["verdict"]) == (25, 3, "too few reads")
    assert {row["verdict_level"] for row in doc["families"]} == {"too_few"}
    out = hitrate("stats", "--url", url, "--prefix", filled)
    assert "89.29 %" in out.stdout and "too few reads" in out.stdout


def test_url_from_the_environment(url: str, filled: str) -> None:
    out = hitrate("stats", "--json", env={"REDIS_URL": url, "HITRATE_PREFIX": filled})
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["hits"] == 25
    # HITRATE_REDIS_URL wins over REDIS_URL
    dead = "redis://127.0.0.1:1/0"
    env = {"HITRATE_REDIS_URL": url, "REDIS_URL": dead, "HITRATE_PREFIX": filled}
    out = hitrate("stats", "--json", env=env)
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize(
    "command", ["stats", "keys --family user", "bigkeys", "invalidate x:* --yes"]
)
def test_unreachable_server_is_one_line_and_exit_1(command: str) -> None:
    out = hitrate(*command.split(), "--url", "redis://:secret@127.0.0.1:1/0")
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hitrate: cannot reach Redis at redis://")
    assert "secret" not in out.stderr  # the password is masked


def test_bad_usage_exits_2() -> None:
    assert hitrate("keys").returncode == 2  # --family is required
    assert hitrate("no-such-command").returncode == 2
    out = hitrate("--help")
    assert out.returncode == 0 and "invalidate" in out.stdout and "dashboard" in out.stdout


def test_invalidate_counts_first_and_escapes_nothing(url: str, prefix: str) -> None:
    with Cache.from_url(url, prefix=prefix) as cache:
        for key in ("user:1:cart", "user:2:cart", "user:*:cart", "config:site"):
            cache.set(key, 1)
        out = hitrate("invalidate", "user:*", "--url", url, "--prefix", prefix, "--dry-run")
        assert out.returncode == 0, out.stderr
        assert "3 entries match 'user:*'" in out.stdout and "nothing deleted" in out.stdout
        assert cache.get("user:1:cart") == 1  # dry run
        # a backslash makes * literal: only the user literally named "*"
        out = hitrate("invalidate", r"user:\*:*", "--url", url, "--prefix", prefix, "--yes")
        assert out.returncode == 0, out.stderr
        assert "invalidated 1 entry" in out.stdout
        assert cache.get("user:*:cart") is None and cache.get("user:1:cart") == 1
        out = hitrate("invalidate", "user:*", "--url", url, "--prefix", prefix, "-y")
        assert "invalidated 2 entries" in out.stdout
        assert cache.get("user:2:cart") is None and cache.get("config:site") == 1
    help_text = hitrate("invalidate", "--help").stdout
    assert "escape_glob" in help_text and "backslash" in help_text


def test_invalidate_without_yes_and_without_a_terminal_refuses(url: str, prefix: str) -> None:
    with Cache.from_url(url, prefix=prefix) as cache:
        cache.set("user:1", 1)
        out = hitrate("invalidate", "user:*", "--url", url, "--prefix", prefix)  # stdin: /dev/null
        assert out.returncode == 2
        assert out.stderr.strip() == (
            "hitrate: invalidate asks for confirmation and stdin is not a terminal: "
            "add --yes to invalidate, or --dry-run to count the matches first"
        )
        assert cache.get("user:1") == 1


def on_a_terminal(args: list[str], answer: str) -> Any:
    """Run ``python -m hitrate ARGS`` with a terminal as stdin, typing *answer* into it."""
    master, slave = os.openpty()
    env = {k: v for k, v in os.environ.items() if k not in ("HITRATE_REDIS_URL", "REDIS_URL")}
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "hitrate", *args],
            stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        os.close(slave)
        os.write(master, answer.encode())
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        os.close(master)
    return subprocess.CompletedProcess(args, proc.returncode, stdout, stderr)


def test_invalidate_asks_for_confirmation_on_a_terminal(url: str, prefix: str) -> None:
    with Cache.from_url(url, prefix=prefix) as cache:
        cache.set("user:1", 1)
        args = ["invalidate", "user:*", "--url", url, "--prefix", prefix]
        out = on_a_terminal(args, "n\n")
        assert out.returncode == 0, out.stderr
        assert f"Invalidate every entry matching 'user:*' under prefix {prefix!r}" in out.stdout
        assert "nothing deleted" in out.stdout and cache.get("user:1") == 1
        out = on_a_terminal(args, "y\n")
        assert out.returncode == 0, out.stderr
        assert "invalidated 1 entry" in out.stdout and cache.get("user:1") is None


def _scans(url: str) -> int:
    client = redis.Redis.from_url(url)
    try:
        return int(client.info("commandstats").get("cmdstat_scan", {}).get("calls", 0))
    finally:
        client.close()


def test_invalidate_scans_once(url: str, prefix: str) -> None:
    with Cache.from_url(url, prefix=prefix) as cache:
        cache.set_many({f"user:{i}": i for i in range(50)})
        before = _scans(url)
        assert cache.invalidate_pattern("user:*") == 50
        one_pass = _scans(url) - before  # SCAN calls of one invalidate_pattern
        cache.set_many({f"user:{i}": i for i in range(50)})
        before = _scans(url)
        out = hitrate("invalidate", "user:*", "--url", url, "--prefix", prefix, "--yes")
        assert out.returncode == 0, out.stderr
        assert "invalidated 50 entries" in out.stdout
        assert _scans(url) - before == one_pass  # not once to count and once to delete


def test_keys_and_bigkeys(url: str, filled: str) -> None:
    out = hitrate("keys", "--family", "user", "--url", url, "--prefix", filled, "--json")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert sorted(r["key"] for r in rows) == ["user:1", "user:2"]
    assert all(r["memory_bytes"] > 0 and r["ttl"] > 0 for r in rows)
    out = hitrate("keys", "-f", "user", "--sample", "1", "--url", url, "--prefix", filled)
    assert out.returncode == 0 and out.stdout.count("user:") == 1
    out = hitrate("keys", "-f", "nobody", "--url", url, "--prefix", filled)
    assert out.returncode == 0 and "no entries in family 'nobody'" in out.stdout
    out = hitrate("bigkeys", "--top", "2", "--url", url, "--prefix", filled, "--json")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert rows[0]["key"] == "config:site" and rows[0]["type"] == "string"
    assert len(rows) == 2 and rows[0]["memory_bytes"] >= rows[1]["memory_bytes"]
    out = hitrate("bigkeys", "--url", url, "--prefix", filled)
    assert out.returncode == 0 and "config:site" in out.stdout


def test_key_names_print_as_they_are(url: str, prefix: str) -> None:
    names = ["user:[/]y", "user:[bold]x", "user:ok:1", "user:[link=x]z"]
    with Cache.from_url(url, prefix=prefix) as cache:
        for name in names:
            cache.set(name, "v" * 10)
    for command in (["keys", "--family", "user"], ["bigkeys"]):
        out = hitrate(*command, "--url", url, "--prefix", prefix)
        assert out.returncode == 0, out.stderr  # no MarkupError
        for name in names:
            assert name in out.stdout  # user:ok:1 is not an emoji, [bold] is not markup
    with Cache.from_url(url, prefix=prefix) as cache:  # families from the counters
        cache.get_or_fetch("[/]x:1", lambda: 1)
        cache.get_or_fetch("[red]fam:1", lambda: 1)
    out = hitrate("stats", "--url", url, "--prefix", prefix)
    assert out.returncode == 0, out.stderr
    assert "[/]x" in out.stdout and "[red]fam" in out.stdout


def test_control_characters_in_key_names_are_shown_escaped(url: str, prefix: str) -> None:
    """A key name cannot inject terminal escapes (colours, cursor moves) or forge rows."""
    with Cache.from_url(url, prefix=prefix) as cache:
        cache.set("t:\x1b[31mred", 1)
        cache.set("t:two\nlines", 1)
    for command in (["keys", "-f", "t"], ["bigkeys"], ["invalidate", "t:*", "--dry-run"]):
        out = hitrate(*command, "--url", url, "--prefix", prefix)
        assert out.returncode == 0, out.stderr
        assert "\x1b" not in out.stdout  # no raw ESC reaches the terminal
        assert "t:\\x1b[31mred" in out.stdout
        assert "t:two\\nlines" in out.stdout


def test_help_keeps_defaults_and_bracketed_text() -> None:
    out = hitrate("stats", "--help")
    assert out.returncode == 0
    text = " ".join(out.stdout.split())
    assert "[default: $HITRATE_REDIS_URL, $REDIS_URL, redis://localhost:6379/0]" in text
    assert "default: hitrate" in text and "default: 10000" in text
    text = " ".join(hitrate("invalidate", "--help").stdout.split())
    assert "[abc] one of a set" in text and "literal * ? [ ] or" in text


def test_version() -> None:
    from hitrate import __version__

    out = hitrate("--version")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"hitrate {__version__}"


@pytest.mark.parametrize(
    "command", ["stats", "watch", "invalidate", "keys", "bigkeys", "dashboard", "demo"]
)
def test_one_url_flag_everywhere(command: str) -> None:
    out = hitrate(command, "--help")
    assert out.returncode == 0, out.stderr
    assert "-u, --url" in out.stdout and "--redis" not in out.stdout


def test_demo_keeps_redis_as_a_hidden_alias(tmp_path: Path) -> None:
    database = f"sqlite:///{tmp_path / 'shop.db'}"
    for flag in ("--url", "--redis"):
        out = hitrate(
            "demo", flag, "redis://127.0.0.1:1/0", "--database", database,
            "--no-dashboard", "--duration", "2", timeout=120,
        )  # fmt: skip
        assert out.returncode == 1, out.stderr  # understood (not 2), then Redis is unreachable
        assert "127.0.0.1:1" in out.stderr


def test_watch_refreshes_then_stops(url: str, filled: str) -> None:
    out = hitrate("watch", "--url", url, "--prefix", filled, "--count", "2", "--interval", "0.1")
    assert out.returncode == 0, out.stderr
    assert "89.29 %" in out.stdout and "hits/s" in out.stdout


def test_server_prints_its_url_and_stops_on_sigterm() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "hitrate", "server"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        server_url = proc.stdout.readline().strip()
        assert server_url.startswith("redis://127.0.0.1:")
        client = redis.Redis.from_url(server_url, socket_timeout=2)
        assert client.ping()
        client.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        with pytest.raises(redis.ConnectionError):
            redis.Redis.from_url(server_url, socket_connect_timeout=0.5).ping()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_missing_extra_gives_a_one_line_hint() -> None:
    code = "import sys; sys.modules['typer'] = None; from hitrate.cli import main; sys.exit(main())"
    cmd = [sys.executable, "-c", code]
    out = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=30)
    assert out.returncode == 1
    assert out.stderr.strip() == (
        "hitrate: the command line needs typer and rich: pip install 'hitrate[cli]'"
    )


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).with_name("hitrate")
    found = str(script) if script.exists() else shutil.which("hitrate")
    if found is None:
        pytest.skip("the hitrate console script is not installed (pip install -e .)")
    out = subprocess.run([found, "--help"], check=False, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "stats" in out.stdout
