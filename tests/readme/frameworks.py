"""The README's Django and Flask examples (``py`` blocks, which tests/test_readme.py leaves
alone since they need a configured framework), for tests/test_django.py and
tests/test_flask.py to run."""

from __future__ import annotations

import ast
import asyncio
import inspect
import re
from pathlib import Path
from typing import Any

README = Path(__file__).resolve().parents[2] / "README.md"


def blocks(heading: str) -> list[str]:
    """The ``py`` blocks of the README section whose title starts with *heading*."""
    text = README.read_text()
    start = text.index(f"\n## {heading}")
    end = text.find("\n## ", start + 1)
    return re.findall(r"```py\n(.*?)```", text[start : end if end > 0 else None], re.S)


def run(code: str, ns: dict[str, Any], name: str) -> None:
    """Execute *code* in *ns*; top-level ``await`` is allowed (run on a new event loop)."""
    compiled = compile(code, name, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    result = eval(compiled, ns)
    if inspect.iscoroutine(result):
        asyncio.run(result)
