"""The README's Python examples, run in order against a private server and type-checked
with ``mypy --strict``, so the documentation cannot drift from the code."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from hitrate import Cache
from hitrate.server import find_servers
from hitrate.testing import delete_prefix, unique_prefix

ROOT = Path(__file__).resolve().parent.parent
BLOCKS = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
PRELUDE = (
    "from tests.readme.prelude import *  # noqa: F403\nfrom tests.readme.prelude import cache\n"
)


def test_readme_has_examples() -> None:
    assert len(BLOCKS) >= 15


def test_readme_examples_run(url: str, server: Any) -> None:
    if server.flavour != sorted(find_servers())[0]:  # once is enough (Prometheus registry)
        pytest.skip("the README's examples run on one server flavour")
    from tests.readme import prelude

    prefix = unique_prefix("readme")
    module = types.ModuleType("readme_examples")  # a real module: type hints resolve in it
    sys.modules[module.__name__] = module
    ns: dict[str, Any] = module.__dict__
    ns.update({k: v for k, v in vars(prelude).items() if not k.startswith("__")})
    ns["cache"] = Cache.from_url(url, prefix=prefix)
    try:
        for i, block in enumerate(BLOCKS):
            code = block.replace('"redis://localhost:6379/0"', repr(url))
            code = code.replace('prefix="app"', f"prefix={prefix!r}")
            code = code.replace(
                "AsyncCache.from_url(prefix=", f"AsyncCache.from_url({url!r}, prefix="
            )
            try:
                exec(compile(code, f"README.md example {i}", "exec"), ns)
            except Exception as exc:  # pragma: no cover - the message is the point
                pytest.fail(f"README example {i} failed: {exc!r}\n{block}")
        assert asyncio.run(ns["handler"]())["id"] == 42  # the asyncio example
        assert ns["handle"](42)[0] in (200, 429)  # the rate-limit example
    finally:
        for name in ("cache", "acache"):
            if name in ns and hasattr(ns[name], "close"):
                closing = ns[name].close()
                if asyncio.iscoroutine(closing):
                    asyncio.run(closing)
        delete_prefix(url, prefix)
        sys.modules.pop(module.__name__, None)


def test_readme_examples_type_check(tmp_path: Path) -> None:
    for i, block in enumerate(BLOCKS):
        (tmp_path / f"example_{i:02}.py").write_text(PRELUDE + block)
    out = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(tmp_path)],
        check=False,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"MYPYPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0, out.stdout + out.stderr
