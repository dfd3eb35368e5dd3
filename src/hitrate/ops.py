"""What a plan can ask its driver for. Plans yield these and receive the replies.

* a plain ``tuple`` such as ``("GET", key)`` -> one Redis command, reply sent back
* :class:`Eval` -> one Lua script by EVALSHA (EVAL on NOSCRIPT), reply sent back
* :class:`Batch` -> several commands/scripts in one round trip (a pipeline), list of replies
* :data:`CALL` -> call the user's function (the loader, or the save of a write-through);
  its return value is sent back, its exception thrown into the plan
* :class:`CallWith` -> the same, with arguments the plan decided (``get_or_fetch_many``
  calls its loader with the keys that missed)
* :class:`Sleep` -> wait (``time.sleep`` or ``asyncio.sleep``); with ``wake=`` an entry
  key, a fill of that key published by Redis ends the wait early (:mod:`hitrate.listener`)
* :class:`Spawn` -> run another plan in the background (a worker thread, or an asyncio
  task) with the same user function and the caller's ``contextvars``; sends back ``True``,
  or ``False`` when refused (this process already refreshes that key, or too many
  background plans are queued): the plan then cleans up after the spawned plan itself
* :class:`Coalesce` -> single flight inside this process: if another thread/task of this
  process is already filling the same key, the driver waits for it. If that caller
  :class:`Publish`-es a value fresh for this one, the driver drops this plan and returns
  the value, and sends :data:`ALONE` if it finished without one (its fill was refused
  because a write overlapped its load, so its value may be older than a write that
  completed before we started): this plan goes on by itself. With no other caller, it
  sends :data:`LEAD`: the plan goes on as the leader. If the other caller takes longer
  than ``wait`` seconds, it sends :data:`TIMEOUT`: stop waiting.
* :class:`Publish` -> the value this plan returns is good for the callers coalesced on it
  that arrived before the Redis command that vouched for it was sent (with
  ``loaded=True``, Redis is down and vouches for nothing: every waiter shares the load)

When Redis fails, the driver throws :class:`~hitrate.errors.CacheUnavailableError` into the
plan at the ``yield`` that failed (or raises it to the caller in strict mode).
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any, Final

from .scripts import LuaScript

__all__ = [
    "ALONE",
    "CALL",
    "CallWith",
    "LEAD",
    "TIMEOUT",
    "Batch",
    "Coalesce",
    "Eval",
    "Op",
    "Plan",
    "Publish",
    "Sleep",
    "Spawn",
]

#: What the driver sends back for :class:`Coalesce`.
LEAD: Final = "lead"
ALONE: Final = "alone"
TIMEOUT: Final = "timeout"


@dataclass(frozen=True, slots=True)
class Eval:
    script: LuaScript
    keys: Sequence[str]
    args: Sequence[Any]


@dataclass(frozen=True, slots=True)
class Batch:
    ops: Sequence[tuple[Any, ...] | Eval]


@dataclass(frozen=True, slots=True)
class EachNode:
    """One keyless command (``INFO``, ``DBSIZE``) sent to every primary - one server, or
    each primary of a Cluster; the reply is ``[(node name, its reply), ...]``."""

    command: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Sleep:
    seconds: float
    #: The entry key whose fill may end the sleep early (the waiter marked it, see
    #: poll.lua): the driver then waits on the listener's wake-up instead of sleeping.
    wake: str = ""


@dataclass(frozen=True, slots=True)
class Publish:
    value: Any
    loaded: bool = False


@dataclass(frozen=True, slots=True)
class Spawn:
    plan: Generator[Any, Any, Any]
    key: str = ""  # at most one background plan per key at a time in this process


@dataclass(frozen=True, slots=True)
class Coalesce:
    rkey: str
    wait: float | None = None  # longest wait for the other caller; then TIMEOUT is sent


class _Call:
    __slots__ = ()

    def __repr__(self) -> str:
        return "CALL"


CALL: Final = _Call()


@dataclass(frozen=True, slots=True)
class CallWith:
    args: tuple[Any, ...]


Op = (
    tuple[Any, ...]
    | Eval
    | Batch
    | EachNode
    | Sleep
    | Coalesce
    | Publish
    | Spawn
    | _Call
    | CallWith
)
Plan = Generator[Op, Any, Any]
