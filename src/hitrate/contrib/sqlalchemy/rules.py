"""What a change of one row invalidates: a model's rule (``invalidates=``), rendered with
the row's values before and after the change."""

from __future__ import annotations

import string
import types
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from sqlalchemy import inspect as sa_inspect
from sqlalchemy.orm import Mapper

from ...errors import ConfigurationError
from ...keys import encode_part

__all__ = ["Changes", "Rule", "Target", "table_tag"]

Target = str | Iterable[str] | Callable[[Any], Iterable[str]]
"""``invalidates=``: templates (``"user:{id}"``, ``"tag:team:{team_id}"``) or a callable
taking the object (or a mapping of its column values) and returning such strings."""


def table_tag(table: str) -> str:
    """The tag every cached query reading *table* carries, and that every committed change
    of a row of *table* invalidates: ``"orm:users"``."""
    return f"orm:{table}"


class _PartFormatter(string.Formatter):
    def format_field(self, value: Any, format_spec: str) -> str:
        return encode_part(format(value, format_spec))


_FORMAT = _PartFormatter()


@dataclass(frozen=True)
class Write:
    """A row to write through: its mapper, primary key and the version it was flushed at."""

    mapper: Mapper[Any]
    ident: tuple[Any, ...]
    version: Any


@dataclass
class Changes:
    """Keys and tags to invalidate, and rows to write through, once a commit is durable.
    ``writes`` maps a key to ``(value, write)``: what to cache and the row's identity and
    version (:class:`Write`)."""

    keys: set[str] = field(default_factory=set)
    tags: set[str] = field(default_factory=set)
    writes: dict[str, Any] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.keys or self.tags or self.writes)

    def update(self, other: Changes) -> None:
        self.keys |= other.keys
        self.tags |= other.tags
        for key, value in other.writes.items():
            self.writes[key] = value
        self.keys -= set(self.writes)


class Rule:
    """A model's invalidation rule."""

    def __init__(
        self,
        mapper: Mapper[Any],
        invalidates: Target,
        write_through: Callable[[Any], Any] | None,
    ) -> None:
        self.mapper = mapper
        if write_through is not None and mapper.version_id_col is None:
            raise ConfigurationError(
                f"write_through= of {mapper.class_.__name__} needs a version column, so a "
                "late commit never overwrites a newer row: add one and name it in "
                "__mapper_args__ = {'version_id_col': ...}, or leave write_through= out"
            )
        self.write_through = write_through
        self.tags = {table_tag(t.name) for t in mapper.tables}
        if callable(invalidates):
            self.call: Callable[[Any], Iterable[str]] | None = invalidates
            self.templates: tuple[str, ...] = ()
        else:
            self.call = None
            self.templates = (invalidates,) if isinstance(invalidates, str) else tuple(invalidates)
            names = {p.key for p in mapper.column_attrs}
            for template in self.templates:
                if not isinstance(template, str):
                    raise ConfigurationError(
                        f"invalidates= of {mapper.class_.__name__} holds {template!r}: give "
                        "templates such as 'user:{id}' or 'tag:team:{team_id}', or a callable"
                    )
                for _, name, _, _ in string.Formatter().parse(template):
                    if name is not None and name not in names:
                        raise ConfigurationError(
                            f"invalidates= template {template!r} of {mapper.class_.__name__} "
                            f"names {{{name}}}, which is not a column attribute "
                            f"(they are: {', '.join(sorted(names))})"
                        )
        if write_through is not None and not any(not t.startswith("tag:") for t in self.templates):
            raise ConfigurationError(
                f"write_through= of {mapper.class_.__name__} needs at least one key template "
                "in invalidates= (such as 'user:{id}') to write the row under"
            )

    def render(self, values: Mapping[str, Any], obj: Any = None) -> tuple[set[str], set[str]]:
        """``(keys, tags)`` of one version of a row (*obj*: the object, for a callable)."""
        keys: set[str] = set()
        tags: set[str] = set()
        if self.call is not None:
            made = self.call(obj if obj is not None else types.SimpleNamespace(**values))
            targets: Iterable[str] = [made] if isinstance(made, str) else made
        else:
            targets = [_FORMAT.vformat(t, (), values) for t in self.templates]
        for target in targets:
            if not isinstance(target, str):
                raise ConfigurationError(
                    f"invalidates= of {self.mapper.class_.__name__} returned {target!r}; "
                    "it must return keys ('user:42') or tags ('tag:team:1') as strings"
                )
            if target.startswith("tag:"):
                tags.add(target[4:])
            else:
                keys.add(target)
        return keys, tags

    def changes(self, obj: Any, *, deleted: bool) -> Changes:
        """What a flushed change of *obj* touches: its keys and tags rendered with the new
        values and, for attributes the flush changed, with the old ones too (a user moving
        from team 1 to team 2 invalidates both teams)."""
        state = sa_inspect(obj)
        new: dict[str, Any] = {}
        old: dict[str, Any] = {}
        for prop in self.mapper.column_attrs:
            hist = state.attrs[prop.key].history
            current = state.dict.get(prop.key)
            new[prop.key] = current
            old[prop.key] = hist.deleted[0] if hist.deleted else current
        out = Changes(tags=set(self.tags))
        for values in (new, old) if old != new else (new,):
            keys, tags = self.render(values, obj if values is new else None)
            out.keys |= keys
            out.tags |= tags
        if self.write_through is not None and not deleted:
            value = self.write_through(obj)
            mapper = self.mapper
            version_col = cast(Any, mapper.version_id_col)  # checked in __init__
            write = Write(
                mapper,
                tuple(mapper.primary_key_from_instance(obj)),
                state.dict.get(mapper.get_property_by_column(version_col).key),
            )
            for key in self.render(new, obj)[0]:
                out.writes[key] = (value, write)
            out.keys -= set(out.writes)
        return out
