"""No stale reads through the ORM: the consistency checker with commits in sessions and
reads through FromCache queries and rule-invalidated keys, in threads and in a second
process, on SQLite and PostgreSQL. Its companion runs the same workload with the naive
hook (invalidate at flush, before the commit is durable) and must find stale reads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from hitrate import Cache
from hitrate.contrib.sqlalchemy import ORMCache

from . import sa_consistency
from .consistency import violations
from .sa_models import db_url

__all__ = ["db_url"]

ROOT = Path(__file__).resolve().parent.parent


class InvalidateAtFlush(ORMCache):
    """The naive hook: invalidates as soon as the rows are flushed, before the commit."""

    def _after_flush(self, session: Session, flush_context: Any) -> None:
        super()._after_flush(session, flush_context)
        pending = session.info.pop("hitrate.pending", {})
        for changes in pending.values():
            self._deliver(session, changes)


def test_invalidating_at_flush_serves_stale_reads(url: str, prefix: str, db_url: str) -> None:
    sa_consistency.seed(db_url)
    cache = Cache.from_url(url, prefix=prefix, timeout=2.0)
    maker = sa_consistency.setup(cache, db_url, InvalidateAtFlush)
    log = sa_consistency.run(cache, maker, seconds=1.5, commit_delay=0.01)
    found = violations(log)
    print(f"invalidate at flush: {found} stale reads in {len(log)} operations")
    assert found > 0
    cache.close()


def test_no_stale_reads_through_the_orm(url: str, prefix: str, db_url: str) -> None:
    sa_consistency.seed(db_url)
    cache = Cache.from_url(url, prefix=prefix, timeout=2.0)
    maker = sa_consistency.setup(cache, db_url)
    other = subprocess.Popen(
        [sys.executable, "-m", "tests.sa_consistency", url, prefix, db_url, "1.5"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    log = sa_consistency.run(cache, maker, seconds=1.5, commit_delay=0.01)
    out, err = other.communicate(timeout=60)
    assert other.returncode == 0, err
    theirs = sa_consistency.ops_from(out)
    reads = sum(op.kind == "read" for op in log)
    writes = len(log) - reads
    found = violations(log + theirs)
    print(
        f"ORM: {found} stale reads; {reads} reads here, {len(theirs)} in a second process, "
        f"{writes} commits"
    )
    assert writes >= 10 and reads > 100 and len(theirs) > 50
    assert found == 0
    hits = cache.stats(sample=0).hits
    assert hits > 0  # the cache served reads, not just misses
    cache.close()
