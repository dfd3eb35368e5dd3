"""An optional part used without its extra fails with one line naming the pip command."""

from __future__ import annotations

import subprocess
import sys

import pytest

HIDE = "import sys; sys.modules.update(dict.fromkeys({modules!r}))\n"  # import -> ImportError


def run_without(modules: list[str], code: str) -> subprocess.CompletedProcess[str]:
    script = HIDE.format(modules=modules) + code
    return subprocess.run(
        [sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    ("modules", "code", "hint"),
    [
        (
            ["prometheus_client"],
            "import hitrate.prometheus",
            "hitrate.prometheus needs prometheus-client: pip install 'hitrate[prometheus]'",
        ),
        (
            ["starlette"],
            "from hitrate.dashboard import create_app",
            "hitrate.dashboard needs starlette and uvicorn: pip install 'hitrate[dashboard]'",
        ),
        (
            ["django"],
            "from hitrate.contrib.django import HitrateCache",
            "hitrate.contrib.django needs Django: pip install 'hitrate[django]'",
        ),
        (
            ["flask_caching"],
            "from hitrate.contrib.flask import HitrateCache",
            "hitrate.contrib.flask needs Flask and Flask-Caching: pip install 'hitrate[flask]'",
        ),
        (
            ["sqlalchemy"],
            "import hitrate.contrib.sqlalchemy",
            "hitrate.contrib.sqlalchemy needs SQLAlchemy: pip install 'hitrate[sqlalchemy]'",
        ),
        (
            ["fastapi"],
            "import hitrate.contrib.fastapi",
            "hitrate.contrib.fastapi needs fastapi: pip install 'hitrate[fastapi]'",
        ),
    ],
)
def test_importing_without_the_extra_says_what_to_install(
    modules: list[str], code: str, hint: str
) -> None:
    wrapped = (
        f"try:\n    {code}\nexcept ImportError as exc:\n"
        "    print(type(exc).__name__, isinstance(exc, ImportError), exc)\n"
    )
    out = run_without(modules, wrapped)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"ModuleNotFoundError True {hint}"


def test_msgpack_codec_without_msgpack() -> None:
    code = (
        "from hitrate import ConfigurationError, MsgpackCodec\n"
        "try:\n    MsgpackCodec()\nexcept ConfigurationError as exc:\n    print(exc)\n"
    )
    out = run_without(["msgpack"], code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith(": pip install 'hitrate[msgpack]'")


@pytest.mark.parametrize(
    ("modules", "argv", "line"),
    [
        (
            ["typer"],
            ["stats"],
            "hitrate: the command line needs typer and rich: pip install 'hitrate[cli]'",
        ),
        (
            ["rich"],
            ["--version"],
            "hitrate: the command line needs typer and rich: pip install 'hitrate[cli]'",
        ),
        (
            ["uvicorn"],
            ["dashboard"],
            "hitrate: the dashboard needs starlette and uvicorn: pip install 'hitrate[dashboard]'",
        ),
        (
            ["starlette"],
            ["dashboard"],
            "hitrate: the dashboard needs starlette and uvicorn: pip install 'hitrate[dashboard]'",
        ),
        (
            ["sqlalchemy"],
            ["demo"],
            "hitrate: the demo needs sqlalchemy: pip install 'hitrate[demo]'",
        ),
    ],
)
def test_commands_without_their_extra_print_one_line(
    modules: list[str], argv: list[str], line: str
) -> None:
    out = run_without(modules, f"from hitrate.cli import main; sys.exit(main({argv!r}))")
    assert out.returncode == 1
    assert out.stderr.strip() == line
