"""The ``hitrate`` command: hit rate per key family, keys, invalidation, a server, a dashboard.

::

    hitrate stats [--url URL] [--prefix P] [--json]    hit rate, verdicts, memory, per family
    hitrate watch [--interval 2]                       the same, refreshed live
    hitrate invalidate 'user:42:*' [--yes|--dry-run]   confirm, then SCAN + UNLINK the matches
    hitrate keys --family user [--sample 20]           some entries of a family: TTL, bytes
    hitrate bigkeys [--top 10]                         the largest keys under the prefix
    hitrate server                                     start a private server, print its URL
    hitrate dashboard [--port 8000]                    live web dashboard, /api/stats, /metrics
    hitrate demo [--duration 60] [--database URL]      a shop behind the cache, then a report
    hitrate --version

``--url`` defaults to ``HITRATE_REDIS_URL``, then ``REDIS_URL``, then localhost;
``--prefix`` to ``HITRATE_PREFIX``, then ``hitrate`` (the default prefix of ``Cache``).
Exit status: 0 done, 1 Redis unreachable or refused (one line on stderr), 2 bad usage
(``invalidate`` without ``--yes`` when stdin is not a terminal is bad usage too).
Key names and other text from Redis are printed as they are (no rich markup or emoji).

It needs the ``cli`` extra (typer and rich); without it, :func:`main` prints the
``pip install`` line and exits 1.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from .._extras import install_hint

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    try:
        import rich  # noqa: F401
        import typer  # noqa: F401
    except ImportError:
        print(
            f"hitrate: the command line needs typer and rich: {install_hint('cli')}",
            file=sys.stderr,
        )
        return 1
    from ._app import run

    return run(list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
