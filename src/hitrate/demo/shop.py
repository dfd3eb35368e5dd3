"""The demo's database: a small shop (users, products, orders, settings) in SQLAlchemy Core.

SQLite by default (a file in the user's cache directory, reused while its seed and size
match), PostgreSQL when given a ``postgresql://`` URL. Every query the application makes
goes through :class:`Shop`, which counts them, so the report can say how many the cache
saved. ``latency`` adds a fixed delay per query: an in-process SQLite answers a primary-key
lookup faster than any network database can, so the demo adds a network round trip.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Column,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    desc,
    event,
    func,
    select,
    update,
)

__all__ = ["Shop", "Sizes", "default_sqlite_url", "engine_url"]

PLANS = ("free", "pro", "team")
CATEGORIES = ("books", "games", "garden", "kitchen", "music", "tools", "toys")
BATCH = 5_000


class Sizes:
    """How many rows to seed (``scale`` shrinks them all for quick tests)."""

    def __init__(self, scale: float = 1.0) -> None:
        self.users = max(100, round(10_000 * scale))
        self.products = max(50, round(2_000 * scale))
        self.orders = max(500, round(50_000 * scale))

    def marker(self, seed: int) -> str:
        return f"v1 seed={seed} users={self.users} products={self.products} orders={self.orders}"


def default_sqlite_url(seed: int, scale: float = 1.0) -> str:
    """``sqlite:///~/.cache/hitrate/demo-shop-<seed>.db`` (``$XDG_CACHE_HOME`` respected)."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hitrate"
    base.mkdir(parents=True, exist_ok=True)
    suffix = "" if scale == 1.0 else f"-x{scale:g}"
    return f"sqlite:///{base / f'demo-shop-{seed}{suffix}.db'}"


def engine_url(url: str) -> str:
    """``postgresql://`` means psycopg (3) here, not SQLAlchemy's default psycopg2."""
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def _tables(prefix: str) -> tuple[MetaData, dict[str, Table]]:
    md = MetaData()
    tables = {
        "meta": Table(
            f"{prefix}meta", md, Column("k", String(40), primary_key=True), Column("v", String(200))
        ),
        "users": Table(
            f"{prefix}users",
            md,
            Column("id", Integer, primary_key=True),
            Column("name", String(60), nullable=False),
            Column("email", String(120), nullable=False),
            Column("plan", String(10), nullable=False),
            Column("version", Integer, nullable=False),
        ),
        "products": Table(
            f"{prefix}products",
            md,
            Column("id", Integer, primary_key=True),
            Column("name", String(80), nullable=False),
            Column("category", String(20), nullable=False),
            Column("price_cents", Integer, nullable=False),
            Column("stock", Integer, nullable=False),
        ),
        "orders": Table(
            f"{prefix}orders",
            md,
            Column("id", Integer, primary_key=True),
            Column("user_id", Integer, nullable=False, index=True),
            Column("product_id", Integer, nullable=False, index=True),
            Column("qty", Integer, nullable=False),
            Column("amount_cents", Integer, nullable=False),
        ),
        "settings": Table(
            f"{prefix}settings",
            md,
            Column("k", String(40), primary_key=True),
            Column("v", String(200), nullable=False),
        ),
    }
    return md, tables


class Shop:
    """The shop's tables and the queries the demo application makes (each one counted)."""

    def __init__(self, url: str, *, table_prefix: str = "shop_", latency: float = 0.0) -> None:
        self.url = url
        self.kind = "postgresql" if url.startswith(("postgres", "postgresql")) else "sqlite"
        options: dict[str, Any] = {"pool_size": 20, "max_overflow": 20}
        if self.kind == "sqlite":
            options = {"connect_args": {"timeout": 30, "check_same_thread": False}}
        self.engine: Engine = create_engine(engine_url(url), **options)
        if self.kind == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self.metadata, self.t = _tables(table_prefix)
        self.latency = latency
        self.queries = 0
        self._lock = threading.Lock()
        self.sizes = Sizes()

    # -- set-up ----------------------------------------------------------------------------
    def seed(
        self, seed: int, sizes: Sizes, progress: Callable[[int, int], None] | None = None
    ) -> bool:
        """Create and fill the tables unless they already hold this seed and size; returns
        True when it seeded, False when it reused. One transaction, batched inserts."""
        self.sizes = sizes
        marker = sizes.marker(seed)
        meta = self.t["meta"]
        self.metadata.create_all(self.engine, tables=[meta])
        with self.engine.connect() as conn:
            found = conn.execute(select(meta.c.v).where(meta.c.k == "seed")).scalar()
        if found == marker:
            return False
        rng = random.Random(seed)
        total = sizes.users + sizes.products + sizes.orders
        done = 0
        self.metadata.drop_all(self.engine)
        self.metadata.create_all(self.engine)
        with self.engine.begin() as conn:

            def insert(table: Table, rows: list[dict[str, Any]]) -> None:
                nonlocal done
                for i in range(0, len(rows), BATCH):
                    conn.execute(table.insert(), rows[i : i + BATCH])
                    done += len(rows[i : i + BATCH])
                    if progress is not None:
                        progress(done, total)

            insert(
                self.t["users"],
                [
                    {
                        "id": i,
                        "name": f"user{i}",
                        "email": f"user{i}@example.com",
                        "plan": rng.choice(PLANS),
                        "version": 1,
                    }
                    for i in range(sizes.users)
                ],
            )
            prices = [rng.randint(199, 19_999) for _ in range(sizes.products)]
            insert(
                self.t["products"],
                [
                    {
                        "id": i,
                        "name": f"product {i}",
                        "category": rng.choice(CATEGORIES),
                        "price_cents": prices[i],
                        "stock": rng.randint(10, 1000),
                    }
                    for i in range(sizes.products)
                ],
            )
            users = range(sizes.users)
            products = range(sizes.products)
            orders = []
            for _ in range(sizes.orders):
                product = rng.choice(products)
                qty = rng.randint(1, 3)
                orders.append(
                    {
                        "user_id": rng.choice(users),
                        "product_id": product,
                        "qty": qty,
                        "amount_cents": qty * prices[product],
                    }
                )
            insert(self.t["orders"], orders)
            conn.execute(
                self.t["settings"].insert(),
                [
                    {"k": "currency", "v": "EUR"},
                    {"k": "free_shipping_cents", "v": "5000"},
                    {"k": "banner", "v": "Autumn sale: 10 % off garden tools"},
                ],
            )
            conn.execute(meta.delete().where(meta.c.k == "seed"))
            conn.execute(meta.insert(), [{"k": "seed", "v": marker}])
        return True

    def drop(self) -> None:
        """Drop the shop's tables (for tests on a shared database)."""
        self.metadata.drop_all(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    # -- the application's queries ---------------------------------------------------------
    def _count(self) -> None:
        with self._lock:
            self.queries += 1
        if self.latency:
            time.sleep(self.latency)

    def load_user(self, uid: int) -> dict[str, Any] | None:
        self._count()
        users = self.t["users"]
        with self.engine.connect() as conn:
            row = conn.execute(select(users).where(users.c.id == uid)).mappings().first()
        return None if row is None else _plain(row)

    def update_user(self, uid: int, changes: dict[str, Any]) -> dict[str, Any]:
        """Apply *changes*, bump the row's version, return the stored row."""
        self._count()
        users = self.t["users"]
        with self.engine.begin() as conn:
            conn.execute(
                update(users)
                .where(users.c.id == uid)
                .values(**changes, version=users.c.version + 1)
            )
            row = conn.execute(select(users).where(users.c.id == uid)).mappings().one()
        return _plain(row)

    def user_version(self, uid: int) -> int:
        """The row's version, uncounted: for the staleness check, not the application."""
        users = self.t["users"]
        with self.engine.connect() as conn:
            return int(conn.execute(select(users.c.version).where(users.c.id == uid)).scalar_one())

    def load_product(self, pid: int) -> dict[str, Any] | None:
        self._count()
        products = self.t["products"]
        with self.engine.connect() as conn:
            row = conn.execute(select(products).where(products.c.id == pid)).mappings().first()
        return None if row is None else _plain(row)

    def product_price(self, pid: int) -> int:
        self._count()
        products = self.t["products"]
        with self.engine.connect() as conn:
            return int(
                conn.execute(
                    select(products.c.price_cents).where(products.c.id == pid)
                ).scalar_one()
            )

    def top_products(self, n: int = 10) -> list[dict[str, Any]]:
        """The aggregate: best-selling products by revenue, over every order."""
        self._count()
        orders = self.t["orders"]
        revenue = func.sum(orders.c.amount_cents).label("revenue")
        query = (
            select(orders.c.product_id, revenue)
            .group_by(orders.c.product_id)
            .order_by(desc(revenue), orders.c.product_id)
            .limit(n)
        )
        with self.engine.connect() as conn:
            return [
                {"product_id": int(r[0]), "revenue_cents": int(r[1])}
                for r in conn.execute(query).all()
            ]

    def top_buyers(self, n: int = 10, count: bool = True) -> list[tuple[str, int]]:
        """Buyers by total spent, best first (names as the leaderboard has them)."""
        if count:
            self._count()
        orders = self.t["orders"]
        spent = func.sum(orders.c.amount_cents).label("spent")
        query = (
            select(orders.c.user_id, spent)
            .group_by(orders.c.user_id)
            .order_by(desc(spent), orders.c.user_id)
        )
        if n:
            query = query.limit(n)
        with self.engine.connect() as conn:
            return [(f"user{r[0]}", int(r[1])) for r in conn.execute(query).all()]

    def load_settings(self) -> dict[str, str]:
        self._count()
        settings = self.t["settings"]
        with self.engine.connect() as conn:
            return {str(k): str(v) for k, v in conn.execute(select(settings.c.k, settings.c.v))}

    def place_order(self, uid: int, pid: int, qty: int) -> int:
        """Insert an order and take it from stock (one transaction); returns the amount."""
        self._count()
        orders, products = self.t["orders"], self.t["products"]
        with self.engine.begin() as conn:
            price = conn.execute(
                select(products.c.price_cents).where(products.c.id == pid)
            ).scalar_one()
            amount = int(price) * qty
            conn.execute(
                orders.insert().values(user_id=uid, product_id=pid, qty=qty, amount_cents=amount)
            )
            conn.execute(
                update(products).where(products.c.id == pid).values(stock=products.c.stock - qty)
            )
        return amount


def _plain(row: Any) -> dict[str, Any]:
    # Column names are str subclasses (quoted_name); the JSON codec wants plain str keys.
    return {str(k): v for k, v in row.items()}


def _sqlite_pragmas(dbapi_conn: Any, _: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()
