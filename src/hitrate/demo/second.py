"""The demo's second process: user profile reads through the same cache, at the same time
as the main process's reads and writes, so leases and invalidations are seen to work across
processes. Every read (user, start, end, version; monotonic clock, shared by the processes
of one machine) is written to a file for the main process's staleness check.

Run by :func:`hitrate.demo.run_demo` as ``python -m hitrate.demo.second '<json>'``.
"""

from __future__ import annotations

import bisect
import functools
import json
import random
import sys
import time

from .. import USER, Cache
from .shop import Shop, Sizes
from .workload import zipf_cum

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    args = json.loads((argv if argv is not None else sys.argv[1:])[0])
    shop = Shop(args["database"], table_prefix=args["table_prefix"], latency=args["latency"])
    cache = Cache.from_url(
        args["redis"],
        prefix=args["prefix"],
        policies={"user": USER},
        flush_interval=1.0,
        timeout=2.0,
        connect_timeout=2.0,
    )
    users = zipf_cum(Sizes(args["scale"]).users)
    rng = random.Random(f"{args['seed']}-second")
    interval = 1.0 / args["rate"]
    reads: list[tuple[int, float, float, int]] = []
    try:
        due = time.monotonic()
        deadline = due + args["seconds"]
        while (now := time.monotonic()) < deadline:
            if due > now:
                time.sleep(due - now)
            due = max(due + interval, now - 1.0)
            uid = min(bisect.bisect(users, rng.random() * users[-1]), len(users) - 1)
            start = time.monotonic()
            row = cache.get_or_fetch(f"user:{uid}", functools.partial(shop.load_user, uid))
            assert row is not None  # the demo only reads users it seeded
            reads.append((uid, start, time.monotonic(), int(row["version"])))
    finally:
        cache.close()
        shop.close()
        with open(args["out"], "w") as f:
            json.dump(reads, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
