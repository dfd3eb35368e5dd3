"""Redis Cluster: which slot a key lives in, and how a multi-key command is cut per slot.

On Cluster a command or script may only touch keys of one hash slot. hitrate's own keys
keep what one atomic step needs inside one hash tag (see :mod:`hitrate.keys`); what
spans keys of many slots - ``MGET`` of many entries, ``UNLINK`` of many keys - is cut
here into one command per slot, which the drivers send in one pipeline (one round trip
per node, the nodes in parallel), and the replies are put back together in the caller's
order. :func:`route` does that for a command or a :class:`~hitrate.ops.Batch`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from redis.crc import key_slot

from .ops import Batch

__all__ = ["is_cluster", "route", "slot"]

#: Multi-key commands cut per slot, and how their replies are put back together.
_JOIN = {"MGET": "list", "DEL": "sum", "UNLINK": "sum", "EXISTS": "sum", "TOUCH": "sum"}

Merge = Callable[[list[Any]], Any]


def slot(key: str | bytes) -> int:
    """The hash slot of *key* (its ``{hash tag}`` when it has one)."""
    return int(key_slot(key.encode() if isinstance(key, str) else key))


def is_cluster(client: Any) -> bool:
    """Is *client* a redis-py Cluster client (sync or asyncio)?"""
    from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
    from redis.cluster import RedisCluster

    return isinstance(client, RedisCluster | AsyncRedisCluster) or bool(
        getattr(type(client), "cluster_client", False)  # connect.PendingCluster
    )


def by_slot(keys: Sequence[Any]) -> list[list[int]]:
    """Positions of *keys*, grouped by slot (groups in order of first appearance)."""
    groups: dict[int, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(slot(key), []).append(i)
    return list(groups.values())


def _split(op: tuple[Any, ...]) -> tuple[list[tuple[Any, ...]], Merge] | None:
    how = _JOIN.get(op[0]) if len(op) > 2 else None
    if how is None:
        return None
    keys = op[1:]
    groups = by_slot(keys)
    if len(groups) == 1:
        return None
    parts = [(op[0], *(keys[i] for i in group)) for group in groups]
    if how == "sum":
        return parts, lambda replies: sum(int(r) for r in replies)

    def merge(replies: list[Any]) -> list[Any]:
        out: list[Any] = [None] * len(keys)
        for group, reply in zip(groups, replies, strict=True):
            for i, value in zip(group, reply, strict=True):
                out[i] = value
        return out

    return parts, merge


def route(op: Any) -> tuple[Batch, Merge] | None:
    """*op* as a pipeline of single-slot commands and how to merge its replies back into
    *op*'s reply, or None when *op* is single-slot already (scripts always are)."""
    if isinstance(op, tuple):
        cut = _split(op)
        return None if cut is None else (Batch(cut[0]), cut[1])
    if not isinstance(op, Batch):
        return None
    flat: list[Any] = []
    spans: list[tuple[int, int, Merge | None]] = []
    for item in op.ops:
        cut = _split(item) if isinstance(item, tuple) else None
        if cut is None:
            spans.append((len(flat), 1, None))
            flat.append(item)
        else:
            spans.append((len(flat), len(cut[0]), cut[1]))
            flat.extend(cut[0])
    if len(flat) == len(op.ops):
        return None

    def regroup(replies: list[Any]) -> list[Any]:
        return [
            replies[start] if merge is None else merge(replies[start : start + n])
            for start, n, merge in spans
        ]

    return Batch(flat), regroup
