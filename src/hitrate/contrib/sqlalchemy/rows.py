"""How a cached query result is stored: ORM rows as plain JSON, never pickle.

A :class:`~sqlalchemy.engine.FrozenResult` holds ORM objects, which no codec can store
as they are. :func:`dump` turns one into a JSON document::

    {"v": 1, "keys": ["User"], "scalars": true, "single": true,
     "rows": [[{"o": 0}]],                          # a cell: a value, or {"o": index}
     "objs": [{"m": "app.models.User",              # the mapped class
               "a": {"id": "i1", "name": "sAda"},   # loaded column attributes
               "r": {"team": 1}}, ...]}             # loaded relationships: index, [indexes], null

Column values are tagged text, the format of :meth:`Cache.objects <hitrate.Cache.objects>`
fields (``i42``, ``sAda``, ``t2026-11-26T08:14:08+00:00``, ``D19.99``, ...), so ints,
strs, floats, bools, None, bytes, Decimal, UUID, date, datetime and time come back of
their type; anything else (JSON columns) goes through the cache's codec. Bytes that are not
UTF-8 are base64 text after ``~``. Only what the query loaded is stored: column
attributes present in the instance (deferred ones are left out and load on access) and
relationships already loaded (eager loads); lazy relationships load on access, as usual.
Objects shared between rows or relationships are stored once (``{"o": index}``), so
cycles (``user.team.users``) come back as the same objects.

:func:`load` rebuilds detached instances from such a document and a
:class:`~sqlalchemy.engine.FrozenResult` around them, which
:func:`sqlalchemy.orm.loading.merge_frozen_result` merges into the session without SQL.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from typing import Any

from sqlalchemy import inspect as sa_inspect
from sqlalchemy.engine import FrozenResult
from sqlalchemy.engine.result import SimpleResultMetaData
from sqlalchemy.orm import Mapper, make_transient_to_detached
from sqlalchemy.orm.attributes import instance_state, set_committed_value
from sqlalchemy.util import immutabledict

from ...plans import Context
from ...structures.objects import decode_field, encode_field

__all__ = ["FORMAT", "dump", "load"]

FORMAT = 1


def _cell_out(ctx: Context, label: str, value: Any) -> Any:
    raw = encode_field(ctx, label, value)
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return "~" + base64.b64encode(raw).decode()


def _cell_in(ctx: Context, label: str, text: str) -> Any:
    raw = base64.b64decode(text[1:]) if text[:1] == "~" else text.encode()
    return decode_field(ctx, label, raw)


def _class_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


class _Dumper:
    def __init__(self, ctx: Context, key: str) -> None:
        self.ctx, self.key = ctx, key
        self.index: dict[int, int] = {}
        self.objs: list[dict[str, Any]] = []
        self.tables: set[str] = set()

    def obj(self, instance: Any) -> int:
        found = self.index.get(id(instance))
        if found is not None:
            return found
        state = instance_state(instance)
        mapper: Mapper[Any] = state.mapper
        n = self.index[id(instance)] = len(self.objs)
        doc: dict[str, Any] = {"m": _class_path(mapper.class_), "a": {}, "r": {}}
        self.objs.append(doc)
        self.tables.update(t.name for t in mapper.tables)
        loaded = state.dict
        label = f"{self.key} {mapper.class_.__name__}"
        for prop in mapper.column_attrs:
            if prop.key in loaded:
                doc["a"][prop.key] = _cell_out(self.ctx, f"{label}.{prop.key}", loaded[prop.key])
        for rel in mapper.relationships:
            if rel.key not in loaded:
                continue
            self.tables.update(t.name for t in rel.mapper.tables)
            if rel.secondary is not None:
                self.tables.add(str(getattr(rel.secondary, "name", rel.secondary)))
            value = loaded[rel.key]
            if value is None:
                doc["r"][rel.key] = None
            elif rel.uselist:
                doc["r"][rel.key] = [self.obj(v) for v in value]
            else:
                doc["r"][rel.key] = self.obj(value)
        return n

    def cell(self, value: Any, n: int) -> Any:
        if (
            value is not None
            and sa_inspect(value, raiseerr=False) is not None
            and hasattr(value, "_sa_instance_state")
        ):
            return {"o": self.obj(value)}
        return _cell_out(self.ctx, f"{self.key} column {n}", value)


def dump(ctx: Context, key: str, frozen: FrozenResult[Any]) -> tuple[dict[str, Any], set[str]]:
    """The JSON document for *frozen* (the result of the query cached under *key*), and
    the names of the tables its rows came from (entities and loaded relationships)."""
    d = _Dumper(ctx, key)
    scalars = bool(frozen._source_supports_scalars)
    rows = [[d.cell(v, i) for i, v in enumerate(r)] for r in frozen._rewrite_rows()]
    doc = {
        "v": FORMAT,
        "keys": list(frozen.metadata.keys),
        "scalars": scalars,
        "attrs": {k: v for k, v in frozen._attributes.items() if _plain(v)},
        "rows": rows,
        "objs": d.objs,
    }
    return doc, d.tables


def _plain(value: Any) -> bool:
    return value is None or isinstance(value, bool | int | str)


def _registry_classes(mappers: Iterable[Mapper[Any]]) -> dict[str, Mapper[Any]]:
    found: dict[str, Mapper[Any]] = {}
    for mapper in mappers:
        for m in mapper.registry.mappers:
            found[_class_path(m.class_)] = m
    return found


def load(ctx: Context, key: str, doc: Any, mappers: Iterable[Mapper[Any]]) -> FrozenResult[Any]:
    """A :class:`FrozenResult` of detached instances rebuilt from :func:`dump`'s document;
    *mappers* (those of the statement) find the classes by name in their registries.
    Raises ``ValueError`` for a document this version cannot read."""
    if not isinstance(doc, dict) or doc.get("v") != FORMAT:
        raise ValueError(f"{key}: not a cached query result of format {FORMAT}")
    classes = _registry_classes(mappers)
    objs: list[Any] = []
    for spec in doc["objs"]:
        mapper = classes.get(spec["m"])
        if mapper is None:
            raise ValueError(f"{key}: no mapped class {spec['m']} in the statement's registry")
        instance = mapper.class_manager.new_instance()
        for name, text in spec["a"].items():
            set_committed_value(instance, name, _cell_in(ctx, f"{key} {spec['m']}.{name}", text))
        make_transient_to_detached(instance)
        objs.append(instance)
    for instance, spec in zip(objs, doc["objs"], strict=True):
        for name, ref in spec["r"].items():
            if ref is None:
                value: Any = None
            elif isinstance(ref, list):
                value = [objs[i] for i in ref]
            else:
                value = objs[ref]
            set_committed_value(instance, name, value)

    def cell(value: Any, n: int) -> Any:
        if isinstance(value, dict):
            return objs[value["o"]]
        return _cell_in(ctx, f"{key} column {n}", value)

    rows = [[cell(v, i) for i, v in enumerate(r)] for r in doc["rows"]]
    frozen: FrozenResult[Any] = FrozenResult.__new__(FrozenResult)
    frozen.metadata = SimpleResultMetaData(doc["keys"])
    frozen._attributes = immutabledict(doc["attrs"])
    frozen._source_supports_scalars = bool(doc["scalars"])
    frozen.data = [r[0] for r in rows] if frozen._source_supports_scalars else rows
    return frozen
