"""The demo's traffic: threads sending a shop's requests, with and without the cache.

Popularity is skewed (Zipf, s = 1) over users, products and API clients, as real traffic
is. Each request is timed; the cached phase also logs what the checks at the end need:
every cached user read and every user write with its start, end and version (for the
staleness check), every rate-limiter decision, every loader call of the hot aggregate.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .. import MISSING, REFERENCE, USER, Cache, Policy
from .shop import PLANS, Shop

__all__ = ["FAMILIES", "KINDS", "Log", "Workload"]

#: Request kinds and their share of the traffic (percent).
KINDS: tuple[tuple[str, int], ...] = (
    ("profile", 50),  # user profile read: cache-aside, USER policy
    ("profile_update", 5),  # write-through, versioned
    ("product", 16),  # product page: the object cached as a hash
    ("price", 5),  # cart: one field of the product hash
    ("top", 5),  # "top products": an aggregate query, AGGREGATE-like policy, early refresh
    ("settings", 4),  # site settings: REFERENCE
    ("order", 3),  # a purchase: invalidates the product, feeds the leaderboard
    ("leaderboard", 3),  # top buyers
    ("api", 9),  # API call behind a per-client rate limiter
)

#: The report's families: name -> (pattern, what stands behind it).
FAMILIES: dict[str, tuple[str, str]] = {
    "user": ("cache-aside + write-through", "USER (5-10 min)"),
    "product": ("object cache (hash, field reads)", "USER (5-10 min)"),
    "top": ("aggregate, early refresh", "{ttl:g} s + XFetch"),
    "settings": ("cache-aside", "REFERENCE (1 h)"),
    "buyers": ("leaderboard (sorted set)", "no TTL"),
    "visitors": ("unique count (HyperLogLog)", "no TTL"),
    "api": ("rate limiter (fixed window)", "{limit}/s per client"),
}

CLIENTS = 20


def zipf_cum(n: int, s: float = 1.0) -> list[float]:
    """Cumulative Zipf weights over ``range(n)`` for ``random.choices(cum_weights=...)``."""
    return list(itertools.accumulate(1.0 / (i + 1) ** s for i in range(n)))


@dataclass
class Log:
    """What one worker thread saw (merged after the run; no locks on the hot path)."""

    latencies: list[float] = field(default_factory=list)
    kinds: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    reads: list[tuple[int, float, float, int]] = field(default_factory=list)
    writes: list[tuple[int, float, float, int]] = field(default_factory=list)
    limits: list[tuple[int, float, float, bool]] = field(default_factory=list)
    visitors: set[int] = field(default_factory=set)
    rejected: int = 0


class Workload:
    """The shop application: the same requests served through the cache or straight from
    the database."""

    def __init__(
        self,
        cache: Cache,
        shop: Shop,
        *,
        seed: int = 0,
        threads: int = 8,
        rate: float = 600.0,
        top_ttl: float = 3.0,
        limit: int = 10,
    ) -> None:
        self.cache = cache
        self.shop = shop
        self.seed = seed
        self.threads = threads
        self.rate = rate
        self.top_ttl = top_ttl
        self.limit = limit
        self.products = cache.objects("product", ttl=USER)
        self.board = cache.leaderboard("buyers")
        self.visitors = cache.unique("visitors")
        self.limiter = cache.rate_limiter("api", limit, 1.0, "fixed_window")
        self.top_policy = Policy(top_ttl, early=1.0)
        self.top_loads: list[float] = []  # start times (monotonic) of the aggregate's loads
        self.clock_offset = 0.0  # server time - local time, for the rate-limiter check
        self.logs: dict[str, list[Log]] = {"cached": [], "uncached": []}
        self.elapsed: dict[str, float] = {}
        self.sizes = shop.sizes
        self._users = zipf_cum(self.sizes.users)
        self._products = zipf_cum(self.sizes.products)
        self._clients = zipf_cum(CLIENTS)
        self._kinds = list(itertools.accumulate(w for _, w in KINDS))
        self._names = [k for k, _ in KINDS]
        self._lock = threading.Lock()
        self.phase = ""
        self.started = 0.0
        self.phase_seconds = 0.0
        self.failure: BaseException | None = None
        self.other_reads: list[tuple[int, float, float, int]] = []  # the second process's

    # -- set-up ----------------------------------------------------------------------------
    def prepare_cache(self) -> None:
        """Load the leaderboard from the orders table (it is kept up to date from then on)
        and measure the server's clock against ours."""
        self.board.clear()
        self.board.add_many(dict(self.shop.top_buyers(0, count=False)))
        t0 = time.time()
        secs, micros = self.cache.client.time()
        t1 = time.time()
        self.clock_offset = secs + micros / 1e6 - (t0 + t1) / 2

    # -- running ---------------------------------------------------------------------------
    def run(self, phase: str, seconds: float, tick: Callable[[], None] | None = None) -> None:
        """Send requests from every thread for *seconds*; ``phase`` is "cached" or "uncached".
        *tick* is called about four times a second meanwhile (the live view)."""
        stop = threading.Event()
        logs = [Log() for _ in range(self.threads)]
        self.logs[phase] = logs
        self.phase, self.started, self.phase_seconds = phase, time.perf_counter(), seconds
        serve = self._cached if phase == "cached" else self._uncached
        workers = [
            threading.Thread(
                target=self._worker,
                args=(serve, logs[i], random.Random(f"{self.seed}-{phase}-{i}"), stop),
                name=f"hitrate-demo-{i}",
                daemon=True,
            )
            for i in range(self.threads)
        ]
        for w in workers:
            w.start()
        deadline = time.monotonic() + seconds
        try:
            while (left := deadline - time.monotonic()) > 0 and not stop.is_set():
                stop.wait(min(left, 0.25))
                if tick is not None:
                    tick()
        finally:
            stop.set()
            for w in workers:
                w.join()
            self.elapsed[phase] = time.perf_counter() - self.started
        if self.failure is not None:
            raise RuntimeError(f"a {phase} request failed: {self.failure!r}") from self.failure

    def requests(self, phase: str) -> int:
        return sum(len(log.latencies) for log in self.logs.get(phase, []))

    def _worker(
        self,
        serve: Callable[[str, int, int, int, random.Random, Log], None],
        log: Log,
        rng: random.Random,
        stop: threading.Event,
    ) -> None:
        users, products, clients = self._users, self._products, self._clients
        n_users, n_products = len(users), len(products)
        kinds, names = self._kinds, self._names
        # Both phases get the same offered load (open loop), so their latencies compare
        # like for like: a faster phase does not crowd itself out on the GIL.
        interval = self.threads / self.rate if self.rate > 0 else 0.0
        due = time.perf_counter() + rng.random() * interval
        while not stop.is_set():
            if interval:
                now = time.perf_counter()
                if due > now:
                    time.sleep(due - now)
                due = max(due + interval, now - 1.0)
            kind = names[bisect.bisect(kinds, rng.random() * kinds[-1])]
            uid = min(bisect.bisect(users, rng.random() * users[-1]), n_users - 1)
            pid = min(bisect.bisect(products, rng.random() * products[-1]), n_products - 1)
            client = min(bisect.bisect(clients, rng.random() * clients[-1]), CLIENTS - 1)
            t0 = time.perf_counter()
            try:
                serve(kind, uid, pid, client, rng, log)
            except BaseException as exc:  # stop the run and report it, not a silent thread
                self.failure = self.failure or exc
                stop.set()
                return
            log.latencies.append(time.perf_counter() - t0)
            log.kinds[kind] += 1

    def _load_top(self) -> list[dict[str, Any]]:
        with self._lock:
            self.top_loads.append(time.monotonic())
        return self.shop.top_products(10)

    def _cached(
        self, kind: str, uid: int, pid: int, client: int, rng: random.Random, log: Log
    ) -> None:
        cache, shop = self.cache, self.shop
        if kind == "profile":
            start = time.monotonic()
            row = cache.get_or_fetch(f"user:{uid}", lambda: shop.load_user(uid))
            assert row is not None  # the demo only reads users it seeded
            log.reads.append((uid, start, time.monotonic(), int(row["version"])))
        elif kind == "profile_update":
            saved: list[dict[str, Any]] = []

            def save(changes: dict[str, Any]) -> dict[str, Any]:
                saved.append(shop.update_user(uid, changes))
                return saved[-1]

            start = time.monotonic()
            cache.write_through(f"user:{uid}", {"plan": rng.choice(PLANS)}, save, version=_version)
            log.writes.append((uid, start, time.monotonic(), int(saved[-1]["version"])))
        elif kind == "product":
            self.products.get_or_fetch(pid, lambda: shop.load_product(pid))
        elif kind == "price":
            if self.products.get_field(pid, "price_cents", MISSING) is MISSING:
                shop.product_price(pid)
        elif kind == "top":
            cache.get_or_fetch("top:products", self._load_top, ttl=self.top_policy)
        elif kind == "settings":
            cache.get_or_fetch("settings:site", shop.load_settings, ttl=REFERENCE)
        elif kind == "order":
            amount = shop.place_order(uid, pid, 1 + rng.randrange(3))
            self.products.invalidate(pid)  # its stock changed
            self.board.incr(f"user{uid}", amount)
        elif kind == "leaderboard":
            self.board.top(10)
        elif kind == "api":
            start = time.time()
            decision = self.limiter.hit(client)
            log.limits.append((client, start, time.time(), decision.allowed))
            if not decision.allowed:
                log.rejected += 1  # 429: nothing else to do
            elif self.products.get_field(pid, "stock", MISSING) is MISSING:
                shop.load_product(pid)
        self.visitors.add(uid)
        log.visitors.add(uid)

    def _uncached(
        self, kind: str, uid: int, pid: int, client: int, rng: random.Random, log: Log
    ) -> None:
        shop = self.shop
        if kind == "profile":
            shop.load_user(uid)
        elif kind == "profile_update":
            shop.update_user(uid, {"plan": rng.choice(PLANS)})
        elif kind == "product":
            shop.load_product(pid)
        elif kind == "price":
            shop.product_price(pid)
        elif kind == "top":
            shop.top_products(10)
        elif kind == "settings":
            shop.load_settings()
        elif kind == "order":
            shop.place_order(uid, pid, 1 + rng.randrange(3))
        elif kind == "leaderboard":
            shop.top_buyers(10)
        elif kind == "api":
            shop.load_product(pid)

    # -- checks ----------------------------------------------------------------------------
    def stale_reads(self) -> tuple[int, int, int]:
        """``(stale, reads checked, writes)``: a cached read of a user (in this process or
        the second) that started after a write of that user had completed must not return
        an older version."""
        logs = self.logs["cached"]
        writes: dict[int, list[tuple[float, int]]] = defaultdict(list)
        for log in logs:
            for uid, _, end, version in log.writes:
                writes[uid].append((end, version))
        done: dict[int, tuple[list[float], list[int]]] = {}
        for uid, ws in writes.items():
            ws.sort()
            ends = [e for e, _ in ws]
            best = list(itertools.accumulate((v for _, v in ws), max))
            done[uid] = (ends, best)
        stale = checked = 0
        for reads in [log.reads for log in logs] + [self.other_reads]:
            for uid, start, _, version in reads:
                checked += 1
                if uid in done:
                    ends, best = done[uid]
                    i = bisect.bisect_left(ends, start)
                    if i and version < best[i - 1]:
                        stale += 1
        return stale, checked, sum(len(ws) for ws in writes.values())

    def loads_per_expiry(self) -> tuple[int, int]:
        """``(loader calls, refreshes)`` of the hot aggregate: loads that start within half
        a TTL of each other belong to one expiry (a stampede would show several)."""
        starts = sorted(self.top_loads)
        refreshes = 0
        last = -math.inf
        for t in starts:
            if t - last >= self.top_ttl / 2:
                refreshes += 1
                last = t
        return len(starts), refreshes

    def limiter_windows(self, margin: float = 0.002) -> dict[str, int]:
        """Allowed requests per client and window, on the server's clock. Windows holding a
        decision too close to a boundary to place for sure are left out."""
        allowed: dict[tuple[int, int], int] = defaultdict(int)
        denied: dict[tuple[int, int], int] = defaultdict(int)
        unsure: set[tuple[int, int]] = set()
        for log in self.logs["cached"]:
            for client, start, end, ok in log.limits:
                w0 = math.floor(start + self.clock_offset - margin)
                w1 = math.floor(end + self.clock_offset + margin)
                if w0 != w1:
                    unsure.update({(client, w0), (client, w1)})
                    continue
                (allowed if ok else denied)[(client, w0)] += 1
        saturated = [w for w in denied if w not in unsure]
        exact = sum(1 for w in saturated if allowed[w] == self.limit)
        over = sum(1 for w, n in allowed.items() if w not in unsure and n > self.limit)
        decisions = sum(len(log.limits) for log in self.logs["cached"])
        return {
            "decisions": decisions,
            "rejected": sum(log.rejected for log in self.logs["cached"]),
            "saturated_windows": len(saturated),
            "exact_windows": exact,
            "over_limit_windows": over,
            "max_allowed_in_a_window": max(
                (n for w, n in allowed.items() if w not in unsure), default=0
            ),
        }


def _version(row: dict[str, Any]) -> float:
    return float(row["version"])
