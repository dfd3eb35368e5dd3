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
FILL_SLOT = script("fill_slot")  # Redis Cluster: fill.lua's checks come after (tag_add, unfill)
TAG_ADD = script("tag_add")
UNFILL = script("unfill")
HELD = script("held")
EPOCHS = script("epochs")
TAG_VERSION = script("tag_version")
RELEASE = script("release")
POLL = script("poll")
INVALIDATE = script("invalidate")
SET = script("set")
WRITE_BEGIN = script("write_begin")
WRITE_END = script("write_end")

# the data structures (hitrate.structures)
OBJ_PUT = script("obj_put")
OBJ_UPDATE = script("obj_update")
OBJ_LEASE = script("obj_lease")
OBJ_FILL = script("obj_fill")
LB_WRITE = script("lb_write")
LB_AROUND = script("lb_around")
SEEN_ADD = script("seen_add")
HLL_ADD = script("hll_add")
HLL_MERGE = script("hll_merge")
RL_FIXED = script("rl_fixed")
RL_SLIDING = script("rl_sliding")
RL_GCRA = script("rl_gcra")
