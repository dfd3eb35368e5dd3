"""What a user installs and runs first: the wheel's metadata and licence, and the Makefile's
checks of the Python it is given (dry runs in a copy: nothing is installed)."""

from __future__ import annotations

import email
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A wheel and an sdist built from the source tree by hatchling."""
    wheel = pytest.importorskip("hatchling.builders.wheel")
    sdist = pytest.importorskip("hatchling.builders.sdist")
    out = tmp_path_factory.mktemp("dist")
    return {
        "wheel": Path(next(iter(wheel.WheelBuilder(str(ROOT)).build(directory=str(out))))),
        "sdist": Path(next(iter(sdist.SdistBuilder(str(ROOT)).build(directory=str(out))))),
    }


def test_the_licence_ships_in_the_wheel_and_the_sdist(dist: dict[str, Path]) -> None:
    licence = (ROOT / "LICENSE").read_text()
    assert licence.startswith("MIT License") and "hitrate developers" in licence
    with zipfile.ZipFile(dist["wheel"]) as wheel:
        shipped = [n for n in wheel.namelist() if n.endswith(".dist-info/licenses/LICENSE")]
        assert len(shipped) == 1 and wheel.read(shipped[0]).decode() == licence
    with tarfile.open(dist["sdist"]) as sdist:
        assert any(name.endswith("/LICENSE") and "/src/" not in name for name in sdist.getnames())


def test_wheel_metadata_says_licence_versions_status_and_typing(dist: dict[str, Path]) -> None:
    with zipfile.ZipFile(dist["wheel"]) as wheel:
        name = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
        meta = email.message_from_bytes(wheel.read(name))
    assert meta["License-Expression"] == "MIT" and meta["License-File"] == "LICENSE"
    classifiers = set(meta.get_all("Classifier") or [])
    for expected in (
        "Development Status :: 3 - Alpha",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
        "Typing :: Typed",
    ):
        assert expected in classifiers
    extras = set(meta.get_all("Provides-Extra") or [])
    assert {
        "cli",
        "dashboard",
        "demo",
        "msgpack",
        "prometheus",
        "server",
        "sqlalchemy",
        "fastapi",
        "all",
    } <= extras


def fake_python(path: Path, answer: str) -> Path:
    """An interpreter that answers the Makefile's probe with *answer*."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\necho {answer}\n")
    path.chmod(0o755)
    return path


def probe() -> str:
    v = sys.version_info
    return f"{sys.implementation.name}-{v.major}.{v.minor}.{v.micro}"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    if shutil.which("make") is None:
        pytest.skip("no make on this machine")
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    return tmp_path


def make(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``make -n ARGS`` (a dry run), out of reach of an outer make (``make test``)."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    return subprocess.run(
        ["make", "-n", *args], cwd=project, env=env, check=False, capture_output=True,
        text=True, timeout=60,
    )  # fmt: skip


def test_make_refuses_an_old_or_missing_python(project: Path) -> None:
    old = fake_python(project / "bin" / "python3.10", "old cpython-3.10.12")
    out = make(project, "test", f"PYTHON={old}")
    assert out.returncode != 0
    assert f"hitrate needs Python 3.11 or newer, and '{old}' is cpython-3.10.12" in out.stderr
    out = make(project, "demo", "PYTHON=/no/such/python3")
    assert out.returncode != 0
    assert "hitrate needs Python 3.11 or newer, and '/no/such/python3' does not run" in out.stderr
    assert make(project, "clean", "PYTHON=/no/such/python3").returncode == 0


def test_make_rebuilds_a_venv_made_by_another_python(project: Path) -> None:
    python = f"PYTHON={sys.executable}"
    fake_python(project / ".venv" / "bin" / "python", "ok cpython-3.99.0")
    out = make(project, ".venv/.installed", python)
    assert out.returncode == 0, out.stderr
    assert f".venv was made by cpython-3.99.0 (not {probe()}): making it again" in out.stdout
    assert "rm -rf .venv" in out.stdout and f"{sys.executable} -m venv .venv" in out.stdout
    # made by this very Python: kept
    fake_python(project / ".venv" / "bin" / "python", f"ok {probe()}")
    out = make(project, ".venv/.installed", python)
    assert out.returncode == 0, out.stderr
    assert "-m venv" not in out.stdout and "pip install" in out.stdout
    # its interpreter no longer runs (removed, or upgraded in place to a new minor): remade
    (project / ".venv" / "bin" / "python").unlink()
    out = make(project, ".venv/.installed", python)
    assert "made by broken" in out.stdout and "-m venv .venv" in out.stdout
