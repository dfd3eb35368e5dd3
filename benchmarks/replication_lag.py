"""How stale a replica read can be: the staleness ``replica_reads=yes`` allows on Redis
Cluster, and the window in which an acknowledged invalidation can be lost by a failover.

Redis replicates asynchronously: a primary acknowledges a write before its replicas have
it. This measures, on a local cluster (or ``--url redis+cluster://...``), the time from an
invalidation being acknowledged to the entry being gone when read through a cache with
``replica_reads=yes`` - while other writers keep the replication stream busy::

    .venv/bin/python benchmarks/replication_lag.py [--trials 2000] [--writers 2]

It prints the share of invalidations whose first replica read still saw the old entry,
and the distribution of how long the old entry stayed visible.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

from hitrate import Cache
from hitrate.testing import unique_prefix
from hitrate.topologies import EmbeddedCluster


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a redis+cluster:// URL (default: a local cluster)")
    parser.add_argument("--trials", type=int, default=2000)
    parser.add_argument("--writers", type=int, default=2, help="threads writing meanwhile")
    args = parser.parse_args()
    cluster = None if args.url else EmbeddedCluster.start()
    url = args.url or cluster.url  # type: ignore[union-attr]
    prefix = unique_prefix("lag")
    reader = Cache.from_url(url + "?replica_reads=yes", prefix=prefix, count=False, timeout=2)
    writer = Cache.from_url(url, prefix=prefix, count=False, timeout=2)
    stop = threading.Event()

    def busy(n: int) -> None:  # keeps the replication stream busy
        i = 0
        while not stop.is_set():
            writer.set_many({f"noise:{n}:{i % 500}:{j}": "x" * 200 for j in range(20)}, ttl=60)
            i += 1

    threads = [threading.Thread(target=busy, args=(n,), daemon=True) for n in range(args.writers)]
    for t in threads:
        t.start()
    stale_first = 0
    windows: list[float] = []
    try:
        for i in range(args.trials):
            key = f"row:{i}"
            writer.set(key, i, ttl=60)
            deadline = time.monotonic() + 2
            while reader.get(key) != i and time.monotonic() < deadline:
                pass  # the replica has it
            writer.invalidate(key)
            acked = time.monotonic()
            if reader.get(key) is None:
                continue
            stale_first += 1
            while reader.get(key) is not None:
                pass
            windows.append(time.monotonic() - acked)
    finally:
        stop.set()
        for t in threads:
            t.join()
        reader.close()
        writer.close()
        if cluster is not None:
            cluster.stop()
    share = 100.0 * stale_first / args.trials
    print(f"{args.trials} invalidations, {args.writers} writers meanwhile")
    print(f"first replica read after the acknowledgement still saw the entry: {share:.1f} %")
    if windows:
        ms = [w * 1000 for w in windows]
        print(
            f"how long it stayed visible (those {len(ms)}): p50 {statistics.median(ms):.2f} ms,"
            f" p99 {_quantile(ms, 0.99):.2f} ms, max {max(ms):.2f} ms"
        )


if __name__ == "__main__":
    main()
