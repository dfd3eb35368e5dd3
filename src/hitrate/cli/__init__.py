"""The ``hitrate`` command: hit rate per key family, keys, invalidation, a server, a dashboard.

::

    hitrate stats [--url URL] [--prefix P] [--json]    hit rate, verdicts, memory, per family
    hitrate watch [--interval 2]                       the same, refreshed live
    hitrate invalidate 'user:42:*' [--dry-run]         count, then SCAN + UNLINK the matches
    hitrate keys --family user [--sample 20]           some entries of a family: TTL, bytes
    hitrate bigkeys [--top 10]                         the largest keys under the prefix
    hitrate server                                     start a private server, print its URL
    hitrate dashboard [--port 8000]                    live web dashboard, /api/stats, /metrics
    hitrate demo [--duration 60] [--database URL]      a shop behind the cache, then a report

``--url`` defaults to ``HITRATE_REDIS_URL``, then ``REDIS_URL``, then localhost;
``--prefix`` to ``HITRATE_PREFIX``, then ``hitrate`` (the default prefix of ``Cache``).
Exit status: 0 done, 1 Redis unreachable or refused (one line on stderr), 2 bad usage.

It needs the ``cli`` extra (typer and rich); without it, :func:`main` prints the
``pip install`` line and exits 1.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    try:
        import rich  # noqa: F401
        import typer  # noqa: F401
    except ImportError:
        print(
            "hitrate: the command line needs typer and rich: pip install 'hitrate[cli]'",
            file=sys.stderr,
        )
        return 1
    from ._cli import run

    return run(list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
