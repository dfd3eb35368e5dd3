"""What the commands print: the stats screen and key tables (rich).

Everything that comes from Redis or from the user (key names, families, the prefix) goes in
as :class:`~rich.text.Text`, never as a markup string, and the console has markup and emoji
off: a key ``user:[/]y`` prints as itself instead of raising ``MarkupError``, and
``user:ok:1`` stays text instead of becoming an emoji.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ..keyscan import KeyInfo
from ..stats import Stats

__all__ = ["COLOURS", "console", "key_table", "render_stats"]

COLOURS = {
    "no_data": "dim",
    "too_few": "dim",
    "useless": "bold red",
    "working": "yellow",
    "target": "bold green",
    "staleness": "magenta",
}


def shown(name: str) -> str:
    """A key or family as text safe for a terminal: control characters (an ESC that would
    recolour the screen, a newline that would forge a row) are shown escaped, as Python
    would (``\\x1b``), and nothing else changes."""
    if name.isprintable():
        return name
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in name)


def console(*, data: bool = True) -> Console:
    """A console for the commands' output. With *data* (the default) markup, emoji and
    highlighting are off, so text from Redis prints exactly as it is."""
    # Piped output (logs, CI, `| less`) gets room for the whole table instead of rich's
    # default of 80 columns, which squeezes the per-family table unreadably.
    wide = not sys.stdout.isatty() and "COLUMNS" not in os.environ
    width = 160 if wide else None
    if data:
        return Console(soft_wrap=False, width=width, markup=False, emoji=False, highlight=False)
    return Console(soft_wrap=False, width=width)


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
        ("  " + str(verdict), COLOURS.get(verdict.level, "")),
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
            Text(shown(row.family)),
            _rate(row.hit_rate, level),
            Text(str(row.verdict), style=COLOURS.get(level, "")),
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
    title = Text(f"hitrate · prefix {stats.prefix!r} · {window}")
    parts: list[Any] = [Panel(head, title=title, expand=False), server]
    if len(stats.nodes) > 1:  # a Redis Cluster: the line above sums its primaries
        for node in stats.nodes:
            parts.append(
                Text(
                    f"  {node.node}: memory {_bytes(node.memory_used_bytes)}  keys "
                    f"{node.keys:,}  evicted {node.evicted_keys:,}  expired "
                    f"{node.expired_keys:,}  keyspace {node.keyspace_hits:,} hits, "
                    f"{node.keyspace_misses:,} misses",
                    style="dim",
                )
            )
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


def key_table(rows: list[KeyInfo], with_type: bool = False) -> Table:
    """Keys with their family, type, memory and TTL (``hitrate keys`` / ``bigkeys``)."""
    table = Table(show_edge=False, pad_edge=False)
    table.add_column("key", overflow="fold")
    table.add_column("family")
    if with_type:
        table.add_column("type")
    table.add_column("memory", justify="right")
    table.add_column("ttl", justify="right")
    for row in rows:
        cells = [Text(shown(row.key)), Text(shown(row.family))] + (
            [Text(row.type)] if with_type else []
        )
        ttl = "none" if row.ttl is None else f"{row.ttl:,.1f} s"
        table.add_row(*cells, _bytes(row.memory_bytes), ttl)
    return table
