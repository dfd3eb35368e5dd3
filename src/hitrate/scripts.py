"""The Lua scripts, one file per atomic operation in ``hitrate/lua/``.

Each script is loaded once, called by EVALSHA, and re-sent with EVAL when the server
answers NOSCRIPT (after a restart or SCRIPT FLUSH). Every key a script touches comes in
through KEYS, and the keys of one call share a hash tag, so scripts run on Redis Cluster.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

__all__ = ["LuaScript", "script"]


@dataclass(frozen=True, slots=True)
class LuaScript:
    """One script: its name, source and SHA1 (what EVALSHA needs)."""

    name: str
    source: bytes
    sha: str


_LOADED: dict[str, LuaScript] = {}


def script(name: str) -> LuaScript:
    """The script ``hitrate/lua/<name>.lua``, read once per process."""
    found = _LOADED.get(name)
    if found is None:
        source = resources.files("hitrate").joinpath("lua", f"{name}.lua").read_bytes()
        found = LuaScript(name, source, hashlib.sha1(source).hexdigest())
        _LOADED[name] = found
    return found


LEASE = script("lease")
FILL = script("fill")
RELEASE = script("release")
INVALIDATE = script("invalidate")
SET = script("set")
WRITE_BEGIN = script("write_begin")
WRITE_END = script("write_end")
