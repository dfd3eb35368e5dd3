"""`hitrate demo`, end to end in a subprocess: a reduced shop, five seconds of traffic, the
report's invariants (no stale reads, one load per hot-key expiry, exact rate limits)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from hitrate.server import EmbeddedServer
from hitrate.testing import delete_prefix

pytest.importorskip("sqlalchemy")

PG_URL = os.environ.get("HITRATE_TEST_POSTGRES", "postgresql://127.0.0.1:5432/test")
FAMILIES = {"user", "product", "top", "settings", "buyers", "visitors", "api"}


def run_demo(url: str, database: str, prefix: str, *extra: str) -> dict[str, Any]:
    hitrate = Path(sys.executable).with_name("hitrate")
    env = {k: v for k, v in os.environ.items() if k not in ("HITRATE_REDIS_URL", "REDIS_URL")}
    args = [str(hitrate), "demo", "--duration", "5", "--no-dashboard", "--json", "--redis", url]
    args += ["--database", database, "--scale", "0.1", "--prefix", prefix, *extra]
    proc = subprocess.run(
        args,
        check=False,
        capture_output=True,
        text=True,
        timeout=90,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def check_invariants(report: dict[str, Any]) -> None:
    families = {row["family"]: row for row in report["families"]}
    assert set(families) == FAMILIES
    assert report["staleness"]["stale_reads"] == 0
    assert report["staleness"]["reads_checked"] > 100
    assert report["staleness"]["writes"] > 5
    assert report["second_process_reads"] > 50  # reads from another process, checked too
    # Zipf over 1,000 users for ~4 s: most reads hit, but not all (that would mean no misses).
    assert 40.0 <= families["user"]["hit_rate"] <= 99.0, families["user"]
    assert 30.0 <= families["product"]["hit_rate"] <= 99.0, families["product"]
    assert families["settings"]["hit_rate"] > 90.0
    for name in ("user", "product", "top", "settings"):
        assert families[name]["reads"] > 0
        assert families[name]["verdict"]
    assert families["buyers"]["top10_matches_database"] is True
    assert families["visitors"]["error_pct"] < 5.0
    assert report["hot_key"]["loader_calls_per_expiry"] == 1.0
    limiter = report["rate_limiter"]
    assert limiter["over_limit_windows"] == 0
    assert limiter["max_allowed_in_a_window"] <= limiter["limit_per_s"]
    if limiter["saturated_windows"]:
        assert limiter["precision_pct"] == 100.0
    with_cache, without = report["with_cache"], report["without_cache"]
    assert with_cache["requests"] > 500
    assert without["requests"] > 100
    assert with_cache["db_queries_per_request"] < without["db_queries_per_request"]
    assert report["db_queries_avoided"]["avoided"] > 0
    assert report["redis"]["keys"] > 0


def test_demo_on_sqlite(server: EmbeddedServer, tmp_path: Path) -> None:
    prefix = f"demo-{uuid.uuid4().hex[:8]}"
    try:
        report = run_demo(server.url, f"sqlite:///{tmp_path / 'shop.db'}", prefix)
    finally:
        delete_prefix(server.url, prefix)
    check_invariants(report)
    assert report["database"]["kind"] == "sqlite"
    assert report["database"]["seeding"].startswith("seeded")


def _postgres_or_skip() -> None:
    psycopg = pytest.importorskip("psycopg")
    try:
        psycopg.connect(PG_URL, connect_timeout=2).close()
    except psycopg.Error as exc:
        pytest.skip(f"no PostgreSQL at {PG_URL}: {exc}")


def test_demo_on_postgresql(server: EmbeddedServer) -> None:
    _postgres_or_skip()
    from hitrate.demo.shop import Shop

    tag = uuid.uuid4().hex[:8]
    tables, prefix = f"t{tag}_", f"demo-{tag}"
    try:
        report = run_demo(server.url, PG_URL, prefix, "--table-prefix", tables)
    finally:
        delete_prefix(server.url, prefix)
        shop = Shop(PG_URL, table_prefix=tables)
        shop.drop()
        shop.close()
    check_invariants(report)
    assert report["database"]["kind"] == "postgresql"
