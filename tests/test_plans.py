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
from datetime import timedelta
from types import ModuleType
from typing import Any, NamedTuple

import pytest

import hitrate
from hitrate import plans
from hitrate.codec import HEADER, DecodeError, decode_entry, encode_entry, make_codec
from hitrate.generations import Generations
from hitrate.keys import KeySpace
from hitrate.ops import CALL, LEAD, Eval
from hitrate.owed import MAX_OWED
from hitrate.policy import AGGREGATE, COUNTER, REFERENCE, USER, Policy, to_policy
from hitrate.testing import FakeClock

KEY = "user:42"
RKEY = "t:{user:42}"
LEASE = RKEY + ":lease"
WRITES = RKEY + ":w"
ERR = RKEY + ":err"
QUAD = [RKEY, LEASE, WRITES, RKEY + ":v"]
GEN = "t:~gen"
GENS = [b"", b"", b"", b"", b""]  # lease.lua's fill epochs, namespace tokens and hash id
GRANTED = [2, b"", b"", *GENS]


# -- the scripted runner -------------------------------------------------------------------
class Throw(NamedTuple):
    exc: BaseException  # thrown into the plan instead of sending a reply


class Do(NamedTuple):
    fn: Callable[[Any], Any]  # called with the op (to move a fake clock); gives the reply


def down() -> Throw:
    return Throw(hitrate.CacheUnavailableError("scripted: Redis is unreachable"))


def name_of(op: Any) -> str:
    if op is CALL:
        return "CALL"
    if isinstance(op, tuple):
        return str(op[0])
    return op.script.name if isinstance(op, Eval) else type(op).__name__  # Sleep, Spawn...


def describe(op: Any) -> str:  # an Eval's repr would hold the whole Lua source
    if isinstance(op, Eval):
        return f"Eval({op.script.name}, {list(op.keys)}, {op.args!r})"
    return repr(op)


class Script:
    """Steps a plan through ``(expected op name, reply)`` pairs, recording what it yielded;
    an unexpected op, an op past the end or a return before the end fails the test."""

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
                result = stop.value
                break
            n = len(self.ops)
            self.ops.append(op)
            assert n < len(self.steps), f"plan yielded {describe(op)} after the script ended"
            expected, reply = self.steps[n]
            assert name_of(op) == expected, f"step {n}: expected {expected}, got {describe(op)}"
            send, throw = None, None
            if isinstance(reply, Do):
                reply = reply.fn(op)
            if isinstance(reply, Throw):
                throw = reply.exc
            else:
                send = reply
        left = self.steps[len(self.ops) :]
        assert not left, f"plan returned {result!r} before the steps {left}"
        return result

    def op(self, name: str, nth: int = 0) -> Any:
        return [o for o in self.ops if name_of(o) == name][nth]

    def names(self) -> list[str]:
        return [name_of(o) for o in self.ops]


def fixed_rng(r: float) -> random.Random:
    """An rng whose ``random()`` always returns *r* (to force or prevent XFetch)."""
    rng = random.Random(0)
    rng.random = lambda: r  # type: ignore[method-assign]
    return rng


NOW = FakeClock().now  # every context's wall clock starts here


def make_ctx(policy: Policy | None = None, **options: Any) -> plans.Context:
    options.setdefault("rng", random.Random(0))
    gens = Generations(math.inf)
    gens.replace({})  # read once, never due again: no HGETALL in the scripts
    options.setdefault("gens", gens)
    return plans.Context(
        keys=KeySpace("t"),
        codec=hitrate.JsonCodec(),
        default_policy=policy or Policy(60),
        policies={},
        clock=FakeClock(NOW),
        monotonic=FakeClock(1000.0),
        **options,
    )


def entry(value: Any, expires_in: float | None = 60.0, load_time: float = 0.0) -> bytes:
    """A JSON entry for KEY, logically expiring *expires_in* s after NOW (None: never)."""
    expires_at = NOW + expires_in if expires_in is not None else 0.0
    return encode_entry(hitrate.JsonCodec(), KEY, value, expires_at, load_time)


def owed_keys(ctx: plans.Context) -> set[str]:
    """The user keys whose invalidation is owed to Redis."""
    return {ctx.keys.user_key(rkey) for rkey in ctx.owed.entries()}


def counts(ctx: plans.Context, family: str = "user") -> Any:
    return ctx.stats.snapshot()[family]


# -- get -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("reply", "default", "expected", "counter"),
    [
        pytest.param(entry({"name": "Ada"}), "d", {"name": "Ada"}, "hits", id="hit"),
        pytest.param(None, "d", "d", "misses", id="miss"),
        pytest.param(entry("old", expires_in=-1), "d", "d", "misses", id="expired"),
        pytest.param(entry("old", expires_in=0), "d", "d", "misses", id="expiring-now"),
        pytest.param(entry("x", expires_in=None), "d", "x", "hits", id="no-expiry"),
        pytest.param(entry(None), hitrate.MISSING, None, "hits", id="cached-none"),
        pytest.param(down(), "d", "d", "fail_open", id="unavailable"),
    ],
)
def test_get(reply: Any, default: Any, expected: Any, counter: str) -> None:
    ctx = make_ctx()
    script = Script(("GET", reply))
    assert script.run(plans.get(ctx, KEY, default)) == expected
    assert script.ops == [("GET", RKEY)]
    assert getattr(counts(ctx), counter) == 1


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"garbage", id="too-short"),
        pytest.param(entry("x")[:16] + b"{not json", id="bad-payload"),
    ],
)
@pytest.mark.parametrize("unlinked", [1, down()], ids=["unlinked", "unlink-failed"])
def test_get_undecodable_bytes_are_unlinked_and_counted(raw: bytes, unlinked: Any) -> None:
    ctx = make_ctx()
    script = Script(("GET", raw), ("UNLINK", unlinked))
    assert script.run(plans.get(ctx, KEY, "dflt")) == "dflt"
    assert script.op("UNLINK") == ("UNLINK", RKEY)
    assert (counts(ctx).decode_errors, counts(ctx).misses) == (1, 1)


# -- get_or_fetch: hits and misses ---------------------------------------------------------

MISS = (("GET", None), ("Coalesce", LEAD))  # nothing cached; we lead inside this process
HELD = ("lease", [3, b"", b"h", *GENS])  # the caller with token "h" holds the fill lease
NAP = ("Sleep", None)


def loads(value: Any, filled: int = 1) -> tuple[tuple[str, Any], ...]:
    """The loader returns *value*; the fill is accepted (1) or refused (0). Only an accepted
    fill publishes the value to the callers coalesced on this one."""
    steps = (("CALL", value), ("fill", filled))
    return (*steps, ("Publish", None)) if filled else steps


def fetch(ctx: plans.Context, tags: tuple[str, ...] = ()) -> Any:
    return plans.get_or_fetch(ctx, KEY, None, tags)


@pytest.mark.parametrize(("value", "counter"), [("cached", "hits"), (None, "negative_hits")])
def test_get_or_fetch_hit_is_exactly_one_get(value: Any, counter: str) -> None:
    ctx = make_ctx()
    script = Script(("GET", entry(value)))
    assert script.run(fetch(ctx)) == value
    assert script.ops == [("GET", RKEY)]
    assert (getattr(counts(ctx), counter), counts(ctx).loads) == (1, 0)


def test_get_or_fetch_miss_takes_lease_loads_and_fills() -> None:
    ctx = make_ctx()
    script = Script(*MISS, ("lease", GRANTED), *loads("v"))
    assert script.run(fetch(ctx)) == "v"
    assert script.op("Coalesce").rkey == RKEY
    assert script.op("Publish").value == "v"  # shared with coalesced callers
    lease, fill = script.op("lease"), script.op("fill")
    assert list(lease.keys) == [RKEY, LEASE, WRITES, GEN]
    # Policy.lease = 5 s; b"": not a refresh; the family, for its fill epoch
    assert tuple(lease.args[1:4]) == (5000, b"", "user")
    assert list(fill.keys) == [RKEY, LEASE, GEN, RKEY + ":wait"]  # waiters' mark: wake them
    assert fill.args[0] == lease.args[0]  # the token the lease was granted to
    stored = decode_entry(ctx.codec, KEY, fill.args[1])
    assert (stored.value, stored.expires_at) == ("v", ctx.clock() + 60)
    assert tuple(fill.args[2:]) == (60_000, 0, "user", b"", b"", b"", plans.TAG_PRUNE, "t:~wake")
    c = counts(ctx)
    assert (c.misses, c.loads, c.fills) == (1, 1, 1)


def test_get_or_fetch_with_tags_passes_generations_to_fill() -> None:
    ctx = make_ctx()
    # A tagged call reads the entry and its tags' versions in one round trip.
    tagged_miss = (("Batch", [None, [b"g1"]]), ("Coalesce", LEAD))
    script = Script(*tagged_miss, ("lease", [2, b"", b"", *GENS, b"g1"]), *loads(1, filled=0))
    assert script.run(fetch(ctx, ("team",))) == 1
    assert script.op("Batch").ops == [("GET", RKEY), ("MGET", "t:~tag:{team}:v")]
    assert list(script.op("lease").keys) == [RKEY, LEASE, WRITES, GEN, "t:~tag:{team}:v"]
    fill = script.op("fill")
    assert list(fill.keys) == [RKEY, LEASE, GEN, "t:~tag:{team}", "t:~tag:{team}:v", RKEY + ":wait"]
    assert tuple(fill.args[3:]) == (1, "user", b"", b"", b"", b"g1", plans.TAG_PRUNE, "t:~wake")
    assert counts(ctx).fills_refused == 1


def test_get_or_fetch_value_appears_at_lease_time() -> None:
    ctx = make_ctx()
    script = Script(*MISS, ("lease", [1, entry("theirs"), b"", *GENS]), ("Publish", None))
    assert script.run(fetch(ctx)) == "theirs"


def test_get_or_fetch_loader_none_not_cached_releases_lease() -> None:
    ctx = make_ctx(Policy(60, negative_ttl=0))
    script = Script(*MISS, ("lease", GRANTED), ("CALL", None), ("release", 1), ("Publish", None))
    assert script.run(fetch(ctx)) is None
    assert tuple(script.op("release").args[1:3]) == ("", 0)
    # A lease revoked while we loaded (release answers 0): nothing is published.
    ctx = make_ctx(Policy(60, negative_ttl=0))
    assert Script(*MISS, ("lease", GRANTED), ("CALL", None), ("release", 0)).run(fetch(ctx)) is None


def test_get_or_fetch_loader_none_cached_for_negative_ttl() -> None:
    ctx = make_ctx(Policy(300))  # negative_ttl defaults to min(ttl, 60)
    script = Script(*MISS, ("lease", GRANTED), *loads(None))
    assert script.run(fetch(ctx)) is None
    fill = script.op("fill")
    assert decode_entry(ctx.codec, KEY, fill.args[1]).value is None
    assert fill.args[2] == 60_000


# -- get_or_fetch: waiting on another caller's lease ---------------------------------------
def test_lease_held_poll_until_value_appears() -> None:
    ctx = make_ctx()
    theirs = entry("theirs")
    script = Script(
        *MISS, HELD, NAP, ("poll", [None, b"h", None]), NAP, ("poll", [theirs, None, None])
    )
    script.steps.append(("Publish", None))
    assert script.run(fetch(ctx)) == "theirs"
    assert "CALL" not in script.names()
    poll = script.op("poll")
    assert list(poll.keys) == [RKEY, LEASE, ERR, RKEY + ":wait"]  # marks the key awaited
    assert script.op("Sleep").wake == RKEY  # the fill of RKEY may end the sleep early
    first, second = script.op("Sleep").seconds, script.op("Sleep", 1).seconds
    assert 0 < first < second <= 0.05  # exponential backoff, capped
    assert counts(ctx).waits == 1


def test_lease_held_past_budget_loads_without_filling() -> None:
    ctx = make_ctx(Policy(60, lease=2.0))
    tick = ("Sleep", Do(lambda op: ctx.monotonic.advance(1.0)))  # type: ignore[attr-defined]
    still = ("poll", [None, b"h", None])
    # The script ends at CALL: a fill (or anything else) after it fails the test.
    script = Script(*MISS, HELD, tick, still, tick, still, ("CALL", "mine"))
    assert script.run(fetch(ctx)) == "mine"
    assert script.op("Sleep").seconds <= 2.0
    assert counts(ctx).loads == 1


def test_holder_error_text_raises_loader_error() -> None:
    ctx = make_ctx()
    script = Script(*MISS, HELD, NAP, ("poll", [None, b"h", b"h\nValueError: db said no"]))
    with pytest.raises(hitrate.LoaderError, match=r"'user:42'.*ValueError: db said no"):
        script.run(fetch(ctx))
    assert "CALL" not in script.names()


def test_error_of_an_earlier_holder_is_ignored() -> None:
    ctx = make_ctx()
    old_err = b"older\nValueError: stale news"
    script = Script(*MISS, HELD, NAP, ("poll", [None, b"h", old_err]), NAP)
    script.steps += [("poll", [entry("ok"), None, old_err]), ("Publish", None)]
    assert script.run(fetch(ctx)) == "ok"


def test_holder_released_without_fill_then_we_take_the_lease() -> None:
    ctx = make_ctx()
    script = Script(*MISS, HELD, NAP, ("poll", [None, None, None]), ("lease", GRANTED), *loads(7))
    assert script.run(fetch(ctx)) == 7


@pytest.mark.parametrize("released", [1, down()], ids=["released", "release-failed"])
def test_loader_exception_releases_lease_then_reraises(released: Any) -> None:
    ctx = make_ctx()
    boom = RuntimeError("db down")
    script = Script(*MISS, ("lease", GRANTED), ("CALL", Throw(boom)), ("release", released))
    with pytest.raises(RuntimeError) as info:
        script.run(fetch(ctx))
    assert info.value is boom
    release = script.op("release")
    assert list(release.keys) == [LEASE, ERR, RKEY + ":wait"]
    token = script.op("lease").args[0]
    assert tuple(release.args) == (
        token, "RuntimeError: db down", plans.ERROR_TEXT_MS, "t:~wake", RKEY
    )  # fmt: skip


# -- get_or_fetch: fail-open ---------------------------------------------------------------
@pytest.mark.parametrize(
    "steps",
    [
        # Redis down at the first GET: one caller per key in this process loads
        pytest.param(
            [("GET", down()), ("Coalesce", LEAD), ("CALL", "v"), ("Publish", None)], id="at-get"
        ),
        pytest.param([*MISS, ("lease", down()), ("CALL", "v")], id="at-lease"),
        pytest.param([*MISS, HELD, NAP, ("poll", down()), ("CALL", "v")], id="while-polling"),
    ],
)
def test_unavailable_loads_and_returns(steps: list[tuple[str, Any]]) -> None:
    ctx = make_ctx()
    assert Script(*steps).run(fetch(ctx)) == "v"
    assert (counts(ctx).fail_open, counts(ctx).loads) == (1, 1)


def test_unavailable_at_fill_still_returns_value() -> None:
    ctx = make_ctx()
    script = Script(*MISS, ("lease", GRANTED), ("CALL", "v"), ("fill", down()))
    assert script.run(fetch(ctx)) == "v"
    assert counts(ctx).fail_open == 1


# -- get_or_fetch: stale-while-revalidate and XFetch ---------------------------------------
# Entries that get_or_fetch refreshes while serving them: (policy, entry, rng draw, stale?)
REFRESH = {
    "stale": (Policy(60, stale=30), entry("old", expires_in=-10), 0.0, 1),  # expired 10 s ago
    # XFetch: now - load_time * beta * ln(1 - r) >= expires_at; 2 * -ln(0.01) = 9.2 s >= 5 s
    "early": (Policy(60, early=1.0), entry("old", expires_in=5, load_time=2.0), 0.99, 0),
}


@pytest.mark.parametrize("case", REFRESH)
def test_refresh_lease_granted_serves_old_and_refreshes_in_background(case: str) -> None:
    policy, raw, r, stale = REFRESH[case]
    ctx = make_ctx(policy, rng=fixed_rng(r))
    script = Script(("GET", raw), ("lease", GRANTED), ("Spawn", True))
    assert script.run(fetch(ctx)) == "old"
    lease = script.op("lease")
    assert list(lease.keys) == [RKEY, LEASE, WRITES, GEN]
    assert lease.args[2] == raw  # refresh only the entry we saw
    c = counts(ctx)
    assert (c.hits, c.stale_hits, c.loads) == (1, stale, 0)

    # The spawned plan is the load and fill under the lease we were granted.
    background = Script(*loads("new"))
    assert background.run(script.op("Spawn").plan) == "new"
    fill = background.op("fill")
    assert fill.args[0] == lease.args[0]
    assert decode_entry(ctx.codec, KEY, fill.args[1]).value == "new"
    assert fill.args[2] == 1000 * (60 + policy.stale)  # Redis keeps it ttl + stale
    assert (counts(ctx).loads, counts(ctx).fills) == (1, 1)


@pytest.mark.parametrize("case", REFRESH)
@pytest.mark.parametrize("reply", [HELD[1], down()], ids=["lease-held", "unavailable"])
def test_refresh_lease_not_granted_serves_old_value(case: str, reply: Any) -> None:
    policy, raw, r, stale = REFRESH[case]
    ctx = make_ctx(policy, rng=fixed_rng(r))
    assert Script(("GET", raw), ("lease", reply)).run(fetch(ctx)) == "old"
    assert (counts(ctx).hits, counts(ctx).stale_hits) == (1, stale)


def test_refresh_finds_a_newer_entry_and_serves_it() -> None:
    policy, raw, r, _ = REFRESH["stale"]
    ctx = make_ctx(policy, rng=fixed_rng(r))
    script = Script(("GET", raw), ("lease", [1, entry("newer"), b"", *GENS]))
    assert script.run(fetch(ctx)) == "newer"  # refreshed a moment ago by another caller


def test_background_refresh_loader_error_releases_lease() -> None:
    ctx = make_ctx(Policy(60, stale=30))
    script = Script(("GET", entry("old", expires_in=-1)), ("lease", GRANTED), ("Spawn", True))
    assert script.run(fetch(ctx)) == "old"
    background = Script(("CALL", Throw(RuntimeError("nope"))), ("release", 1))
    with pytest.raises(RuntimeError, match="nope"):
        background.run(script.op("Spawn").plan)


def test_past_the_stale_window_is_a_plain_miss() -> None:
    ctx = make_ctx(Policy(60, stale=30))
    raw = entry("old", expires_in=-31)
    script = Script(("GET", raw), ("Coalesce", LEAD), ("lease", GRANTED), *loads("new"))
    assert script.run(fetch(ctx)) == "new"
    assert script.op("lease").args[2] == raw  # take the lease despite the old entry


@pytest.mark.parametrize("r", [0.0, 0.5])
def test_xfetch_not_drawn_is_a_plain_hit(r: float) -> None:
    ctx = make_ctx(Policy(60, early=1.0), rng=fixed_rng(r))
    raw = entry("cur", expires_in=5, load_time=2.0)  # 2 * -ln(0.5) = 1.4 s < 5 s
    assert Script(("GET", raw)).run(fetch(ctx)) == "cur"


def test_xfetch_never_refreshes_an_entry_without_expiry() -> None:
    # An entry stored with no logical expiry (e.g. set(..., ttl=COUNTER)) read under a
    # policy with early refresh: there is no expiry to refresh "before", so it is a hit.
    ctx = make_ctx(Policy(60, early=1.0), rng=fixed_rng(0.0))
    raw = entry("forever", expires_in=None)
    assert Script(("GET", raw)).run(fetch(ctx)) == "forever"


# -- write-through -------------------------------------------------------------------------
def write(ctx: plans.Context, value: Any = "v", version: Any = None) -> Any:
    return plans.write_through(ctx, KEY, value, None, version)


@pytest.mark.parametrize(("in_flight", "conflict"), [(1, "0"), (2, "1"), (5, "1")])
def test_write_through_begin_save_end(in_flight: int, conflict: str) -> None:
    ctx = make_ctx()
    script = Script(("write_begin", in_flight), ("CALL", None), ("write_end", 1))
    assert script.run(write(ctx, {"v": 1})) == {"v": 1}
    begin, end = script.op("write_begin"), script.op("write_end")
    assert list(begin.keys) == [LEASE, WRITES]
    token = begin.args[0]
    assert begin.args[1] == 30_000  # write_window
    assert list(end.keys) == QUAD
    assert tuple(end.args[:2]) == (token, conflict)
    assert decode_entry(ctx.codec, KEY, end.args[2]).value == {"v": 1}
    assert end.args[3] == 60_000
    assert end.args[4] != token  # a fresh epoch
    assert end.args[5] == ""  # no row version
    assert not ctx.owed.pending


def test_write_through_caches_what_save_returned_with_its_version() -> None:
    ctx = make_ctx()
    row = {"id": 42, "name": "Ada", "version": 7}
    script = Script(("write_begin", 1), ("CALL", row), ("write_end", 1))
    assert script.run(write(ctx, {"name": "Ada"}, lambda r: r["version"])) == row
    end = script.op("write_end")
    assert decode_entry(ctx.codec, KEY, end.args[2]).value == row
    assert end.args[5] == "7"


@pytest.mark.parametrize(("end", "pending"), [(0, set()), (down(), {KEY})])
def test_write_through_save_raises_ends_with_conflict_and_reraises(end: Any, pending: Any) -> None:
    ctx = make_ctx()
    boom = OSError("disk full")
    script = Script(("write_begin", 1), ("CALL", Throw(boom)), ("write_end", end))
    with pytest.raises(OSError) as info:
        script.run(write(ctx))
    assert info.value is boom
    op = script.op("write_end")
    assert list(op.keys) == QUAD
    assert op.args[0] == script.op("write_begin").args[0]
    assert tuple(op.args[1:4]) == ("1", b"", 0)  # conflict: cache nothing, delete the entry
    assert owed_keys(ctx) == pending  # an end that could not reach Redis is retried later


def test_write_through_saved_row_too_large_ends_as_conflict() -> None:
    ctx = make_ctx(max_value_size=100)
    script = Script(("write_begin", 1), ("CALL", "x" * 200), ("write_end", 0))
    with pytest.raises(hitrate.ValueTooLargeError):
        script.run(write(ctx, "small"))
    assert script.op("write_end").args[1] == "1"


@pytest.mark.parametrize(("reply", "pending"), [(0, set()), (down(), {KEY})])
def test_write_through_begin_unavailable_closes_the_window_after_save(
    reply: Any, pending: Any
) -> None:
    """The begin may have run though its reply was lost: the write ends as abandoned, which
    deletes the entry and takes this write out of the bookkeeping whether or not it was in."""
    ctx = make_ctx()
    script = Script(("write_begin", down()), ("CALL", None), ("write_end", reply))
    assert script.run(write(ctx)) == "v"
    end = script.op("write_end")
    assert list(end.keys) == QUAD
    assert end.args[0] == script.op("write_begin").args[0]  # our token
    assert tuple(end.args[1:4]) == ("1", b"", 0)  # cache nothing
    assert owed_keys(ctx) == pending


def test_write_through_begin_unavailable_and_save_raises_closes_the_window() -> None:
    ctx = make_ctx()
    script = Script(("write_begin", down()), ("CALL", Throw(KeyError("k"))), ("write_end", 0))
    with pytest.raises(KeyError):
        script.run(write(ctx))


def test_write_through_end_unavailable_is_remembered() -> None:
    ctx = make_ctx()
    script = Script(("write_begin", 1), ("CALL", None), ("write_end", down()))
    assert script.run(write(ctx)) == "v"
    assert owed_keys(ctx) == {KEY}
    assert counts(ctx).fail_open == 1


# -- invalidate and set --------------------------------------------------------------------
def test_invalidate_sends_every_sidecar_key() -> None:
    ctx = make_ctx()
    assert Script().run(plans.invalidate(ctx, [])) == 0  # nothing to do: no round trip
    script = Script(("invalidate", 1))
    assert script.run(plans.invalidate(ctx, ["user:1", "user:2"])) == 1
    assert list(script.op("invalidate").keys) == ctx.keys.quad("user:1") + ctx.keys.quad("user:2")
    assert ctx.keys.quad("user:1")[:3] == ["t:{user:1}", "t:{user:1}:lease", "t:{user:1}:w"]
    assert counts(ctx).invalidations == 2


def test_failed_invalidate_and_set_are_remembered_up_to_a_bound() -> None:
    ctx = make_ctx()
    assert Script(("invalidate", down())).run(plans.invalidate(ctx, ["user:1", "user:2"])) == 0
    assert owed_keys(ctx) == {"user:1", "user:2"}
    assert counts(ctx).fail_open == 2
    assert Script(("set", down())).run(plans.set_(ctx, KEY, "v", None)) is False
    assert owed_keys(ctx) == {"user:1", "user:2", KEY}  # a failed set is retried the same way
    ctx = make_ctx()
    for i in range(MAX_OWED):
        ctx.owed.entry(ctx.keys.entry(f"k:{i}"), "k")
    Script(("invalidate", down())).run(plans.invalidate(ctx, ["user:3"]))
    assert len(ctx.owed.entries()) == MAX_OWED
    assert "user:3" not in owed_keys(ctx)
    assert ctx.owed.bumps() == ["user"]  # past the bound: the family's generation instead


def test_failed_tag_and_pattern_invalidations_are_owed_and_delivered() -> None:
    ctx = make_ctx()
    assert Script(("Batch", down())).run(plans.invalidate_tag(ctx, "t1")) == 0
    assert Script(("HSET", down())).run(plans.invalidate_pattern(ctx, "user:*")) == 0
    assert Script(("invalidate", down())).run(plans.invalidate(ctx, ["user:9"])) == 0
    assert ctx.owed.pending
    # a pattern is owed as a generation bump of its family: O(1) when Redis is back
    assert (owed_keys(ctx), ctx.owed.tags(), ctx.owed.bumps()) == ({"user:9"}, ["t1"], ["user"])
    script = Script(
        ("HSET", 1),
        ("invalidate", 1),
        ("Batch", ["OK", [b"t:{user:1}"]]),
        ("invalidate", 1),
    )
    script.run(plans.owed(ctx))
    assert not ctx.owed.pending
    assert not (ctx.owed.entries() or ctx.owed.tags() or ctx.owed.bumps())
    bump = script.ops[0]
    assert bump[:2] == ("HSET", GEN) and bump[2::2] == ("ns:user", "ep:user")
    assert ctx.gens.stamp("user") != 0  # this process sees its bump at once
    assert list(script.ops[1].keys) == ctx.keys.quad("user:9")
    untag = script.ops[3]  # entries leave the tag set in the same script
    assert untag.script.name == "invalidate"
    assert untag.args[1] == "tag"
    assert list(untag.keys) == [ctx.keys.tag("t1"), *ctx.keys.quad_of("t:{user:1}")]


# -- refusing values before anything is written --------------------------------------------
def test_bad_values_are_refused_before_any_op() -> None:
    ctx = make_ctx(max_value_size=100)
    big = "x" * 200
    refused = [
        (write(ctx, big), hitrate.ValueTooLargeError),
        (plans.set_(ctx, KEY, big, None), hitrate.ValueTooLargeError),
        (plans.set_many(ctx, {"user:1": "ok", KEY: big}, None), hitrate.ValueTooLargeError),
        (write(ctx, decimal.Decimal("1.5")), hitrate.SerializationError),  # save is never called
    ]
    for plan, exc in refused:
        with pytest.raises(exc):
            next(plan)  # raising at the first step: not a single op was yielded
    with pytest.raises(hitrate.ValueTooLargeError, match=r"'user:42'.*max_value_size=100"):
        ctx.encode(KEY, big, Policy(60))


# -- Policy --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("ttl", "seconds"),
    [(300, 300.0), (1.5, 1.5), (timedelta(minutes=5), 300.0), (Policy(42), 42.0)],
)
def test_ttl_accepts_int_float_timedelta_policy(ttl: Any, seconds: float) -> None:
    policy = to_policy(ttl, USER)
    assert isinstance(policy, Policy)
    assert policy.ttl == seconds
    assert to_policy(None, USER) is USER
    assert to_policy(AGGREGATE, USER) is AGGREGATE
    assert Policy(90, stale=timedelta(seconds=5)).stale == 5.0


@pytest.mark.parametrize(
    "ttl", [-1, 0, -0.5, math.nan, math.inf, True, False, "60", b"60", [60], timedelta(-1)]
)
def test_invalid_ttl_raises_configuration_error(ttl: Any) -> None:
    with pytest.raises(hitrate.ConfigurationError):
        Policy(ttl)
    with pytest.raises(ValueError):  # hitrate.ConfigurationError is a ValueError
        to_policy(ttl, USER)


BAD_OPTIONS = {
    "jitter": [-1, math.nan, "5"],
    "stale": [-1, math.inf],
    "early": [-1, math.nan, True, "1"],
    "lease": [0, -1],
    "negative_ttl": [-1],
}


@pytest.mark.parametrize(("name", "value"), [(k, v) for k, vs in BAD_OPTIONS.items() for v in vs])
def test_invalid_policy_options_raise(name: str, value: Any) -> None:
    with pytest.raises(hitrate.ConfigurationError):
        Policy(60, **{name: value})
    with pytest.raises(hitrate.ConfigurationError):
        Policy(None, jitter=5)  # no ttl: nothing to jitter


def test_jitter_draws_are_bounded_and_reproducible() -> None:
    policy = Policy(60, jitter=10)
    draws = [policy.draw_ttl(rng) for rng in [random.Random(7)] for _ in range(200)]
    assert draws == [policy.draw_ttl(rng) for rng in [random.Random(7)] for _ in range(200)]
    assert all(60 <= d <= 70 for d in draws)
    assert max(draws) - min(draws) > 5  # actually spread out, not a constant
    assert Policy(60).draw_ttl(random.Random(1)) == 60


def _range(policy: Policy) -> tuple[float, float]:
    rng = random.Random(3)
    draws = [policy.draw_ttl(rng) for _ in range(500)]
    return min(draws), max(draws)


def test_presets() -> None:
    assert 3600 <= (REFERENCE.ttl or 0) <= _range(REFERENCE)[0]
    assert 300 <= _range(USER)[0] <= _range(USER)[1] <= 600  # 5-10 minutes
    assert 60 <= _range(AGGREGATE)[0] <= _range(AGGREGATE)[1] <= 300  # 1-5 minutes
    assert COUNTER.ttl is None
    assert COUNTER.draw_ttl(random.Random(0)) is None
    assert make_ctx().encode("counter:1", 5, COUNTER)[1] == 0  # no Redis expiry either


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
    with pytest.raises(hitrate.SerializationError, match=r"price:7") as info:
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
    def __reduce__(self) -> tuple[Any, ...]:  # unpickling calls _record("ran"): the proof
        return (_record, ("ran",))


SECRET = b"0123456789abcdef"


@pytest.mark.parametrize("secret", [b"", b"short", b"x" * 15, "y" * 32, None])
def test_pickle_needs_a_real_secret(secret: Any) -> None:
    with pytest.raises(hitrate.ConfigurationError):
        hitrate.PickleCodec(secret)
    with pytest.raises(hitrate.ConfigurationError):
        make_codec("pickle", secret)


def flip(raw: bytes, i: int) -> bytes:
    changed = bytearray(raw)
    changed[i] ^= 1
    return bytes(changed)


def test_pickle_round_trips_but_unpickles_only_what_was_signed_for_this_key() -> None:
    codec = hitrate.PickleCodec(SECRET)
    value = {"when": dt.datetime(2024, 1, 1), "frozen": frozenset({1}), "c": 1 + 2j}
    assert decode_entry(codec, KEY, encode_entry(codec, KEY, value, 0.0, 0.0)).value == value

    raw = encode_entry(codec, KEY, SideEffect(), 0.0, 0.0)
    _UNPICKLED.clear()
    assert decode_entry(codec, KEY, raw).value == "ran"  # control: the detector works
    assert _UNPICKLED == ["ran"]
    _UNPICKLED.clear()
    refused = [
        (codec, KEY, flip(raw, HEADER.size)),  # signature tampered
        (codec, KEY, flip(raw, -2)),  # pickle body tampered
        (codec, KEY, raw[: HEADER.size + 10]),  # truncated
        (codec, "user:43", raw),  # replayed under another key
        (hitrate.PickleCodec(b"another secret, 16+ bytes"), KEY, raw),
    ]
    for reader, key, bad in refused:
        with pytest.raises(DecodeError):
            decode_entry(reader, key, bad)
        assert _UNPICKLED == [], (key, bad)


# -- the public API ------------------------------------------------------------------------

EXPORTS = """
    AGGREGATE COUNTER MISSING REFERENCE USER AsyncCache Breaker Cache CacheUnavailableError
    CircuitOpenError CommandRefusedError ConfigurationError Decision Health HitrateError
    InvalidArgumentError InvalidKeyError JsonCodec LoaderError MisconfiguredError MsgpackCodec
    NearCache PickleCodec Policy Ranked SerializationError ValueTooLargeError __version__
    escape_glob key
""".split()


def _isort_style(name: str) -> tuple[int, str]:
    """Ruff's RUF022 order: SCREAMING_CASE, then CamelCase, then everything else."""
    return (0 if name.isupper() else 1 if name[0].isupper() else 2, name)


def test_exported_members() -> None:
    assert hitrate.__all__ == sorted(hitrate.__all__, key=_isort_style)
    assert hitrate.__all__ == EXPORTS
    assert dir(hitrate) == sorted(hitrate.__all__)
    for name in hitrate.__all__:  # imported on first use
        assert getattr(hitrate, name) is not None
    public = {
        name
        for name, value in vars(hitrate).items()
        if not name.startswith("_") and not isinstance(value, ModuleType)
    }
    assert public | {"__version__"} == set(hitrate.__all__)


def test_every_public_name_has_a_docstring() -> None:
    import inspect

    missing = []
    for name in hitrate.__all__:
        obj = getattr(hitrate, name)
        if name.startswith("__") or not (inspect.isclass(obj) or callable(obj)):
            continue
        if not (obj.__doc__ or "").strip():
            missing.append(name)
        if inspect.isclass(obj):
            for attr in dir(obj):
                if attr.startswith("_"):
                    continue
                value = inspect.getattr_static(obj, attr)
                if isinstance(value, property):
                    value = value.fget
                if callable(value) or isinstance(value, classmethod | staticmethod):
                    if not (getattr(value, "__doc__", None) or "").strip():
                        missing.append(f"{name}.{attr}")
    assert missing == []
