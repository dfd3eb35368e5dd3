"""The names the README's examples take for granted (a database, ids, a row, ...), typed,
so each example is run by ``tests/test_readme.py`` and type-checked with mypy --strict."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

import hitrate
from hitrate import AGGREGATE, REFERENCE, USER, AsyncCache, Cache

__all__ = [
    "AGGREGATE",
    "REFERENCE",
    "USER",
    "Any",
    "AsyncCache",
    "Cache",
    "Decimal",
    "UUID",
    "adb",
    "cache",
    "cfg",
    "dataclass",
    "date",
    "datetime",
    "db",
    "hitrate",
    "item",
    "last_7_days",
    "load_order",
    "load_top",
    "math",
    "n",
    "now",
    "ids",
    "oid",
    "row",
    "send_welcome",
    "tenant_id",
    "timedelta",
    "user_id",
    "visitor_id",
]


class DB:
    """The source of truth the examples cache."""

    def load_user(self, user_id: int) -> dict[str, Any]:
        return {"id": user_id, "name": f"user {user_id}", "version": 1}

    def update_user(self, row: dict[str, Any]) -> dict[str, Any]:
        return {**row, "version": int(row.get("version", 0)) + 1}

    def order(self, order_id: int) -> dict[str, Any]:
        return {"id": order_id, "total": "12.50"}

    def price(self, sku: str, region: str) -> float | None:
        return None if sku == "gone" else 9.5

    def users_by_keys(self, keys: list[str]) -> dict[str, dict[str, Any]]:
        return {k: self.load_user(int(k.split(":")[1])) for k in keys}

    def users_by_ids(self, ids: list[int]) -> dict[int, dict[str, Any]]:
        return {i: self.load_user(i) for i in ids if i != 3}


class AsyncDB:
    async def load_user(self, user_id: int) -> dict[str, Any]:
        return {"id": user_id, "name": f"user {user_id}"}


db = DB()
adb = AsyncDB()
cache: Cache = Cache.__new__(Cache)  # bound to a private server by the test that runs them
user_id = 42
ids = [1, 2, 3]
row: dict[str, Any] = {"id": 42, "name": "Ada", "version": 1}
cfg: dict[str, Any] = {"theme": "dark"}
tenant_id = "acme:eu"  # a ":" inside an id: hitrate.key keeps tenants apart
n = 1
item: dict[str, Any] = {"sku": "A-1", "qty": 2}
visitor_id = "visitor-7"
last_7_days: list[str] = [f"visitors:2026-11-{day:02}" for day in range(24, 31)]
oid = UUID("12345678-1234-5678-1234-567812345678")
now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def load_top() -> list[str]:
    return ["a", "b", "c"]


def load_order() -> dict[str, Any]:
    return db.order(7)


def send_welcome(user_id: int) -> None:
    pass
