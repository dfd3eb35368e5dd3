"""A primary killed mid-workload, on Cluster and on Sentinel: readers and writers go on
through the failover with the consistency checker watching (0 stale reads after completed
writes), no exception reaches a caller, and hits come back once the replica is promoted.

Each test starts a private topology (its primary is killed). The figures are printed:
``pytest -s tests/test_failover.py``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from hitrate import Cache
from hitrate.breaker import Breaker
from hitrate.testing import unique_prefix
from hitrate.topologies import EmbeddedCluster, EmbeddedSentinel

from .conftest import _topology_flavour
from .consistency import VersionedDB, run_workload, violations


class Guarded:
    """The cache as the workload calls it, with every exception that escapes it kept."""

    def __init__(self, cache: Cache) -> None:
        self.cache = cache
        self.leaked: list[BaseException] = []
        self.fallback = VersionedDB([])

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            self.leaked.append(exc)
            raise

    def get_or_fetch(self, key: str, fetch: Any) -> Any:
        return self._call(self.cache.get_or_fetch, key, fetch)

    def write_through(self, key: str, value: Any, save: Any) -> Any:
        return self._call(self.cache.write_through, key, value, save)

    def invalidate(self, *keys: str) -> int:
        return int(self._call(self.cache.invalidate, *keys))


@pytest.fixture(params=["cluster", "sentinel"])
def doomed(request: pytest.FixtureRequest) -> Iterator[tuple[str, Any]]:
    if request.param == "cluster":
        topology: Any = EmbeddedCluster.start(_topology_flavour())
    else:
        topology = EmbeddedSentinel.start(_topology_flavour())
    yield request.param, topology
    topology.stop()


def test_primary_killed_mid_workload(
    doomed: tuple[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    kind, topology = doomed
    cache = Cache.from_url(
        topology.url, prefix=unique_prefix("fo"), timeout=0.5, breaker=Breaker(cooldown=0.3)
    )
    keys = [f"row:{i}" for i in range(24)]  # on every primary of a cluster
    db = VersionedDB(keys)
    guarded = Guarded(cache)
    killed: dict[str, float] = {}
    probe = "probe:1"
    cache.set(probe, "here", ttl=600)

    def kill() -> None:
        if kind == "cluster":
            node = cache.client.get_node_from_key(cache.redis_key(probe))
            cache.client.execute_command("WAIT", 1, 2000, target_nodes=node)
            topology.kill(node.port)
        else:
            cache.client.execute_command("WAIT", 2, 2000)
            topology.kill_primary()
        killed["at"] = time.monotonic()

    resumed: list[float] = []

    def watch() -> None:  # a plain get never loads: "here" comes from the new primary
        while "at" not in killed:
            time.sleep(0.01)
        while time.monotonic() - killed["at"] < 30:
            try:
                if cache.get(probe) == "here":
                    resumed.append(time.monotonic() - killed["at"])
                    return
            except Exception as exc:
                guarded.leaked.append(exc)
            time.sleep(0.01)

    timer = threading.Timer(1.0, kill)
    watcher = threading.Thread(target=watch)
    timer.start()
    watcher.start()
    log = run_workload(guarded, db, keys, readers=6, writers=2, seconds=8.0)
    timer.join()
    watcher.join()
    reads = [op for op in log if op.kind == "read"]
    after = [op for op in reads if op.start > killed["at"] + (resumed[0] if resumed else 0)]
    stale = violations(log)
    with capsys.disabled():
        print(
            f"\n{kind} failover: hits back {resumed[0] if resumed else float('nan'):.2f} s after "
            f"the kill; {len(reads)} reads ({len(after)} after), {len(log) - len(reads)} "
            f"writes, {stale} stale, {len(guarded.leaked)} exceptions leaked"
        )
    assert guarded.leaked == []
    assert stale == 0
    assert resumed and resumed[0] < 20
    assert len(after) > 50  # the workload went on on the new primary
    cache.close()
