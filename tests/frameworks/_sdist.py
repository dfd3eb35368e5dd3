"""Fetch a package's source distribution (which ships its tests) with pip, once, and
extract one folder of it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "hitrate" / "sdists"


def sdist(name: str, version: str) -> Path:
    """The sdist of *name* *version*, downloaded by pip the first time."""
    CACHE.mkdir(parents=True, exist_ok=True)
    stem = name.replace("-", "_").lower()
    for found in CACHE.glob("*.tar.gz"):
        if found.name.lower() in (f"{stem}-{version}.tar.gz", f"{name.lower()}-{version}.tar.gz"):
            return found
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
         "--dest", str(CACHE), f"{name}=={version}"],
        check=True,
    )  # fmt: skip
    return sdist(name, version)


def extract(name: str, version: str, folder: str, dest: Path) -> Path:
    """Extract *folder* (``tests/cache/``) of the sdist into *dest*."""
    with tarfile.open(sdist(name, version)) as tar:
        members = [m for m in tar.getmembers() if m.name.split("/", 1)[-1].startswith(folder)]
        if not members:
            raise SystemExit(f"{name} {version}'s sdist has no {folder}")
        tmp = dest.parent / f".{dest.name}.tmp"
        tar.extractall(tmp, members=members, filter="data")
        src = tmp / members[0].name.split("/", 1)[0] / folder
        shutil.move(str(src), str(dest))
        shutil.rmtree(tmp)
    return dest
