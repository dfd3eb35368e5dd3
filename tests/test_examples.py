"""The examples in examples/ run: the SQLAlchemy one as a script, the FastAPI one's app
through FastAPI's TestClient, each on a private server."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from hitrate.testing import delete_prefix

ROOT = Path(__file__).resolve().parent.parent


def test_sqlalchemy_example(url: str) -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "sqlalchemy_app.py")],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "HITRATE_REDIS_URL": url},
        check=False,
    )
    delete_prefix(url, "example")
    assert out.returncode == 0, out.stderr
    assert "SQL for the hit: 0 queries" in out.stdout
    assert "after rollback, still cached: True" in out.stdout
    assert "team 1 (after commit): ['ada lovelace', 'bob']" in out.stdout
    assert "team 1 (after bulk move): ['ada lovelace']" in out.stdout


def test_fastapi_example(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HITRATE_REDIS_URL", url)
    spec = importlib.util.spec_from_file_location(
        "fastapi_app", ROOT / "examples" / "fastapi_app.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    try:
        with TestClient(module.app) as tc:
            assert tc.get("/products/1").headers["x-cache"] == "MISS"
            assert tc.get("/products/1").headers["x-cache"] == "HIT"
            assert tc.get("/products/1/price").json() == {"price": 3.5}
            assert tc.put("/products/1?name=green tea").status_code == 200
            renamed = tc.get("/products/1")
            assert renamed.headers["x-cache"] == "MISS" and renamed.json()["name"] == "green tea"
            assert tc.get("/products/9").status_code == 404
    finally:
        delete_prefix(url, "shop")
