"""Values keep their type (issue 9, items 11, 13 and 14), without Redis: what each codec
accepts with and without ``type=``, typed decoding, foreign vs corrupt entries, the signed
pickle's header MAC and secret rotation."""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import decimal
import enum
import struct
import uuid
from typing import Any, NamedTuple

import msgspec
import pydantic
import pytest

import hitrate
from hitrate import plans
from hitrate.codec import (
    FLAG_NONE,
    FORMAT_VERSION,
    HEADER,
    DecodeError,
    codec_type_from_annotation,
    decode_entry,
    encode_entry,
    make_codec,
)

from .test_plans import KEY, RKEY, Script, counts, make_ctx


class Color(enum.Enum):
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 1


class Name(str):
    pass


@dataclasses.dataclass
class Item:
    sku: str
    price: decimal.Decimal
    tags: tuple[str, ...]


@dataclasses.dataclass
class Order:
    id: uuid.UUID
    created: dt.datetime
    day: dt.date
    items: list[Item]
    color: Color
    seen: set[int]


class Point(NamedTuple):
    x: int
    y: int


class Account(msgspec.Struct):
    id: int
    opened: dt.date
    balance: decimal.Decimal


class User(pydantic.BaseModel):
    id: int
    joined: dt.datetime
    roles: tuple[str, ...]


ORDER = Order(
    id=uuid.UUID("12345678-1234-5678-1234-567812345678"),
    created=dt.datetime(2024, 5, 1, 12, 30, tzinfo=dt.timezone(dt.timedelta(hours=5.5))),
    day=dt.date(2024, 2, 29),
    items=[Item("a-1", decimal.Decimal("12.3400"), ("x", "y"))],
    color=Color.RED,
    seen={1, 2},
)


def same(a: Any, b: Any, path: str = "value") -> None:
    """Equal, and of the same type at every level."""
    assert type(a) is type(b), f"{path}: {type(a).__name__} came back as {type(b).__name__}"
    if isinstance(a, dict):
        assert list(a) == list(b), path
        for k in a:
            assert type(k) is type(next(x for x in b if x == k)), f"{path} key {k!r}"
            same(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            same(x, y, f"{path}[{i}]")
    elif dataclasses.is_dataclass(a):
        for f in dataclasses.fields(a):
            same(getattr(a, f.name), getattr(b, f.name), f"{path}.{f.name}")
    elif isinstance(a, float) and a != a:
        assert b != b, path
    else:
        assert a == b, path
        if isinstance(a, dt.datetime | dt.time):
            assert a.utcoffset() == b.utcoffset(), path


def round_trip(codec: Any, value: Any, type: Any = None, key: str = KEY) -> Any:
    raw = encode_entry(codec, key, value, 0.0, 0.0, type)
    return decode_entry(codec, key, raw, type).value


JSON = hitrate.JsonCodec()
MSGPACK = hitrate.MsgpackCodec()
SECRET, OLD, NEW = b"0123456789abcdef", b"old secret, 16+ bytes", b"new secret, 16+ bytes"


# -- without a type: exact values only ------------------------------------------------------

PLAIN = {
    "name": "Zoë",
    "n": -(2**63),
    "f": 0.1,
    "neg0": -0.0,
    "ok": True,
    "none": None,
    "list": [1, 2.5, "three", [4], {"five": 5}],
    "empty": {},
}


@pytest.mark.parametrize("codec", [JSON, MSGPACK], ids=["json", "msgpack"])
def test_plain_values_round_trip_exactly_without_a_type(codec: Any) -> None:
    same(PLAIN, round_trip(codec, PLAIN))
    for value in PLAIN.values():
        if value is not None:
            same(value, round_trip(codec, value))


@pytest.mark.parametrize(
    ("value", "where"),
    [
        (
            {"created": dt.datetime(2024, 1, 1)},
            r"value\['created'\] is a datetime, which would come back as a str",
        ),
        ({"d": dt.date(2024, 1, 1)}, r"value\['d'\] is a date"),
        ({"t": dt.time(1, 2)}, r"value\['t'\] is a time"),
        (
            {"items": [1, (2, 3)]},
            r"value\['items'\]\[1\] is a tuple, which would come back as a list",
        ),
        ((1, "a"), r"value is a tuple"),
        ({1, 2}, r"value is a set"),
        (frozenset({1}), r"value is a frozenset"),
        ({"price": decimal.Decimal("9.99")}, r"value\['price'\] is a Decimal"),
        ({"id": uuid.uuid4()}, r"value\['id'\] is a UUID"),
        (ORDER, r"value is a Order, which would come back as a dict"),
        ({"c": Color.RED}, r"value\['c'\] is a Color"),
        ({"l": Level.HIGH}, r"value\['l'\] is a Level, which would come back as a plain int"),
        ([Name("x")], r"value\[0\] is a Name, which would come back as a plain str"),
        (collections.OrderedDict(a=1), r"value is a OrderedDict"),
        ({"x": float("nan")}, r"value\['x'\] is the float nan, which JSON cannot hold"),
        ([float("inf")], r"value\[0\] is the float inf"),
        ({1: "a"}, r"value has the key 1 \(a int\); JSON keys are strings"),
        ({"deep": {2: "b"}}, r"value\['deep'\] has the key 2"),
        (b"bytes", r"value is a bytes"),
    ],
)
def test_json_refuses_what_would_change_type_saying_where_and_the_fix(
    value: Any, where: str
) -> None:
    with pytest.raises(hitrate.SerializationError, match=where) as info:
        encode_entry(JSON, "report:7", value, 0.0, 0.0)
    message = str(info.value)
    assert "'report:7'" in message
    assert "type=" in message and "codec='msgpack'" in message and "codec='pickle'" in message
    assert isinstance(info.value, TypeError)


def test_json_refuses_ints_json_cannot_hold() -> None:
    with pytest.raises(hitrate.SerializationError, match="64-bit"):
        encode_entry(JSON, KEY, {"big": 2**64}, 0.0, 0.0)


def test_msgpack_keeps_what_it_can_and_refuses_the_rest() -> None:
    value = {
        "frozen": frozenset({1, 2}),
        "time": dt.time(10, 30, 5, 123, tzinfo=dt.UTC),
        "int keys": {1: "a", (2, 3): "b"},
        "nan": float("nan"),
        "set": {"x"},
        "when": ORDER.created,
        "bytes": b"\x00\xff",
    }
    same(value, round_trip(MSGPACK, value))
    refused = [
        (ORDER, r"value is a Order"),
        ({"l": [Level.HIGH]}, r"value\['l'\]\[0\] is a Level"),
        ({"c": Color.RED}, r"value\['c'\] is a Color"),
        ({"n": Name("x")}, r"value\['n'\] is a Name"),
    ]
    for bad, where in refused:
        with pytest.raises(hitrate.SerializationError, match=where):
            encode_entry(MSGPACK, KEY, bad, 0.0, 0.0)


# -- with a type: typed decoding (msgspec) -------------------------------------------------

TYPED = [
    pytest.param(dt.datetime(2024, 5, 1, 12, 30, 15, 123456), dt.datetime, id="naive-datetime"),
    pytest.param(ORDER.created, dt.datetime, id="aware-datetime"),
    pytest.param(dt.date(2024, 2, 29), dt.date, id="date"),
    pytest.param(dt.time(23, 59, 1), dt.time, id="time"),
    pytest.param(uuid.UUID(int=7), uuid.UUID, id="uuid"),
    pytest.param(decimal.Decimal("12.3400"), decimal.Decimal, id="decimal"),
    pytest.param((1, "two", 3.0), tuple[int, str, float], id="tuple"),
    pytest.param({3, 1}, set[int], id="set"),
    pytest.param(frozenset({"a"}), frozenset[str], id="frozenset"),
    pytest.param({1: "a", 2: "b"}, dict[int, str], id="int-keyed-dict"),
    pytest.param(Color.RED, Color, id="enum"),
    pytest.param(ORDER, Order, id="dataclass"),
    pytest.param([ORDER, ORDER], list[Order], id="list-of-dataclass"),
    pytest.param(Point(1, 2), Point, id="namedtuple"),
    pytest.param(Account(1, dt.date(2020, 1, 2), decimal.Decimal("1.50")), Account, id="struct"),
    pytest.param(User(id=1, joined=ORDER.created, roles=("a",)), User, id="pydantic"),
    pytest.param([User(id=2, joined=ORDER.created, roles=())], list[User], id="list-of-pydantic"),
    pytest.param(ORDER, Order | None, id="optional"),
    pytest.param({"a": 1}, dict[str, int], id="plain-json-with-type"),
]


@pytest.mark.parametrize("codec", [JSON, MSGPACK], ids=["json", "msgpack"])
@pytest.mark.parametrize(("value", "tp"), TYPED)
def test_typed_values_come_back_equal_and_of_the_same_type(codec: Any, value: Any, tp: Any) -> None:
    back = round_trip(codec, value, tp)
    if isinstance(value, pydantic.BaseModel | msgspec.Struct):
        assert type(back) is type(value) and back == value
    elif isinstance(value, list) and value and isinstance(value[0], pydantic.BaseModel):
        assert [type(x) for x in back] == [User] and back == value
    else:
        same(value, back)


def test_a_typed_none_is_a_cached_none() -> None:
    assert round_trip(JSON, None, Order) is None


@pytest.mark.parametrize(
    ("value", "tp", "match", "codecs"),
    [
        ("2024-01-01T00:00:00", dt.datetime, r"is a str, not the declared type=datetime", 2),
        ({"sku": "a"}, Item, r"is a dict, not the declared type=Item", 2),
        (1, float, r"is a int, not the declared type=float", 2),
        ((1, 2), list[int], r"is a tuple, not the declared type=list\[int\]", 2),
        # msgpack keeps these exactly; JSON would change them
        ({"a": "2024-01-01"}, dict[str, dt.date], r"value\['a'\] is a str but would come back", 1),
        (
            {"a": dt.datetime(2024, 1, 1)},
            dict[str, Any],
            r"value\['a'\] is a datetime but would",
            1,
        ),
        ([1.5, float("nan")], list[float], r"would not decode", 1),
    ],
)
def test_typed_write_of_a_value_of_another_type_is_refused_up_front(
    value: Any, tp: Any, match: str, codecs: int
) -> None:
    for codec in (JSON, MSGPACK)[:codecs]:
        with pytest.raises(hitrate.SerializationError, match=match) as info:
            encode_entry(codec, "report:7", value, 0.0, 0.0, tp)
        assert "'report:7'" in str(info.value)
    if codecs == 1:
        same(value, round_trip(MSGPACK, value, tp))


class Opaque:
    pass


def test_a_type_msgspec_cannot_rebuild_names_the_fix() -> None:
    with pytest.raises(hitrate.SerializationError, match=r"Opaque.*codec='pickle'"):
        encode_entry(JSON, KEY, Opaque(), 0.0, 0.0, Opaque)
    pickled = hitrate.PickleCodec(SECRET)
    assert isinstance(round_trip(pickled, Opaque(), Opaque), Opaque)


def test_typed_entries_need_their_type_plain_ones_do_not() -> None:
    raw = encode_entry(JSON, KEY, dt.date(2024, 1, 1), 0.0, 0.0, dt.date)
    with pytest.raises(DecodeError, match="type=") as info:
        decode_entry(JSON, KEY, raw)  # without its type it would be a str: a miss instead
    assert info.value.foreign
    plain = encode_entry(JSON, KEY, {"a": [1]}, 0.0, 0.0, dict[str, list[int]])
    assert decode_entry(JSON, KEY, plain).value == {"a": [1]}
    # plain JSON written without a type decodes into a type (typed decoding of old entries)
    untyped = encode_entry(JSON, KEY, {"sku": "a", "price": "1.5", "tags": ["x"]}, 0.0, 0.0)
    assert decode_entry(JSON, KEY, untyped, Item).value == Item("a", decimal.Decimal("1.5"), ("x",))


def test_an_entry_of_another_type_is_foreign() -> None:
    raw = encode_entry(JSON, KEY, ORDER, 0.0, 0.0, Order)
    with pytest.raises(DecodeError) as info:
        decode_entry(JSON, KEY, raw, Account)
    assert info.value.foreign


def test_codec_type_from_annotation() -> None:
    def sync_user() -> User: ...

    async def async_orders() -> list[Order]: ...

    def optional() -> Order | None: ...

    def bare(): ...  # type: ignore[no-untyped-def]

    def anything() -> Any: ...

    def nothing() -> None: ...

    def unresolvable() -> NotImportedYet:  # type: ignore[name-defined]  # noqa: F821
        ...

    assert codec_type_from_annotation(sync_user) is User
    assert codec_type_from_annotation(async_orders) == list[Order]
    assert codec_type_from_annotation(optional) == Order | None
    for func in (bare, anything, nothing, unresolvable):
        assert codec_type_from_annotation(func) is None, func


# -- foreign entries are a miss but never deleted (item 13) --------------------------------


@pytest.mark.parametrize(
    ("raw", "foreign"),
    [
        pytest.param(encode_entry(MSGPACK, KEY, "x", 0.0, 0.0), True, id="other-codec"),
        pytest.param(b"\x09" + encode_entry(JSON, KEY, "x", 0.0, 0.0)[1:], True, id="format-9"),
        pytest.param(
            HEADER.pack(FORMAT_VERSION, 1, 0x80, 0.0, 0.0, 0) + b'"x"', True, id="unknown-flag"
        ),
        pytest.param(
            encode_entry(hitrate.PickleCodec(SECRET), KEY, 1, 0.0, 0.0), True, id="pickle"
        ),
        pytest.param(b"garbage", False, id="too-short"),
        pytest.param(
            HEADER.pack(FORMAT_VERSION, 1, 0, 0.0, 0.0, 0) + b"{not json", False, id="bad-payload"
        ),
    ],
)
def test_foreign_entries_are_a_miss_left_alone_corrupt_ones_are_deleted(
    raw: bytes, foreign: bool
) -> None:
    with pytest.raises(DecodeError) as info:
        decode_entry(JSON, KEY, raw)
    assert info.value.foreign is foreign

    ctx = make_ctx()
    steps: list[tuple[str, Any]] = [("GET", raw)] + ([] if foreign else [("UNLINK", 1)])
    assert Script(*steps).run(plans.get(ctx, KEY, "dflt")) == "dflt"
    assert (counts(ctx).decode_errors, counts(ctx).misses) == (1, 1)

    ctx = make_ctx()
    steps = [("MGET", [raw])] + ([] if foreign else [("UNLINK", 1)])
    script = Script(*steps)
    assert script.run(plans.get_many(ctx, [KEY])) == {}
    if not foreign:
        assert script.op("UNLINK") == ("UNLINK", RKEY)


# -- signed pickle (item 14) ---------------------------------------------------------------


def _with_expiry(raw: bytes, expires_at: float) -> bytes:
    version, codec_id, flags, _, load_time, gen = HEADER.unpack_from(raw)
    return HEADER.pack(version, codec_id, flags, expires_at, load_time, gen) + raw[HEADER.size :]


def test_pickle_signature_covers_the_header() -> None:
    codec = hitrate.PickleCodec(SECRET)
    raw = encode_entry(codec, KEY, {"v": 1}, 1000.0, 0.5)
    assert decode_entry(codec, KEY, raw) == ({"v": 1}, 1000.0, 0.5, 0, ())
    replayed = _with_expiry(raw, 2e9)  # a later expiry for an old value
    flagged = raw[:2] + bytes([FLAG_NONE]) + raw[3:]  # "the value is None"
    load_time = raw[:12] + struct.pack("<f", 9.0) + raw[16:]
    unsigned_none = HEADER.pack(FORMAT_VERSION, codec.id, FLAG_NONE, 0.0, 0.0, 0)  # no MAC
    none_entry = encode_entry(codec, KEY, None, 1000.0, 0.0)
    for bad in (replayed, flagged, load_time, unsigned_none, _with_expiry(none_entry, 2e9)):
        with pytest.raises(DecodeError) as info:
            decode_entry(codec, KEY, bad)
        assert not info.value.foreign  # tampered: deleted
    assert decode_entry(codec, KEY, none_entry).value is None


def test_pickle_secrets_rotate() -> None:
    old = make_codec("pickle", secrets=[OLD])
    rotated = make_codec("pickle", secrets=[NEW, OLD])
    new_only = make_codec("pickle", secrets=[NEW])
    by_old = encode_entry(old, KEY, {"v": 1}, 0.0, 0.0)
    assert decode_entry(rotated, KEY, by_old).value == {"v": 1}  # accepted after rotation
    by_rotated = encode_entry(rotated, KEY, {"v": 2}, 0.0, 0.0)
    assert decode_entry(new_only, KEY, by_rotated).value == {"v": 2}  # signed with the first
    with pytest.raises(DecodeError):
        decode_entry(old, KEY, by_rotated)
    with pytest.raises(DecodeError):
        decode_entry(new_only, KEY, by_old)  # the old secret was removed
    assert (
        decode_entry(
            make_codec("pickle", SECRET),
            KEY,
            encode_entry(hitrate.PickleCodec(SECRET), KEY, 3, 0.0, 0.0),
        ).value
        == 3
    )  # pickle_secret= still works


@pytest.mark.parametrize(
    "options",
    [
        {"secrets": [OLD], "pickle_secret": OLD},
        {"secrets": []},
        {"secrets": [NEW, b"short"]},
        {"secrets": NEW},
    ],
)
def test_pickle_secrets_are_checked(options: dict[str, Any]) -> None:
    with pytest.raises(hitrate.ConfigurationError):
        make_codec("pickle", **options)


def test_pickle_values_outside_entries_are_signed_too() -> None:
    # the object cache stores codec.dumps() output in hash fields: never an unsigned pickle
    codec = hitrate.PickleCodec(NEW, OLD)
    data = codec.dumps({"v": 1}, "user:1.name")
    assert codec.loads(data, "user:1.name") == {"v": 1}
    assert hitrate.PickleCodec(OLD).dumps(2, "f") != b""
    assert codec.loads(hitrate.PickleCodec(OLD).dumps(2, "f"), "f") == 2  # rotation
    tampered = data[:-2] + bytes([data[-2] ^ 1]) + data[-1:]
    for bad, key in ((tampered, "user:1.name"), (data, "user:2.name"), (data[32:], "user:1.name")):
        with pytest.raises(DecodeError):
            codec.loads(bad, key)
    entry_payload = encode_entry(codec, "f", 2, 0.0, 0.0)[HEADER.size :]
    with pytest.raises(DecodeError):
        codec.loads(entry_payload, "f")  # an entry's signature does not sign a bare value


# -- the compact format, format 2 still read, zstd ------------------------------------------


def test_a_typical_entry_has_a_13_byte_header() -> None:
    body = b'{"id":42}'
    raw = encode_entry(JSON, KEY, {"id": 42}, 1_800_000_000.25, 0.0, gen=7)
    assert raw.endswith(body) and len(raw) - len(body) == 13
    entry = decode_entry(JSON, KEY, raw)
    assert entry == ({"id": 42}, 1_800_000_000.25, 0.0, 7, ())
    # the load time is kept (in ms) when given: XFetch reads it
    raw = encode_entry(JSON, KEY, 1, 1_800_000_000.0, 0.0421, gen=7)
    assert decode_entry(JSON, KEY, raw).load_time == pytest.approx(0.042)
    assert len(encode_entry(JSON, KEY, 1, 0.0, 0.0)) == 3 + 1  # no expiry, no generation


def test_format_2_entries_are_still_read() -> None:
    from hitrate.codec.entry import HEADER

    old = HEADER.pack(2, JSON.id, 0, 1_800_000_000.5, 0.25, 9) + b'"v"'
    assert decode_entry(JSON, KEY, old) == ("v", 1_800_000_000.5, 0.25, 9, ())


def test_large_payloads_are_compressed_and_damaged_ones_refused() -> None:
    from hitrate.codec.entry import FLAG_ZSTD

    value = {"rows": [{"name": f"user {i}", "plan": "pro"} for i in range(200)]}
    plain = encode_entry(JSON, KEY, value, 0.0, 0.0)
    packed = encode_entry(JSON, KEY, value, 0.0, 0.0, compress_over=1024)
    assert packed[2] & FLAG_ZSTD and len(packed) * 5 < len(plain)
    assert decode_entry(JSON, KEY, packed).value == value
    small = encode_entry(JSON, KEY, {"a": 1}, 0.0, 0.0, compress_over=1024)
    assert not small[2] & FLAG_ZSTD  # under the threshold: as it is
    noise = encode_entry(JSON, KEY, uuid.uuid4().hex * 40, 0.0, 0.0, compress_over=64)
    assert decode_entry(JSON, KEY, noise).value  # stored plain if zstd saves < 10 %
    with pytest.raises(DecodeError, match="compressed") as info:
        decode_entry(JSON, KEY, packed[:3] + b"\x28\xb5\x2f\xfd garbage")
    assert not info.value.foreign  # corrupt: deleted, not left alone
    sealed = hitrate.PickleCodec(SECRET)
    raw = encode_entry(sealed, KEY, value, 0.0, 0.0, compress_over=1024)
    assert raw[2] & FLAG_ZSTD and decode_entry(sealed, KEY, raw).value == value


def test_plain_entries_decode_as_plain_entry_does() -> None:
    """get_many's decoder, on warm reads (all usual entries) and on mixed ones: each
    reply is what plain_entry makes of it, and None where decode_entry must decide."""
    from hitrate.codec.entry import encode_entry, plain_entries, plain_entry

    json = make_codec("json")
    usual = [encode_entry(json, f"k:{i}", {"i": i}, 2e9 + i, 0, gen=7) for i in range(5)]
    warm = plain_entries(json, [f"k:{i}" for i in range(5)], usual)
    assert warm == [({"i": i}, 2e9 + i, 7) for i in range(5)]
    mixed: list[bytes | None] = [
        usual[0],
        None,
        usual[1][:-2],  # damaged payload
        encode_entry(json, "k", {"x": 1}, 2e9, 0.5, gen=3),  # with a load time
        encode_entry(json, "k", {"x": 1}, 0, 0),  # no expiry, no generation
        encode_entry(json, "k", None, 2e9, 0, gen=1),  # a cached None
        encode_entry(json, "k", {"x": 1}, 2e9, 0, tags=(("t", b"v"),)),  # tagged
        encode_entry(make_codec("msgpack"), "k", {"x": 1}, 2e9, 0, gen=7),  # another codec
        b"\x03",
    ]
    keys = [f"m:{i}" for i in range(len(mixed))]
    expected = []
    for key, raw in zip(keys, mixed, strict=True):
        fast = plain_entry(json, key, raw) if raw is not None else None
        expected.append(None if fast is None else (fast[0], fast[1], fast[3]))
    assert plain_entries(json, keys, mixed) == expected
    assert expected[0] == ({"i": 0}, 2e9, 7) and expected[3] == ({"x": 1}, 2e9, 3)
    assert expected[1] is expected[2] is expected[5] is expected[6] is expected[7] is None
    # All usual but one damaged: the fast comprehension falls back, per entry.
    broken = [*usual[:2], usual[2][:-1], *usual[3:]]
    assert plain_entries(json, [f"k:{i}" for i in range(5)], broken) == [
        ({"i": i}, 2e9 + i, 7) if i != 2 else None for i in range(5)
    ]
    # A codec without loads_plain: every entry goes through plain_entry.
    msgpack = make_codec("msgpack")
    packed = [encode_entry(msgpack, "k", [1, 2], 2e9, 0, gen=2), None]
    assert plain_entries(msgpack, ["k", "l"], packed) == [([1, 2], 2e9, 2), None]
