"""The commands behind :mod:`hitrate.cli` (typer + rich; imported only when they exist)."""

from __future__ import annotations

import json
import logging
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
from redis.exceptions import RedisClusterException
from rich.live import Live

from .. import __version__
from .._extras import install_hint
from ..cache import Cache
from ..connect import resolve_url
from ..errors import ConfigurationError, HitrateError
from ..keyscan import big_keys, family_keys, matching_entries
from ..stats import Stats
from ._render import console, key_table, render_stats, shown

PATTERN_HELP = """Glob over cache keys (not Redis keys), confined to the prefix: * any run of
characters, ? one character, [abc] one of a set. Nothing is escaped for you: to match a
literal * ? [ ] or \\, put a backslash before it (quote the pattern for your shell), e.g.
'user:\\*:*' for the keys of the user literally named '*'. In Python, escape untrusted
parts with hitrate.escape_glob()."""

app = typer.Typer(
    name="hitrate",
    help="Hit rate per key family, keys and invalidation for a hitrate cache on Redis.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Help text is shown as written: rich markup would eat "[default: ...]" and "[abc]".
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"hitrate {__version__}")
        raise typer.Exit


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_version,
            is_eager=True,
            help="Print the version and exit.",
        ),
    ] = False,
) -> None:
    """Hit rate per key family, keys and invalidation for a hitrate cache on Redis."""


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


class _Refused(Exception):
    """A one-line refusal for want of a flag (exit status 2, like bad usage)."""


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
    # Strict: a failure is raised and printed as one line, so the library's WARNING about
    # it (meant for applications that fail open) would only print it twice.
    logger, level = logging.getLogger("hitrate"), logging.getLogger("hitrate").level
    logger.setLevel(logging.ERROR)
    try:
        yield cache
    except (HitrateError, redis.RedisError, OSError) as exc:
        raise _Failure(_explain(exc, target)) from None
    finally:
        cache.close()
        logger.setLevel(level)


def _explain(exc: BaseException, url: str) -> str:
    cause = exc.__cause__ or exc
    if isinstance(cause, redis.ConnectionError | redis.TimeoutError | OSError):
        detail = str(cause).rstrip(".")
        return f"cannot reach Redis at {_masked(url)}: {detail}"
    return f"Redis at {_masked(url)}: {str(exc).rstrip('.')}"


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
        console().print(render_stats(result))


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
    screen = console()
    with _cache(url, prefix) as cache:
        previous: Stats | None = None
        done = 0
        try:
            with Live(console=screen, auto_refresh=False, transient=False) as live:
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
    pattern: Annotated[
        str, typer.Argument(help=PATTERN_HELP, show_default=False, metavar="PATTERN")
    ],
    url: UrlOption = None,
    prefix: PrefixOption = "hitrate",
    dry_run: Annotated[
        bool, typer.Option("--dry-run", "-n", help="Count and list matches; delete nothing.")
    ] = False,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Do not ask for confirmation (scripts, CI).")
    ] = False,
) -> None:
    """Invalidate the cache keys matching PATTERN, by SCAN + UNLINK (never KEYS), after
    asking for confirmation (--yes skips it; --dry-run only counts and lists). Fills in
    flight for those keys are refused."""
    if not dry_run and not yes and not sys.stdin.isatty():
        raise _Refused(
            "invalidate asks for confirmation and stdin is not a terminal: "
            "add --yes to invalidate, or --dry-run to count the matches first"
        )
    with _cache(url, prefix) as cache:  # a bad URL or prefix is said before asking
        if not dry_run and not yes:
            where = f"under prefix {prefix!r} on {_masked(resolve_url(url))}"
            if not typer.confirm(f"Invalidate every entry matching {pattern!r} {where}?"):
                typer.echo("nothing deleted")
                return
        if dry_run:
            found = matching_entries(cache.client, cache.keyspace, pattern)
            noun = "entry" if len(found) == 1 else "entries"
            typer.echo(f"{len(found)} {noun} match {pattern!r} under prefix {prefix!r}")
            for key in found[:20]:
                typer.echo(f"  {shown(key)}")
            if len(found) > 20:
                typer.echo(f"  ... and {len(found) - 20} more")
            typer.echo("dry run: nothing deleted")
            return
        deleted = cache.invalidate_pattern(pattern)  # one SCAN: it counts what it deletes
    noun = "entry" if deleted == 1 else "entries"
    typer.echo(f"invalidated {deleted} {noun} matching {pattern!r} under prefix {prefix!r}")


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
        rows = family_keys(cache.client, cache.keyspace, family, sample)
    _show_keys(rows, as_json, f"no entries in family {family!r} under prefix {prefix!r}")


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
        rows = big_keys(cache.client, cache.keyspace, top, sample)
    _show_keys(rows, as_json, f"no keys under prefix {prefix!r}", with_type=True)


def _show_keys(rows: list[Any], as_json: bool, empty: str, with_type: bool = False) -> None:
    """Rows of keys as JSON, a table, or one line saying there are none."""
    if as_json:
        typer.echo(json.dumps([r.as_dict() for r in rows], indent=2, ensure_ascii=False))
    elif not rows:
        typer.echo(empty)
    else:
        console().print(key_table(rows, with_type=with_type))


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


ClusterFlag = Annotated[
    bool, typer.Option("--cluster", help="A local Redis Cluster (3 primaries, 3 replicas).")
]
SentinelFlag = Annotated[
    bool,
    typer.Option("--sentinel", help="A primary, 2 replicas and 3 sentinels (service hitrate)."),
]


def _topology(cluster: bool, sentinel: bool) -> str | None:
    if cluster and sentinel:
        raise _Failure("--cluster and --sentinel exclude each other: choose one")
    return "cluster" if cluster else "sentinel" if sentinel else None


@app.command()
def server(
    flavour: Annotated[
        str | None, typer.Option(help="redis or valkey [default: whichever is found]")
    ] = None,
    cluster: ClusterFlag = False,
    sentinel: SentinelFlag = False,
) -> None:
    """Start a private Redis/Valkey server on a free loopback port and print its URL;
    it runs until Ctrl-C and keeps nothing on disk. ``--cluster`` starts a local Redis
    Cluster instead, ``--sentinel`` a Sentinel-managed primary (their URL is printed)."""
    from ..server import EmbeddedServer
    from ..topologies import EmbeddedCluster, EmbeddedSentinel

    kind = _topology(cluster, sentinel)
    local: EmbeddedServer | EmbeddedCluster | EmbeddedSentinel
    try:
        if kind == "cluster":
            local = EmbeddedCluster.start(flavour)
            pids = [n.process.pid for n in local.nodes]
        elif kind == "sentinel":
            local = EmbeddedSentinel.start(flavour)
            pids = [n.process.pid for n in local.servers + local.sentinels]
        else:
            local = EmbeddedServer.start(flavour)
            pids = [local.process.pid]
    except (ConfigurationError, RuntimeError) as exc:
        raise _Failure(str(exc)) from None
    try:
        what = f"{local.flavour} {kind}" if kind else local.flavour
        typer.echo(local.url, nl=True)
        typer.echo(
            f"# {what} pid {', '.join(map(str, pids))}; Ctrl-C stops it. In a shell:", err=True
        )
        typer.echo(f"export HITRATE_REDIS_URL={local.url}", err=True)
        sys.stdout.flush()
        _until_stopped()
    finally:
        local.stop()


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

        from ..dashboard import create_app
    except ImportError:
        raise _Failure(
            f"the dashboard needs starlette and uvicorn: {install_hint('dashboard')}"
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
    url: Annotated[
        str | None,
        typer.Option(
            "--url",
            "-u",
            envvar=["HITRATE_REDIS_URL", "REDIS_URL"],
            show_envvar=False,
            help="Redis URL [default: $HITRATE_REDIS_URL, $REDIS_URL, else a private server]",
        ),
    ] = None,
    redis_alias: Annotated[
        str | None, typer.Option("--redis", hidden=True, help="Old name of --url.")
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
    cluster: ClusterFlag = False,
    sentinel: SentinelFlag = False,
) -> None:
    """A shop (10,000 users, 2,000 products, 50,000 orders) behind the cache under skewed
    traffic, with a live view and the dashboard, then a report: hit rate per family, queries
    avoided, latency with vs without the cache, stampedes, stale reads, rate-limit precision.
    ``--cluster`` / ``--sentinel`` run it on a local Redis Cluster / Sentinel-managed primary."""
    kind = _topology(cluster, sentinel)
    try:
        from ..demo import run_demo
    except ImportError as exc:
        raise _Failure(
            f"the demo needs {exc.name or 'SQLAlchemy'}: {install_hint('demo')}"
        ) from None
    if redis_alias is not None:  # given on the command line, so it beats the environment
        url = redis_alias
    try:
        run_demo(
            duration=duration, redis_url=url, database=database, port=port,
            dashboard=not no_dashboard, seed=seed, as_json=as_json, scale=scale,
            prefix=prefix, table_prefix=table_prefix, db_latency_ms=db_latency, rate=rate,
            second_process=second_process, topology=kind,
            console=console(data=False),
        )  # fmt: skip
    except (
        HitrateError, redis.RedisError, RedisClusterException, OSError, RuntimeError
    ) as exc:  # fmt: skip
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
    except _Refused as exc:
        print(f"hitrate: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # pragma: no cover - Ctrl-C outside a loop
        return 130
    return 0
