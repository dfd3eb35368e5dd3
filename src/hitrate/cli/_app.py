"""The commands behind :mod:`hitrate.cli` (typer + rich; imported only when they exist)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import redis
import typer
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from .cache import Cache, resolve_url
from .errors import ConfigurationError, HitrateError
from .keyscan import KeyInfo, big_keys, family_keys, matching_entries
from .monitor import Stats

PATTERN_HELP = """Glob over cache keys (not Redis keys), confined to the prefix: * any run of
characters, ? one character, [abc] one of a set. Nothing is escaped for you: to match a
literal * ? [ ] or \\, put a backslash before it (quote the pattern for your shell), e.g.
'user:\\*:*' for the keys of the user literally named '*'. In Python, escape untrusted
parts with hitrate.escape_glob()."""

COLOURS = {
    "no_data": "dim",
    "useless": "bold red",
    "working": "yellow",
    "target": "bold green",
    "staleness": "magenta",
}

app = typer.Typer(
    name="hitrate",
    help="Hit rate per key family, keys and invalidation for a hitrate cache on Redis.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url",
        "-u",
        envvar=["HITRATE_REDIS_URL", "REDIS_URL"],
        show_envvar=False,
        help="Redis URL [default: $HITRATE_REDIS_URL, $REDIS_URL, redis://localhost:6379/0]",
    ),
]
PrefixOption = Annotated[
    str,
    typer.Option("--prefix", "-p", envvar="HITRATE_PREFIX", help="The cache's key prefix."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]


class _Failure(Exception):
    """A one-line error for the user (exit status 1)."""


def _masked(url: str) -> str:
    return re.sub(r"(//[^:/@]*:)[^@/]*@", r"\1****@", url)


@contextmanager
def _cache(url: str | None, prefix: str) -> Iterator[Cache]:
    """A strict cache (errors raise, nothing fails open) with admin-friendly timeouts."""
    target = resolve_url(url)
    try:
        cache = Cache.from_url(
            target, prefix=prefix, strict=True, flush_interval=0, timeout=5.0, connect_timeout=3.0
        )
    except (ValueError, ConfigurationError) as exc:
        raise typer.BadParameter(str(exc)) from None
    try:
        yield cache
    except (HitrateError, redis.RedisError, OSError) as exc:
        raise _Failure(_explain(exc, target)) from None
    finally:
        cache.close()


def _explain(exc: BaseException, url: str) -> str:
    cause = exc.__cause__ or exc
    if isinstance(cause, redis.ConnectionError | redis.TimeoutError | OSError):
        detail = str(cause).rstrip(".")
        return f"cannot reach Redis at {_masked(url)}: {detail}"
    return f"Redis at {_masked(url)}: {str(exc).rstrip('.')}"


def _console() -> Console:
    # Piped output (logs, CI, `| less`) gets room for the whole table instead of rich's
    # default of 80 columns, which squeezes the per-family table unreadably.
    wide = not sys.stdout.isatty() and "COLUMNS" not in os.environ
    return Console(soft_wrap=False, width=160 if wide else None)


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"


def _bytes(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "K", "M", "G"):
        if size < 1024 or unit == "G":
            return f"{size:.0f}{unit}" if unit == "B" else f"{size:.2f}{unit}"
        size /= 1024
    return f"{n}B"  # pragma: no cover


def _rate(value: float, level: str) -> Text:
    return Text(f"{value:.2f} %", style=COLOURS.get(level, ""))


def render_stats(stats: Stats, rates: tuple[float, float] | None = None) -> Group:
    """The ``hitrate stats`` screen: overall line, server line, a row per family."""
    verdict = stats.verdict
    head = Text.assemble(
        ("hit rate ", "bold"),
        _rate(stats.hit_rate, verdict.level),
        ("  " + str(verdict), COLOURS[verdict.level]),
        f"   hits {stats.hits:,}  misses {stats.misses:,}",
    )
    if rates is not None:
        head.append(f"   ({rates[0]:,.1f} hits/s, {rates[1]:,.1f} misses/s)")
    window = f"last {stats.minutes} min" if stats.minutes else "all processes, since first flush"
    server = Text(
        f"server: memory {stats.memory_used} ({stats.memory_used_bytes:,} B)  keys {stats.keys:,}"
        f"  evicted {stats.evicted_keys:,}  expired {stats.expired_keys:,}  keyspace hit rate "
        f"{stats.server_hit_rate:.2f} % ({stats.keyspace_hits:,} hits, "
        f"{stats.keyspace_misses:,} misses, every client)",
        style="dim",
    )
    table = Table(title=None, expand=False, show_edge=False, pad_edge=False)
    for name, justify in (
        ("family", "left"), ("hit rate", "right"), ("verdict", "left"), ("hits", "right"),
        ("misses", "right"), ("stale", "right"), ("loads", "right"), ("load p50", "right"),
        ("load p99", "right"), ("errors", "right"), ("keys~", "right"), ("memory~", "right"),
    ):  # fmt: skip
        table.add_column(name, justify=justify, no_wrap=name != "verdict")  # type: ignore[arg-type]
    for row in stats.families:
        level = row.verdict.level
        table.add_row(
            row.family,
            _rate(row.hit_rate, level),
            Text(str(row.verdict), style=COLOURS[level]),
            f"{row.hits:,}",
            f"{row.misses:,}",
            f"{row.stale_hits:,}",
            f"{row.loads:,}",
            _ms(row.load_p50),
            _ms(row.load_p99),
            f"{row.errors + row.fail_open:,}",
            "-" if row.keys is None else f"{row.keys:,}",
            _bytes(row.memory_bytes),
        )
    parts: list[Any] = [
        Panel(head, title=f"hitrate · prefix {stats.prefix!r} · {window}", expand=False),
        server,
    ]
    parts.append(table if stats.families else Text("no families counted yet", style="dim"))
    if stats.sample is not None and not stats.sample.complete:
        parts.append(
            Text(
                f"~ keys and memory estimated from {stats.sample.examined:,} of "
                f"{stats.keys:,} keys (raise --sample for more)",
                style="dim",
            )
        )
    return Group(*parts)


@app.command()
def stats(
    url: UrlOption = None,
    prefix: PrefixOption = "hitrate",
    as_json: JsonOption = False,
    minutes: Annotated[
        int | None, typer.Option(min=1, help="Count only the last N minutes (max 1440).")
    ] = None,
    sample: Annotated[
        int, typer.Option(min=0, help="Keys SCAN may examine to estimate keys and memory.")
    ] = 10_000,
) -> None:
    """Hit rate, verdict and load times per key family (all processes), and server memory."""
    with _cache(url, prefix) as cache:
        result = cache.stats(minutes=minutes, sample=sample)
    if as_json:
        typer.echo(json.dumps(result.as_dict(), indent=2, ensure_ascii=False))
    else:
        _console().print(render_stats(result))


@app.command()
def watch(
    url: UrlOption = None,
    prefix: PrefixOption = "hitrate",
    interval: Annotated[float, typer.Option(min=0.1, help="Seconds between refreshes.")] = 2.0,
    minutes: Annotated[int | None, typer.Option(min=1, help="Count only the last N min.")] = None,
    count: Annotated[int, typer.Option(min=0, help="Stop after N refreshes (0: Ctrl-C).")] = 0,
    sample: Annotated[int, typer.Option(min=0, help="Keys SCAN may examine.")] = 2000,
) -> None:
    """The stats screen, refreshed live until Ctrl-C, with hits and misses per second."""
    console = _console()
    with _cache(url, prefix) as cache:
        previous: Stats | None = None
        done = 0
        try:
            with Live(console=console, auto_refresh=False, transient=False) as live:
                while True:
                    current = cache.stats(minutes=minutes, sample=sample)
                    rates = None
                    if previous is not None:
                        dt = max(current.taken_at - previous.taken_at, 1e-6)
                        rates = (
                            max(0, current.hits - previous.hits) / dt,
                            max(0, current.misses - previous.misses) / dt,
                        )
                    live.update(render_stats(current, rates), refresh=True)
                    previous, done = current, done + 1
                    if count and done >= count:
                        break
                    time.sleep(interval)
        except KeyboardInterrupt:
            pass


@app.command()
def invalidate(
    pattern: Annotated[str, typer.Argument(help=PATTERN_HELP, show_default=False)],
    url: UrlOption = None,
    prefix: PrefixOption = "hitrate",
    dry_run: Annotated[
        bool, typer.Option("--dry-run", "-n", help="Count and list matches; delete nothing.")
    ] = False,
) -> None:
    """Invalidate the cache keys matching PATTERN, by SCAN + UNLINK (never KEYS), counting
    them first. Fills in flight for those keys are refused."""
    with _cache(url, prefix) as cache:
        found = matching_entries(cache.client, cache._ctx.keys, pattern)
        noun = "entry" if len(found) == 1 else "entries"
        typer.echo(f"{len(found)} {noun} match {pattern!r} under prefix {prefix!r}")
        if dry_run:
            for key in found[:20]:
                typer.echo(f"  {key}")
            if len(found) > 20:
                typer.echo(f"  ... and {len(found) - 20} more")
            typer.echo("dry run: nothing deleted")
            return
        deleted = cache.invalidate_pattern(pattern)
        typer.echo(f"invalidated {deleted} {'entry' if deleted == 1 else 'entries'}")


def _key_table(rows: list[KeyInfo], with_type: bool = False) -> Table:
    table = Table(show_edge=False, pad_edge=False)
    table.add_column("key", overflow="fold")
    table.add_column("family")
    if with_type:
        table.add_column("type")
    table.add_column("memory", justify="right")
    table.add_column("ttl", justify="right")
    for row in rows:
        cells = [row.key, row.family] + ([row.type] if with_type else [])
        ttl = "none" if row.ttl is None else f"{row.ttl:,.1f} s"
        table.add_row(*cells, _bytes(row.memory_bytes), ttl)
    return table


@app.command()
def keys(
    family: Annotated[str, typer.Option("--family", "-f", help="Key family, e.g. user.")],
    url: UrlOption = None,
    prefix: PrefixOption = "hitrate",
    sample: Annotated[int, typer.Option(min=1, help="How many entries to show.")] = 20,
    as_json: JsonOption = False,
) -> None:
    """Some entries of one key family (found by SCAN), with their memory and TTL."""
    with _cache(url, prefix) as cache:
        rows = family_keys(cache.client, cache._ctx.keys, family, sample)
    if as_json:
        typer.echo(json.dumps([r.as_dict() for r in rows], indent=2, ensure_ascii=False))
    elif not rows:
        typer.echo(f"no entries in family {family!r} under prefix {prefix!r}")
    else:
        _console().print(_key_table(rows))


@app.command()
def bigkeys(
    url: UrlOption = None,
    prefix: PrefixOption = "hitrate",
    top: Annotated[int, typer.Option(min=1, help="How many keys to show.")] = 10,
    sample: Annotated[int, typer.Option(min=0, help="Examine at most N keys (0: all).")] = 0,
    as_json: JsonOption = False,
) -> None:
    """The largest keys under the prefix by MEMORY USAGE (SCAN, never KEYS)."""
    with _cache(url, prefix) as cache:
        rows = big_keys(cache.client, cache._ctx.keys, top, sample)
    if as_json:
        typer.echo(json.dumps([r.as_dict() for r in rows], indent=2, ensure_ascii=False))
    elif not rows:
        typer.echo(f"no keys under prefix {prefix!r}")
    else:
        _console().print(_key_table(rows, with_type=True))


def _until_stopped() -> None:
    """Sleep until Ctrl-C or SIGTERM (which then runs the usual clean-up)."""

    def stop(*_: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass


@app.command()
def server(
    flavour: Annotated[
        str | None, typer.Option(help="redis or valkey [default: whichever is found]")
    ] = None,
) -> None:
    """Start a private Redis/Valkey server on a free loopback port and print its URL;
    it runs until Ctrl-C and keeps nothing on disk."""
    from .server import EmbeddedServer

    try:
        srv = EmbeddedServer.start(flavour)
    except (ConfigurationError, RuntimeError) as exc:
        raise _Failure(str(exc)) from None
    try:
        typer.echo(srv.url, nl=True)
        typer.echo(f"# {srv.flavour} pid {srv.process.pid}; Ctrl-C stops it. In a shell:", err=True)
        typer.echo(f"export HITRATE_REDIS_URL={srv.url}", err=True)
        sys.stdout.flush()
        _until_stopped()
    finally:
        srv.stop()


@app.command()
def dashboard(
    url: UrlOption = None,
    prefix: PrefixOption = "hitrate",
    host: Annotated[str, typer.Option(help="Address to bind (loopback by default).")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port (0: a free one).")] = 8000,
    refresh: Annotated[float, typer.Option(min=0.2, help="Page refresh, seconds.")] = 2.0,
    minutes: Annotated[int, typer.Option(min=5, max=1440, help="Chart span, minutes.")] = 60,
    sample: Annotated[int, typer.Option(min=0, help="Keys SCAN may examine.")] = 10_000,
) -> None:
    """A live web dashboard: hit-rate gauge, hit rate over time per family, memory, keys,
    evictions, a table per family; /api/stats (JSON) and /metrics (Prometheus)."""
    try:
        import uvicorn

        from .dashboard import create_app
    except ImportError:
        raise _Failure(
            "the dashboard needs starlette and uvicorn: pip install 'hitrate[dashboard]'"
        ) from None
    target = resolve_url(url)
    with _cache(target, prefix) as cache:
        cache.client.ping()  # fail now, with one line, rather than on every page load
    web = create_app(target, prefix=prefix, refresh=refresh, minutes=minutes, sample=sample)
    config = uvicorn.Config(web, host=host, port=port, log_level="warning", lifespan="on")
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:  # bound here, so the printed URL has the real port and a busy one is one line
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise _Failure(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    typer.echo(
        f"hitrate dashboard on http://{shown}:{bound_port}/ "
        f"(Redis {_masked(target)}, prefix {prefix!r}); Ctrl-C stops it"
    )
    sys.stdout.flush()
    uvicorn.Server(config).run(sockets=[sock])


@app.command()
def demo(
    duration: Annotated[float, typer.Option(min=2, help="Seconds to run, both phases.")] = 60.0,
    redis_url: Annotated[
        str | None,
        typer.Option(
            "--redis",
            envvar=["HITRATE_REDIS_URL", "REDIS_URL"],
            show_envvar=False,
            help="Redis URL [default: $HITRATE_REDIS_URL, $REDIS_URL, else a private server]",
        ),
    ] = None,
    database: Annotated[
        str | None,
        typer.Option(help="SQLAlchemy URL [default: a SQLite file in ~/.cache/hitrate]"),
    ] = None,
    port: Annotated[int, typer.Option(min=0, max=65535, help="Dashboard port.")] = 8000,
    no_dashboard: Annotated[bool, typer.Option("--no-dashboard", help="No dashboard.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the data and the traffic.")] = 0,
    as_json: JsonOption = False,
    scale: Annotated[float, typer.Option(min=0.01, max=10, hidden=True)] = 1.0,
    prefix: Annotated[str, typer.Option(hidden=True)] = "hitrate-demo",
    table_prefix: Annotated[str, typer.Option(hidden=True)] = "shop_",
    db_latency: Annotated[float | None, typer.Option(min=0, hidden=True)] = None,
    rate: Annotated[float, typer.Option(min=0, hidden=True)] = 600.0,
    second_process: Annotated[bool, typer.Option(hidden=True)] = True,
) -> None:
    """A shop (10,000 users, 2,000 products, 50,000 orders) behind the cache under skewed
    traffic, with a live view and the dashboard, then a report: hit rate per family, queries
    avoided, latency with vs without the cache, stampedes, stale reads, rate-limit precision."""
    try:
        from .demo import run_demo
    except ImportError as exc:
        raise _Failure(
            f"the demo needs SQLAlchemy ({exc.name} is missing): pip install 'hitrate[demo]'"
        ) from None
    try:
        run_demo(
            duration=duration, redis_url=redis_url, database=database, port=port,
            dashboard=not no_dashboard, seed=seed, as_json=as_json, scale=scale,
            prefix=prefix, table_prefix=table_prefix, db_latency_ms=db_latency, rate=rate,
            second_process=second_process,
            console=_console(),
        )  # fmt: skip
    except (HitrateError, redis.RedisError, OSError, RuntimeError) as exc:
        raise _Failure(f"demo: {exc}") from None
    except Exception as exc:  # the database's errors (SQLAlchemy, psycopg): one line too
        if type(exc).__module__.split(".")[0] not in ("sqlalchemy", "psycopg"):
            raise
        raise _Failure(f"demo: database: {str(exc).splitlines()[0]}") from None


def run(argv: list[str]) -> int:
    command = typer.main.get_command(app)
    try:
        command.main(args=argv, prog_name="hitrate", standalone_mode=True)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except _Failure as exc:
        print(f"hitrate: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # pragma: no cover - Ctrl-C outside a loop
        return 130
    return 0
