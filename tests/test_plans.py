"""The plans, without Redis: each verb is stepped through a script of expected operations
and scripted replies (or a thrown CacheUnavailableError, or a loader exception at CALL).

Also the small value objects the plans use: Policy, escape_glob, the codecs, ``__all__``.
"""

from __future__ import annotations

import datetime as dt
import decimal
import math
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from types import ModuleType
from typing import Any

import pytest

import hitrate
from hitrate import plans
from hitrate.codec import DecodeError, decode_entry, encode_entry, make_codec
from hitrate.errors import (
    CacheUnavailableError,
    ConfigurationError,
    LoaderError,
    SerializationError,
    ValueTooLargeError,
)
from hitrate.keys import KeySpace
from hitrate.ops import CALL, Eval
from hitrate.policy import AGGREGATE, COUNTER, REFERENCE, USER, Policy, to_policy
from hitrate.testing import FakeClock

KEY = "user:42"
RKEY = "t:{user:42}"
LEASE = RKEY + ":lease"
WRITES = RKEY + ":w"
ERR = RKEY + ":err"
QUAD = [RKEY, LEASE, WRITES, RKEY + ":v"]
GRANTED = [2, b"", b""]


# -- the scripted runner -------------------------------------------------------------------


@dataclass(frozen=True)
class Throw:
    """Throw this exception into the plan instead of sending a reply."""

    exc: BaseException


def down() -> Throw:
    return Throw(CacheUnavailableError("scripted: Redis is unreachable"))


@dataclass(frozen=True)
class Do:
    """Call ``fn(op)`` at this step (to move a fake clock, say); its result is the reply."""

    fn: Callable[[Any], Any]


def name_of(op: Any) -> str:
    if op is CALL:
        return "CALL"
    if isinstance(op, tuple):
        return str(op[0])
    if isinstance(op, Eval):
        return op.script.name
    return type(op).__name__  # Batch, Sleep, Coalesce


class Script:
    """Steps a plan through ``(expected op name, reply)`` pairs and records what it yielded.

    A yielded op that is not the next expected one, an op after the script ended, or a
    return before the script ended all fail the test.
    """

    def __init__(self, *steps: tuple[str, Any]) -> None:
        self.steps = list(steps)
        self.ops: list[Any] = []

    def run(self, plan: Any) -> Any:
        send: Any = None
        throw: BaseException | None = None
        while True:
            try:
                op = plan.throw(throw) if throw is not None else plan.send(send)
            except StopIteration as stop:
                left = self.steps[len(self.ops) :]
                assert not left, f"plan returned {stop.value!r} before the steps {left}"
                return stop.value
            n = len(self.ops)
            self.ops.append(op)
            assert n < len(self.steps), f"plan yielded {op!r} after the script ended"
            expected, reply = self.steps[n]
            assert name_of(op) == expected, f"step {n}: expected {expected}, got {op!r}"
            send, throw = None, None
            if isinstance(reply, Do):
                reply = reply.fn(op)
            if isinstance(reply, Throw):
                throw = reply.exc
            else:
                send = reply

    def op(self, name: str, nth: int = 0) -> Any:
        return [o for o in self.ops if name_of(o) == name][nth]

    def names(self) -> list[str]:
        return [name_of(o) for o in self.ops]


class ScriptedRandom(random.Random):
    """An rng whose ``random()`` always returns *r* (to force or prevent XFetch)."""

    def __init__(self, r: float) -> None:
        super().__init__(0)
        self.r = r

    def random(self) -> float:
        return self.r


def make_ctx(policy: Policy | None = None, **options: Any) -> plans.Context:
    options.setdefault("rng", random.Random(0))
    return plans.Context(
        keys=KeySpace("t"),
        codec=hitrate.JsonCodec(),
        default_policy=policy or Policy(60),
        policies={},
        clock=FakeClock(),
        monotonic=FakeClock(1000.0),
        **options,
    )


def entry(ctx: plans.Context, value: Any, expires_in: float | None = 60.0, load_time=0.0):
    expires_at = ctx.clock() + expires_in if expires_in is not None else 0.0
    return encode_entry(ctx.codec, KEY, value, expires_at, load_time)


def counts(ctx: plans.Context, family: str = "user") -> Any:
    return ctx.stats.snapshot()[family]


# -- get -----------------------------------------------------------------------------------


def test_get_hit() -> None:
    ctx = make_ctx()
    script = Script(("GET", entry(ctx, {"name": "Ada"})))
    assert script.run(plans.get(ctx, KEY, "dflt")) == {"name": "Ada"}
    assert script.ops[0] == ("GET", RKEY)
    assert counts(ctx).hits == 1


def test_get_miss_returns_default() -> None:
    ctx = make_ctx()
    assert Script(("GET", None)).run(plans.get(ctx, KEY, "dflt")) == "dflt"
    assert counts(ctx).misses == 1


def test_get_logically_expired_entry_is_a_miss() -> None:
    ctx = make_ctx()
    raw = entry(ctx, "old", expires_in=10)
    ctx.clock.advance(10)  # type: ignore[attr-defined]
    assert Script(("GET", raw)).run(plans.get(ctx, KEY, "dflt")) == "dflt"
    assert (counts(ctx).hits, counts(ctx).misses) == (0, 1)


def test_get_entry_without_expiry_and_cached_none() -> None:
    ctx = make_ctx()
    assert Script(("GET", entry(ctx, "x", expires_in=None))).run(plans.get(ctx, KEY, 0)) == "x"
    cached_none = entry(ctx, None)
    assert Script(("GET", cached_none)).run(plans.get(ctx, KEY, hitrate.MISSING)) is None


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"garbage", id="too-short"),
        pytest.param(
            encode_entry(make_codec("msgpack"), KEY, "x", 0.0, 0.0), id="other-codec"
        ),
        pytest.param(
            encode_entry(hitrate.JsonCodec(), KEY, "x", 0.0, 0.0)[:16] + b"{not json",
            id="bad-payload",
        ),
    ],
)
def test_get_undecodable_bytes_are_unlinked_and_counted(raw: bytes) -> None:
    ctx = make_ctx()
    script = Script(("GET", raw), ("UNLINK", 1))
    assert script.run(plans.get(ctx, KEY, "dflt")) == "dflt"
    assert script.op("UNLINK") == ("UNLINK", RKEY)
    assert counts(ctx).decode_errors == 1
    assert counts(ctx).misses == 1


def test_get_undecodable_and_unlink_fails() -> None:
    ctx = make_ctx()
    assert Script(("GET", b"junk"), ("UNLINK", down())).run(plans.get(ctx, KEY, 7)) == 7


def test_get_unavailable_returns_default() -> None:
    ctx = make_ctx()
    assert Script(("GET", down())).run(plans.get(ctx, KEY, "dflt")) == "dflt"
    assert counts(ctx).fail_open == 1


def test_get_many_mixes_hits_misses_and_junk() -> None:
    ctx = make_ctx()
    good = encode_entry(ctx.codec, "user:1", 1, ctx.clock() + 60, 0.0)
    expired = encode_entry(ctx.codec, "user:4", 4, ctx.clock() - 1, 0.0)
    script = Script(("MGET", [good, None, b"junk", expired]), ("UNLINK", 1))
    found = script.run(plans.get_many(ctx, ["user:1", "user:2", "user:3", "user:4", "user:1"]))
    assert found == {"user:1": 1}
    assert script.ops[0] == ("MGET", "t:{user:1}", "t:{user:2}", "t:{user:3}", "t:{user:4}")
    assert script.op("UNLINK") == ("UNLINK", "t:{user:3}")


# -- get_or_fetch: hits and misses ---------------------------------------------------------


def test_get_or_fetch_hit_is_exactly_one_get() -> None:
    ctx = make_ctx()
    script = Script(("GET", entry(ctx, "cached")))
    assert script.run(plans.get_or_fetch(ctx, KEY, None)) == "cached"
    assert script.ops == [("GET", RKEY)]
    assert (counts(ctx).hits, counts(ctx).loads) == (1, 0)


def test_get_or_fetch_negative_hit() -> None:
    ctx = make_ctx()
    assert Script(("GET", entry(ctx, None))).run(plans.get_or_fetch(ctx, KEY, None)) is None
    assert counts(ctx).negative_hits == 1


def test_get_or_fetch_miss_takes_lease_loads_and_fills() -> None:
    ctx = make_ctx()
    script = Script(
        ("GET", None),
        ("Coalesce", None),
        ("lease", GRANTED),
        ("CALL", "v"),
        ("fill", 1),
        ("Publish", None),
    )
    assert script.run(plans.get_or_fetch(ctx, KEY, None)) == "v"
    assert script.op("Coalesce").rkey == RKEY
    assert script.op("Publish").value == "v"  # shared with coalesced callers
    lease, fill = script.op("lease"), script.op("fill")
    assert list(lease.keys) == [RKEY, LEASE]
    token = lease.args[0]
    assert tuple(lease.args[1:]) == (5000, "0")  # Policy.lease = 5 s, "0" = not a refresh
    assert list(fill.keys) == [RKEY, LEASE]
    assert fill.args[0] == token
    stored = decode_entry(ctx.codec, KEY, fill.args[1])
    assert (stored.value, stored.expires_at) == ("v", ctx.clock() + 60)
    assert tuple(fill.args[2:]) == (60_000, 0)
    c = counts(ctx)
    assert (c.misses, c.loads, c.fills) == (1, 1, 1)


def test_get_or_fetch_with_tags_passes_generations_to_fill() -> None:
    ctx = make_ctx()
    script = Script(
        ("GET", None), ("Coalesce", None), ("lease", [2, b"", b"", b"g1"]), ("CALL", 1), ("fill", 0)
    )
    assert script.run(plans.get_or_fetch(ctx, KEY, None, ("team",))) == 1
    assert list(script.op("lease").keys) == [RKEY, LEASE, "t:tag:{team}:gen"]
    fill = script.op("fill")
    assert list(fill.keys) == [RKEY, LEASE, "t:tag:{team}", "t:tag:{team}:gen"]
    assert tuple(fill.args[3:]) == (1, b"g1")
    assert counts(ctx).fills_refused == 1


def test_get_or_fetch_value_appears_at_lease_time() -> None:
    ctx = make_ctx()
    script = Script(("GET", None), ("Coalesce", None), ("lease", [1, entry(ctx, "theirs"), b""]))
    assert script.run(plans.get_or_fetch(ctx, KEY, None)) == "theirs"


def test_get_or_fetch_loader_none_not_cached_releases_lease() -> None:
    ctx = make_ctx(Policy(60, negative_ttl=0))
    script = Script(
        ("GET", None), ("Coalesce", None), ("lease", GRANTED), ("CALL", None), ("release", 1)
    )
    assert script.run(plans.get_or_fetch(ctx, KEY, None)) is None
    assert tuple(script.op("release").args[1:]) == ("", 0)


def test_get_or_fetch_loader_none_cached_for_negative_ttl() -> None:
    ctx = make_ctx(Policy(300))  # negative_ttl defaults to min(ttl, 60)
    script = Script(
        ("GET", None), ("Coalesce", None), ("lease", GRANTED), ("CALL", None), ("fill", 1)
    )
    assert script.run(plans.get_or_fetch(ctx, KEY, None)) is None
    fill = script.op("fill")
    assert decode_entry(ctx.codec, KEY, fill.args[1]).value is None
    assert fill.args[2] == 60_000


# -- get_or_fetch: waiting on another caller's lease ---------------------------------------


def test_lease_held_poll_until_value_appears() -> None:
    ctx = make_ctx()
    script = Script(
        ("GET", None),
        ("Coalesce", None),
        ("lease", [3, b"", b"h"]),
        ("Sleep", None),
        ("MGET", [None, b"h", None]),
        ("Sleep", None),
        ("MGET", [entry(ctx, "theirs"), None, None]),
    )
    assert script.run(plans.get_or_fetch(ctx, KEY, None)) == "theirs"
    assert "CALL" not in script.names()
    assert script.op("MGET") == ("MGET", RKEY, LEASE, ERR)
    first, second = script.op("Sleep").seconds, script.op("Sleep", 1).seconds
    assert 0 < first < second <= 0.05  # exponential backoff, capped
    assert counts(ctx).waits == 1


def test_lease_held_past_budget_loads_without_filling() -> None:
    ctx = make_ctx(Policy(60, lease=2.0))
    tick = Do(lambda op: ctx.monotonic.advance(1.0))  # type: ignore[attr-defined]
    script = Script(
        ("GET", None),
        ("Coalesce", None),
        ("lease", [3, b"", b"h"]),
        ("Sleep", tick),
        ("MGET", [None, b"h", None]),
        ("Sleep", tick),
        ("MGET", [None, b"h", None]),
        ("CALL", "mine"),  # no fill after it: the script ending here fails any further op
    )
    assert script.run(plans.get_or_fetch(ctx, KEY, None)) == "mine"
    assert script.op("Sleep").seconds <= 2.0
    assert counts(ctx).loads == 1


def test_holder_error_text_raises_loader_error() -> None:
    ctx = make_ctx()
    script = Script(
        ("GET", None),
        ("Coalesce", None),
        ("lease", [3, b"", b"h"]),
        ("Sleep", None),
        ("MGET", [None, b"h", b"h\nValueError: db said no"]),
    )
    with pytest.raises(LoaderError, match=r"'user:42'.*ValueError: db said no"):
        script.run(plans.get_or_fetch(ctx, KEY, None))
    assert "CALL" not in script.names()


def test_error_of_an_earlier_holder_is_ignored() -> None:
    ctx = make_ctx()
    script = Script(
        ("GET", None),
        ("Coalesce", None),
        ("lease", [3, b"", b"h"]),
        ("Sleep", None),
        ("MGET", [None, b"h", b"older\nValueError: stale news"]),
        ("Sleep", None),
        ("MGET", [entry(ctx, "ok"), None, b"older\nValueError: stale news"]),
    )
    assert script.run(plans.get_or_fetch(ctx, KEY, None)) == "ok"


def test_holder_released_without_fill_then_we_take_the_lease() -> None:
    ctx = make_ctx()
    script = Script(
        ("GET", None),
        ("Coalesce", None),
        ("lease", [3, b"", b"h"]),
        ("Sleep", None),
        ("MGET", [None, None, None]),
        ("lease", GRANTED),
        ("CALL", "v"),
        ("fill", 1),
    )
    assert script.run(plans.get_or_fetch(ctx, KEY, None)) == "v"


def test_loader_exception_releases_lease_then_reraises() -> None:
    ctx = make_ctx()
    boom = RuntimeError("db down")
    script = Script(
        ("GET", None), ("Coalesce", None), ("lease", GRANTED), ("CALL", Throw(boom)), ("release", 1)
    )
    with pytest.raises(RuntimeError) as info:
        script.run(plans.get_or_fetch(ctx, KEY, None))
    assert info.value is boom
    release = script.op("release")
    assert list(release.keys) == [LEASE, ERR]
    assert tuple(release.args) == (
        script.op("lease").args[0],
        "RuntimeError: db down",
        plans.ERROR_TEXT_MS,
    )


def test_loader_exception_still_raised_when_release_fails() -> None:
    ctx = make_ctx()
    boom = KeyError("gone")
    script = Script(
        ("GET", None),
        ("Coalesce", None),
        ("lease", GRANTED),
        ("CALL", Throw(boom)),
        ("release", down()),
    )
    with pytest.raises(KeyError) as info:
        script.run(plans.get_or_fetch(ctx, KEY, None))
    assert info.value is boom


# -- get_or_fetch: fail-open ---------------------------------------------------------------


def test_unavailable_at_get_loads_and_returns() -> None:
    ctx = make_ctx()
    script = Script(("GET", down()), ("CALL", "v"))
    assert script.run(plans.get_or_fetch(ctx, KEY, None)) == "v"
    assert (counts(ctx).fail_open, counts(ctx).loads) == (1, 1)


def test_unavailable_at_lease_loads_and_returns() -> None:
    ctx = make_ctx()
    script = Script(("GET", None), ("Coalesce", None), ("lease", down()), ("CALL", "v"))
    assert script.run(plans.get_or_fetch(ctx, KEY, None)) == "v"
    assert counts(ctx).fail_open == 1


def test_unavailable_while_polling_loads_and_returns() -> None:
    ctx = make_ctx()
    script = Script(
        ("GET", None),
        ("Coalesce", None),
        ("lease", [3, b"", b"h"]),
        ("Sleep", None),
        ("MGET", down()),
        ("CALL", "v"),
    )
    assert script.run(plans.get_or_fetch(ctx, KEY, None)) == "v"


def test_unavailable_at_fill_still_returns_value() -> None:
    ctx = make_ctx()
    script = Script(
        ("GET", None), ("Coalesce", None), ("lease", GRANTED), ("CALL", "v"), ("fill", down())
    )
    assert script.run(plans.get_or_fetch(ctx, KEY, None)) == "v"
    assert counts(ctx).fail_open == 1


# -- get_or_fetch: stale-while-revalidate and XFetch ---------------------------------------


def test_stale_entry_refresh_lease_granted_loads_and_fills() -> None:
    ctx = make_ctx(Policy(60, stale=30))
    raw = entry(ctx, "old", expires_in=-10)  # logically expired 10 s ago, within stale
    script = Script(("GET", raw), ("lease", GRANTED), ("CALL", "new"), ("fill", 1))
    assert script.run(plans.get_or_fetch(ctx, KEY, None)) == "new"
    assert script.op("lease").args[2] == "1"  # refresh: take the lease although it exists
    assert script.op("fill").args[2] == 90_000  # Redis keeps it ttl + stale
    assert counts(ctx).fills == 1


def test_stale_entry_lease_held_serves_old_value() -> None:
    ctx = make_ctx(Policy(60, stale=30))
    raw = entry(ctx, "old", expires_in=-10)
    script = Script(("GET", raw), ("lease", [3, b"", b"h"]))
    assert script.run(plans.get_or_fetch(ctx, KEY, None)) == "old"
    assert counts(ctx).stale_hits == 1


def test_stale_entry_lease_unavailable_serves_old_value() -> None:
    ctx = make_ctx(Policy(60, stale=30))
    script = Script(("GET", entry(ctx, "old", expires_in=-10)), ("lease", down()))
    assert script.run(plans.get_or_fetch(ctx, KEY, None)) == "old"


def test_past_the_stale_window_is_a_plain_miss() -> None:
    ctx = make_ctx(Policy(60, stale=30))
    raw = entry(ctx, "old", expires_in=-31)
    script = Script(
        ("GET", raw), ("Coalesce", None), ("lease", GRANTED), ("CALL", "new"), ("fill", 1)
    )
    assert script.run(plans.get_or_fetch(ctx, KEY, None)) == "new"
    assert script.op("lease").args[2] == "0"


def test_xfetch_forced_early_refresh() -> None:
    # now - load_time * beta * ln(1 - r) >= expires_at: with r -> 1 the term is large.
    ctx = make_ctx(Policy(60, early=1.0), rng=ScriptedRandom(0.99))
    raw = entry(ctx, "old", expires_in=5, load_time=2.0)  # 2 * -ln(0.01) = 9.2 s >= 5 s
    script = Script(("GET", raw), ("lease", GRANTED), ("CALL", "new"), ("fill", 1))
    assert script.run(plans.get_or_fetch(ctx, KEY, None)) == "new"
    assert script.op("lease").args[2] == "1"


def test_xfetch_early_refresh_lease_held_serves_current_value() -> None:
    ctx = make_ctx(Policy(60, early=1.0), rng=ScriptedRandom(0.99))
    raw = entry(ctx, "cur", expires_in=5, load_time=2.0)
    assert Script(("GET", raw), ("lease", [3, b"", b"h"])).run(
        plans.get_or_fetch(ctx, KEY, None)
    ) == "cur"


@pytest.mark.parametrize("r", [0.0, 0.5])
def test_xfetch_not_drawn_is_a_plain_hit(r: float) -> None:
    ctx = make_ctx(Policy(60, early=1.0), rng=ScriptedRandom(r))
    raw = entry(ctx, "cur", expires_in=5, load_time=2.0)  # 2 * -ln(0.5) = 1.4 s < 5 s
    assert Script(("GET", raw)).run(plans.get_or_fetch(ctx, KEY, None)) == "cur"


def test_xfetch_never_refreshes_an_entry_without_expiry() -> None:
    # An entry stored with no logical expiry (e.g. set(..., ttl=COUNTER)) read under a
    # policy with early refresh: there is no expiry to refresh "before", so it is a hit.
    ctx = make_ctx(Policy(60, early=1.0), rng=ScriptedRandom(0.0))
    raw = entry(ctx, "forever", expires_in=None)
    assert Script(("GET", raw)).run(plans.get_or_fetch(ctx, KEY, None)) == "forever"


# -- write-through -------------------------------------------------------------------------


@pytest.mark.parametrize(("in_flight", "conflict"), [(1, "0"), (2, "1"), (5, "1")])
def test_write_through_begin_save_end(in_flight: int, conflict: str) -> None:
    ctx = make_ctx()
    script = Script(("write_begin", in_flight), ("CALL", None), ("write_end", 1))
    assert script.run(plans.write_through(ctx, KEY, {"v": 1}, None)) == {"v": 1}
    begin, end = script.op("write_begin"), script.op("write_end")
    assert list(begin.keys) == [LEASE, WRITES]
    token = begin.args[0]
    assert begin.args[1] == 30_000
    assert list(end.keys) == [RKEY, LEASE, WRITES]
    assert end.args[0] == token
    assert end.args[1] == conflict
    assert decode_entry(ctx.codec, KEY, end.args[2]).value == {"v": 1}
    assert end.args[3] == 60_000
    assert end.args[4] != token


def test_write_through_save_raises_ends_with_conflict_and_reraises() -> None:
    ctx = make_ctx()
    boom = OSError("disk full")
    script = Script(("write_begin", 1), ("CALL", Throw(boom)), ("write_end", 0))
    with pytest.raises(OSError) as info:
        script.run(plans.write_through(ctx, KEY, "v", None))
    assert info.value is boom
    end = script.op("write_end")
    assert end.args[0] == script.op("write_begin").args[0]
    assert tuple(end.args[1:4]) == ("1", b"", 0)
    assert not ctx.pending


def test_write_through_save_raises_and_end_unavailable_is_remembered() -> None:
    ctx = make_ctx()
    script = Script(("write_begin", 1), ("CALL", Throw(ValueError("x"))), ("write_end", down()))
    with pytest.raises(ValueError, match="x"):
        script.run(plans.write_through(ctx, KEY, "v", None))
    assert ctx.pending == {KEY}


def test_write_through_begin_unavailable_invalidates_after_save() -> None:
    ctx = make_ctx()
    script = Script(("write_begin", down()), ("CALL", None), ("invalidate", 0))
    assert script.run(plans.write_through(ctx, KEY, "v", None)) == "v"
    assert list(script.op("invalidate").keys) == [RKEY, LEASE, WRITES]
    assert not ctx.pending


def test_write_through_begin_and_invalidate_unavailable_is_remembered() -> None:
    ctx = make_ctx()
    script = Script(("write_begin", down()), ("CALL", None), ("invalidate", down()))
    assert script.run(plans.write_through(ctx, KEY, "v", None)) == "v"
    assert ctx.pending == {KEY}


def test_write_through_end_unavailable_is_remembered() -> None:
    ctx = make_ctx()
    script = Script(("write_begin", 1), ("CALL", None), ("write_end", down()))
    assert script.run(plans.write_through(ctx, KEY, "v", None)) == "v"
    assert ctx.pending == {KEY}
    assert counts(ctx).fail_open == 1


# -- invalidate and set --------------------------------------------------------------------


def test_invalidate_sends_triples() -> None:
    ctx = make_ctx()
    script = Script(("invalidate", 1))
    assert script.run(plans.invalidate(ctx, ["user:1", "user:2"])) == 1
    assert list(script.op("invalidate").keys) == [
        *("t:{user:1}", "t:{user:1}:lease", "t:{user:1}:w"),
        *("t:{user:2}", "t:{user:2}:lease", "t:{user:2}:w"),
    ]
    assert counts(ctx).invalidations == 2


def test_invalidate_nothing_yields_nothing() -> None:
    assert Script().run(plans.invalidate(make_ctx(), [])) == 0


def test_invalidate_unavailable_remembers_keys() -> None:
    ctx = make_ctx()
    assert Script(("invalidate", down())).run(plans.invalidate(ctx, ["user:1", "user:2"])) == 0
    assert ctx.pending == {"user:1", "user:2"}
    assert counts(ctx).fail_open == 2


def test_pending_invalidations_are_bounded() -> None:
    ctx = make_ctx()
    ctx.pending = {f"k:{i}" for i in range(plans.MAX_PENDING)}
    Script(("invalidate", down())).run(plans.invalidate(ctx, ["user:1"]))
    assert len(ctx.pending) == plans.MAX_PENDING
    assert "user:1" not in ctx.pending


def test_set_unavailable_remembers_key() -> None:
    ctx = make_ctx()
    assert Script(("set", down())).run(plans.set_(ctx, KEY, "v", None)) is False
    assert ctx.pending == {KEY}


# -- refusing values before anything is written --------------------------------------------


def _first_op_raises(plan: Any, exc: type[Exception]) -> None:
    """The plan raises at its first step, so it never yielded an operation."""
    with pytest.raises(exc):
        next(plan)


def test_too_large_values_are_refused_before_any_op() -> None:
    ctx = make_ctx(max_value_size=100)
    big = "x" * 200
    _first_op_raises(plans.write_through(ctx, KEY, big, None), ValueTooLargeError)
    _first_op_raises(plans.set_(ctx, KEY, big, None), ValueTooLargeError)
    _first_op_raises(plans.set_many(ctx, {"user:1": "ok", KEY: big}, None), ValueTooLargeError)
    with pytest.raises(ValueTooLargeError, match=r"'user:42'.*max_value_size=100"):
        ctx.encode(KEY, big, Policy(60))


def test_unencodable_value_is_refused_before_save() -> None:
    ctx = make_ctx()
    _first_op_raises(
        plans.write_through(ctx, KEY, decimal.Decimal("1.5"), None), SerializationError
    )


# -- Policy --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ttl", "seconds"),
    [(300, 300.0), (1.5, 1.5), (timedelta(minutes=5), 300.0), (Policy(42), 42.0)],
)
def test_ttl_accepts_int_float_timedelta_policy(ttl: Any, seconds: float) -> None:
    policy = to_policy(ttl, USER)
    assert isinstance(policy, Policy)
    assert policy.ttl == seconds
    assert Policy(timedelta(seconds=90), stale=timedelta(seconds=5)).stale == 5.0


def test_ttl_none_means_default_and_policy_passes_through() -> None:
    assert to_policy(None, USER) is USER
    assert to_policy(AGGREGATE, USER) is AGGREGATE


@pytest.mark.parametrize(
    "ttl", [-1, 0, -0.5, math.nan, math.inf, True, False, "60", b"60", [60], timedelta(-1)]
)
def test_invalid_ttl_raises_configuration_error(ttl: Any) -> None:
    with pytest.raises(ConfigurationError):
        Policy(ttl)
    with pytest.raises(ConfigurationError):
        to_policy(ttl, USER)


@pytest.mark.parametrize(
    "options",
    [
        {"jitter": -1},
        {"jitter": math.nan},
        {"stale": "5"},
        {"early": -1},
        {"early": math.nan},
        {"early": True},
        {"lease": 0},
        {"negative_ttl": -1},
    ],
)
def test_invalid_policy_options_raise(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        Policy(60, **options)


def test_configuration_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        Policy(-1)
    with pytest.raises(ConfigurationError):
        Policy(None, jitter=5)


def test_jitter_draws_are_bounded_and_reproducible() -> None:
    policy = Policy(60, jitter=10)
    draws = [policy.draw_ttl(rng) for rng in [random.Random(7)] for _ in range(200)]
    again = [policy.draw_ttl(rng) for rng in [random.Random(7)] for _ in range(200)]
    assert draws == again
    assert all(60 <= d <= 70 for d in draws)
    assert max(draws) - min(draws) > 5  # actually spread out, not a constant
    assert Policy(60).draw_ttl(random.Random(1)) == 60


def _range(policy: Policy) -> tuple[float, float]:
    rng = random.Random(3)
    draws = [policy.draw_ttl(rng) for _ in range(500)]
    return min(draws), max(draws)


def test_presets() -> None:
    low, _ = _range(REFERENCE)
    assert REFERENCE.ttl is not None and REFERENCE.ttl >= 3600 and low >= 3600
    low, high = _range(USER)
    assert 300 <= low and high <= 600
    low, high = _range(AGGREGATE)
    assert 60 <= low and high <= 300
    assert COUNTER.ttl is None
    assert COUNTER.draw_ttl(random.Random(0)) is None
    _, px = make_ctx().encode("counter:1", 5, COUNTER)
    assert px == 0  # no Redis expiry either


# -- keys ----------------------------------------------------------------------------------


def test_escape_glob() -> None:
    assert hitrate.escape_glob("a*b?c[d]e\\f") == r"a\*b\?c\[d\]e\\f"
    assert hitrate.escape_glob("user:42-plain_text") == "user:42-plain_text"
    assert hitrate.escape_glob("**") == r"\*\*"
    pattern = KeySpace("t").pattern(f"user:{hitrate.escape_glob('*')}:*")
    assert pattern == r"t:{user:\*:*}*"


# -- codecs --------------------------------------------------------------------------------


def test_json_refuses_decimal_naming_the_key() -> None:
    codec = hitrate.JsonCodec()
    with pytest.raises(SerializationError, match=r"price:7") as info:
        encode_entry(codec, "price:7", {"amount": decimal.Decimal("9.99")}, 0.0, 0.0)
    assert isinstance(info.value, TypeError)


def test_msgpack_round_trips_rich_types() -> None:
    codec = hitrate.MsgpackCodec()
    value = {
        "aware": dt.datetime(2024, 5, 1, 12, 30, 15, 123456, tzinfo=dt.UTC),
        "offset": dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.timezone(timedelta(hours=5.5))),
        "naive": dt.datetime(2024, 5, 1, 12, 30),
        "date": dt.date(2024, 2, 29),
        "uuid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
        "decimal": decimal.Decimal("12.3400"),
        "set": {1, 2, 3},
        "tuple": (1, "two", (3.0, None)),
        "bytes": b"\x00\xffraw",
        "list": [decimal.Decimal("1"), dt.date(2000, 1, 1)],
    }
    back = decode_entry(codec, "k", encode_entry(codec, "k", value, 0.0, 0.0)).value
    assert back == value
    for name, original in value.items():
        assert type(back[name]) is type(original), name
    assert back["aware"].utcoffset() == timedelta(0)
    assert back["offset"].utcoffset() == timedelta(hours=5.5)
    assert back["naive"].tzinfo is None
    assert str(back["decimal"]) == "12.3400"
    assert type(back["tuple"][2]) is tuple


_UNPICKLED: list[str] = []


def _record(tag: str) -> str:
    _UNPICKLED.append(tag)
    return tag


class SideEffect:
    """Unpickling this calls ``_record``: proof that a payload was unpickled."""

    def __init__(self, tag: str) -> None:
        self.tag = tag

    def __reduce__(self) -> tuple[Any, ...]:
        return (_record, (self.tag,))


SECRET = b"0123456789abcdef"


@pytest.mark.parametrize("secret", [b"", b"short", b"x" * 15, "y" * 32, None])
def test_pickle_needs_a_real_secret(secret: Any) -> None:
    with pytest.raises(ConfigurationError):
        hitrate.PickleCodec(secret)
    with pytest.raises(ConfigurationError):
        make_codec("pickle", secret)


def test_pickle_round_trips() -> None:
    codec = hitrate.PickleCodec(SECRET)
    value = {"when": dt.datetime(2024, 1, 1), "frozen": frozenset({1}), "c": 1 + 2j}
    assert decode_entry(codec, KEY, encode_entry(codec, KEY, value, 0.0, 0.0)).value == value


def test_pickle_payload_is_unpickled_only_when_signed_for_this_key() -> None:
    codec = hitrate.PickleCodec(SECRET)
    raw = encode_entry(codec, KEY, SideEffect("ran"), 0.0, 0.0)
    _UNPICKLED.clear()
    assert decode_entry(codec, KEY, raw).value == "ran"  # control: the detector works
    assert _UNPICKLED == ["ran"]
    _UNPICKLED.clear()

    header = 16
    tampered_sig = bytearray(raw)
    tampered_sig[header] ^= 1
    tampered_body = bytearray(raw)
    tampered_body[-2] ^= 1
    others = {
        "signature flipped": bytes(tampered_sig),
        "body flipped": bytes(tampered_body),
        "truncated": raw[: header + 10],
    }
    for what, bad in others.items():
        with pytest.raises(DecodeError):
            decode_entry(codec, KEY, bad)
        assert _UNPICKLED == [], what
    with pytest.raises(DecodeError):
        decode_entry(codec, "user:43", raw)  # replayed under another key
    with pytest.raises(DecodeError):
        decode_entry(hitrate.PickleCodec(b"another secret, 16+ bytes"), KEY, raw)
    assert _UNPICKLED == []


# -- the public API ------------------------------------------------------------------------

EXPORTS = [
    "AGGREGATE",
    "COUNTER",
    "MISSING",
    "REFERENCE",
    "USER",
    "AsyncCache",
    "Breaker",
    "Cache",
    "CacheUnavailableError",
    "CircuitOpenError",
    "ConfigurationError",
    "HitrateError",
    "InvalidKeyError",
    "JsonCodec",
    "LoaderError",
    "MsgpackCodec",
    "PickleCodec",
    "Policy",
    "SerializationError",
    "ValueTooLargeError",
    "__version__",
    "escape_glob",
]


def _isort_style(name: str) -> tuple[int, str]:
    """Ruff's RUF022 order: SCREAMING_CASE, then CamelCase, then everything else."""
    if name.isupper():
        return (0, name)
    if name[0].isupper():
        return (1, name)
    return (2, name)


def test_exported_members() -> None:
    assert hitrate.__all__ == sorted(hitrate.__all__, key=_isort_style)
    assert hitrate.__all__ == EXPORTS
    public = {
        name
        for name, value in vars(hitrate).items()
        if not name.startswith("_") and not isinstance(value, ModuleType)
    }
    assert public | {"__version__"} == set(hitrate.__all__)
    for name in hitrate.__all__:
        assert getattr(hitrate, name) is not None
