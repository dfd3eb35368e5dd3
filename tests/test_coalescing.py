"""In-process single flight: a caller that joins another's fill only takes its value if
Redis vouched for that value after the caller arrived (otherwise a write that completed in
between could be missing from it)."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from hitrate import AsyncCache, Cache
from hitrate.ops import CALL, Coalesce, Publish


def leader_plan(read_before_joiner: bool) -> Any:
    yield Coalesce("k")
    if read_before_joiner:
        yield ("PING",)  # Redis vouches for the value here...
        yield CALL  # ...and the joiner arrives afterwards
    else:
        yield CALL  # the joiner arrives...
        yield ("PING",)  # ...and Redis vouches afterwards
    yield Publish("leader's value")
    return "leader's value"


def joiner_plan() -> Any:
    yield Coalesce("k")
    yield ("PING",)
    return "joiner's own value"


@pytest.mark.parametrize(
    ("read_before_joiner", "expected"),
    [(True, "joiner's own value"), (False, "leader's value")],
)
def test_sync_joiner_takes_only_values_vouched_for_after_it_arrived(
    cache: Cache, read_before_joiner: bool, expected: str
) -> None:
    driver = cache._driver
    got: list[Any] = []

    def start_joiner() -> None:
        t = threading.Thread(target=lambda: got.append(driver.run(joiner_plan())))
        t.start()
        time.sleep(0.1)  # the joiner is now waiting on the leader's flight
        threads.append(t)

    threads: list[threading.Thread] = []
    assert driver.run(leader_plan(read_before_joiner), start_joiner) == "leader's value"
    threads[0].join()
    assert got == [expected]


@pytest.mark.parametrize(
    ("read_before_joiner", "expected"),
    [(True, "joiner's own value"), (False, "leader's value")],
)
async def test_async_joiner_takes_only_values_vouched_for_after_it_arrived(
    acache: AsyncCache, read_before_joiner: bool, expected: str
) -> None:
    driver = acache._driver
    tasks: list[asyncio.Task[Any]] = []

    async def start_joiner() -> None:
        tasks.append(asyncio.create_task(driver.run(joiner_plan())))
        await asyncio.sleep(0.05)

    assert await driver.run(leader_plan(read_before_joiner), start_joiner) == "leader's value"
    assert await tasks[0] == expected
