"""What the exactness check costs on the fill path, and typed decoding on the hit path.

No Redis: pure encode/decode, µs per call (median of --rounds rounds of --number
calls, the cases taking turns).

* fill: ``orjson.dumps(row)`` (the baseline) vs ``JsonCodec().dumps(row, key)`` (the check
  that the value round-trips exactly, then the same dumps) vs ``encode_entry`` (+ header);
  and a typed write (``type=Row``, a dataclass of the same 10 fields with a datetime,
  UUID and Decimal): msgspec encode + decode-back check.
* hit: ``orjson.loads`` vs ``decode_entry`` untyped vs ``decode_entry(type=Row)``.

ratio = median over rounds of µs / the same round's baseline (1.00 = free).

    .venv/bin/python benchmarks/codec_check.py [--number N] [--rounds R]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import decimal
import statistics
import timeit
import uuid
from collections.abc import Callable
from typing import Any

import orjson

from hitrate.codec import JsonCodec, decode_entry, encode_entry

ROW: dict[str, Any] = {
    "id": 42, "username": "ada.lovelace", "email": "ada@example.com", "is_active": True,
    "followers": 1843, "score": 97.5, "locale": "en-GB", "last_login": None,
    "roles": ["member", "editor"], "settings": {"theme": "dark", "newsletter": False},
}  # fmt: skip


@dataclasses.dataclass
class Row:
    id: int
    uid: uuid.UUID
    email: str
    is_active: bool
    followers: int
    balance: decimal.Decimal
    created: dt.datetime
    last_login: dt.datetime | None
    roles: list[str]
    settings: dict[str, Any]


TYPED = Row(
    42, uuid.UUID(int=42), "ada@example.com", True, 1843, decimal.Decimal("12.50"),
    dt.datetime(2021, 3, 14, 9, 26, 53, tzinfo=dt.UTC), None, ["member", "editor"],
    {"theme": "dark", "newsletter": False},
)  # fmt: skip


def measure(cases: list[Callable[[], Any]], number: int, rounds: int) -> list[list[float]]:
    """µs per call of each case, per round; cases take turns within a round (order
    reversed every other round) so load on a shared machine hits them alike."""
    out: list[list[float]] = [[] for _ in cases]
    order = list(range(len(cases)))
    for r in range(rounds):
        for i in order if r % 2 else reversed(order):
            out[i].append(timeit.timeit(cases[i], number=number) / number * 1e6)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--number", type=int, default=2_000)
    parser.add_argument("--rounds", type=int, default=101)
    args = parser.parse_args()
    codec, key = JsonCodec(), "user:42"
    plain = encode_entry(codec, key, ROW, 0.0, 0.0)
    typed = encode_entry(codec, key, TYPED, 0.0, 0.0, Row)
    groups: list[tuple[str, list[tuple[str, Callable[[], Any]]]]] = [
        (
            "fill, 10-field dict",
            [
                ("orjson.dumps (baseline)", lambda: orjson.dumps(ROW)),
                ("JsonCodec.dumps (check + dumps)", lambda: codec.dumps(ROW, key)),
                ("encode_entry", lambda: encode_entry(codec, key, ROW, 0.0, 0.0)),
                ("encode_entry type=Row (dataclass)", lambda: encode_entry(
                    codec, key, TYPED, 0.0, 0.0, Row)),
            ],
        ),
        (
            "hit, same values",
            [
                ("orjson.loads (baseline)", lambda: orjson.loads(plain[16:])),
                ("decode_entry", lambda: decode_entry(codec, key, plain)),
                ("decode_entry type=Row (dataclass)", lambda: decode_entry(codec, key, typed, Row)),
            ],
        ),
    ]  # fmt: skip
    for title, cases in groups:
        print(title)
        times = measure([fn for _, fn in cases], args.number, args.rounds)
        base = times[0]
        for (name, _), us in zip(cases, times, strict=True):
            ratio = statistics.median(t / b for t, b in zip(us, base, strict=True))
            print(f"  {name:<38} {statistics.median(us):7.3f} µs   ratio {ratio:5.2f}")


if __name__ == "__main__":
    main()
