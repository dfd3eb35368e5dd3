"""The dashboard: its HTTP endpoints, the page in headless Chromium (driven over the DevTools
protocol), and the static files shipped in the wheel.

The browser test needs Debian's ``chromium`` (``.ci/run`` installs it when missing); where
no browser can be installed it is skipped with a message saying so. A screenshot is saved
as ``artifacts/dashboard.png`` (not in git)."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from hitrate import Cache
from hitrate.server import EmbeddedServer
from hitrate.testing import delete_prefix, unique_prefix

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "artifacts"


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None


def get(url: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def wait_for(predicate: Any, timeout: float = 15.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with EmbeddedServer.start() as server:  # one flavour is enough for the web layer
        yield server.url


@pytest.fixture
def dash_prefix(redis_url: str) -> Iterator[str]:
    name = unique_prefix("dash")
    yield name
    delete_prefix(redis_url, name)


@pytest.fixture
def dashboard(redis_url: str, dash_prefix: str) -> Iterator[str]:
    """``hitrate dashboard --port 0`` as a subprocess; yields its base URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "hitrate", "dashboard", "--url", redis_url, "--prefix",
         dash_prefix, "--port", "0", "--refresh", "0.3", "--minutes", "30"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("hitrate dashboard on http://127.0.0.1:"), (line, proc.stderr)
        base = line.split()[3].rstrip("/")
        wait_for(lambda: _up(base), what="the dashboard to answer")
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _up(base: str) -> bool:
    try:
        return get(base + "/api/stats")[0] == 200
    except OSError:
        return False


def traffic(url: str, prefix: str, hits: int, misses: int) -> None:
    with Cache.from_url(url, prefix=prefix, flush_interval=0) as cache:
        cache.set("user:1", {"id": 1})
        for _ in range(hits):
            cache.get("user:1")
        for i in range(misses):
            cache.get(f"user:missing:{time.monotonic_ns()}:{i}")
    # close() flushed the counts


def test_endpoints(redis_url: str, dash_prefix: str, dashboard: str) -> None:
    traffic(redis_url, dash_prefix, hits=3, misses=1)
    status, headers, body = get(dashboard + "/")
    assert status == 200 and b"/static/vendor/uplot/uPlot.iife.min.js" in body
    assert "default-src 'self'" in headers["content-security-policy"]
    assert dash_prefix.encode() in body
    status, _, js = get(dashboard + "/static/vendor/uplot/uPlot.iife.min.js")
    assert status == 200 and js.startswith(b"/*! https://github.com/leeoniya/uPlot")
    time.sleep(0.2)  # answers are reused for 0.15 s (refresh 0.3 s / 2)
    status, headers, body = get(dashboard + "/api/stats")
    doc = json.loads(body)
    assert status == 200 and headers["cache-control"] == "no-store"
    assert (doc["hits"], doc["misses"], doc["hit_rate"]) == (3, 1, 75.0)
    assert doc["verdict"] == "too few reads"  # 4 reads are no sample to judge
    assert len(doc["history"]["minutes"]) == 30
    status, headers, body = get(dashboard + "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    assert b'hitrate_cache_gets_total{family="user",result="hit"} 3.0' in body
    assert b"hitrate_redis_used_memory_bytes" in body


def test_dashboard_cli_errors_are_one_line() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "hitrate", "dashboard", "--url", "redis://127.0.0.1:1/0"],
        check=False, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.startswith("hitrate: cannot reach Redis at redis://127.0.0.1:1/0")


class DevTools:
    """The smallest Chrome DevTools Protocol client: call a method, wait for its reply."""

    def __init__(self, ws_url: str) -> None:
        import websocket

        self.ws = websocket.create_connection(ws_url, timeout=20, suppress_origin=True)
        self.next_id = 0

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise AssertionError(f"{method}: {message['error']}")
                result: dict[str, Any] = message["result"]
                return result

    def eval(self, expression: str) -> Any:
        reply = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in reply:
            raise AssertionError(f"{expression}: {reply['exceptionDetails']}")
        return reply["result"].get("value")

    def close(self) -> None:
        self.ws.close()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[DevTools]:
    chromium = find_chromium()
    if chromium is None:
        pytest.skip(
            "no Chromium on this machine: .ci/run installs Debian's chromium "
            "(apt-get install chromium); the browser test needs it"
        )
    pytest.importorskip("websocket", reason="the browser test needs websocket-client (dev extra)")
    profile = tmp_path / "profile"
    proc = subprocess.Popen(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--disable-dev-shm-usage", f"--user-data-dir={profile}",
         "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
         "--window-size=1280,1100", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    tools = None
    try:
        port_file = profile / "DevToolsActivePort"
        wait_for(lambda: port_file.exists() and port_file.read_text().strip(), 30, "Chromium")
        port = port_file.read_text().split()[0]
        targets = json.loads(get(f"http://127.0.0.1:{port}/json/list")[2])
        page = next(t for t in targets if t["type"] == "page")
        tools = DevTools(page["webSocketDebuggerUrl"])
        yield tools
    finally:
        if tools is not None:
            tools.close()
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_page_shows_the_api_hit_rate_and_the_chart_follows_traffic(
    redis_url: str, dash_prefix: str, dashboard: str, browser: DevTools
) -> None:
    traffic(redis_url, dash_prefix, hits=3, misses=1)  # 75 %
    browser.call("Page.navigate", url=dashboard + "/?refresh_ms=250")
    updates = "(document.body && Number(document.body.dataset.updates || 0)) || 0"
    wait_for(lambda: browser.eval(updates) >= 1, what="the page's first update")
    api = json.loads(get(dashboard + "/api/stats")[2])
    shown = browser.eval("document.getElementById('hit-rate').textContent")
    assert shown == f"{api['hit_rate']:.2f} %" == "75.00 %"
    assert browser.eval("document.getElementById('gauge').dataset.level") == "too_few"
    assert browser.eval("document.getElementById('verdict').textContent") == "too few reads"
    row = "document.querySelector('#families tr[data-family=\"user\"] .hit-rate').textContent"
    assert browser.eval(row) == "75.00 %"
    assert not browser.eval("document.getElementById('status').classList.contains('error')")
    chart = "JSON.stringify(window.hitrateDashboard.trafficChart.data)"
    before = json.loads(browser.eval(chart))
    assert len(before[0]) == 30 and sum(before[1]) > 0  # 30 minutes on the x axis
    rate_series = browser.eval("window.hitrateDashboard.rateChart.series.length")
    assert rate_series == 3  # x, all families, user

    traffic(redis_url, dash_prefix, hits=96, misses=0)  # 99 of 100 reads are hits
    wait_for(lambda: browser.eval("document.getElementById('hit-rate').textContent") == "99.00 %",
             what="the gauge to follow the traffic")  # fmt: skip
    after = json.loads(browser.eval(chart))
    assert sum(after[1]) > sum(before[1])  # the hits/s series grew
    assert browser.eval("document.getElementById('gauge').dataset.level") == "staleness"
    assert browser.eval("document.getElementById('verdict').textContent") == "check for staleness"

    shot = browser.call("Page.captureScreenshot", format="png")["data"]
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "dashboard.png").write_bytes(base64.b64decode(shot))


def test_wheel_ships_the_dashboard_files(tmp_path: Path) -> None:
    builders = pytest.importorskip("hatchling.builders.wheel")
    wheel = next(iter(builders.WheelBuilder(str(ROOT)).build(directory=str(tmp_path))))
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in (
        "hitrate/dashboard/static/index.html",
        "hitrate/dashboard/static/dashboard.js",
        "hitrate/dashboard/static/dashboard.css",
        "hitrate/dashboard/static/vendor/uplot/uPlot.iife.min.js",
        "hitrate/dashboard/static/vendor/uplot/uPlot.min.css",
        "hitrate/dashboard/static/vendor/uplot/LICENSE",
        "hitrate/lua/stats_flush.lua",
        "hitrate/py.typed",
    ):
        assert path in names, path
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "hitrate = hitrate.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
