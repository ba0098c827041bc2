"""Leases (``engine.store.lease``): one holder at a time of a keyspace-wide duty, taken over when
the holder stops renewing; and the hold sweeper of several API processes, which sweep one at a
time through the ``sweeper`` lease and hand over when the sweeping one stops."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from engine.store.lease import AsyncLease, Lease, lease_key
from engine.store.store import AsyncStore
from engine.store.sweeper import sweep_forever
from tests.conftest import redis_client

PREFIX = "lz"


def test_one_holder_at_a_time_and_a_silent_holder_is_taken_over(redis: Any) -> None:
    a = Lease(redis, PREFIX, "sweeper", ttl_ms=300, token="a")
    b = Lease(redis, PREFIX, "sweeper", ttl_ms=300, token="b")
    assert a.acquire() and a.acquire()  # taken, then renewed
    assert not b.acquire() and not b.renew() and not b.release()
    assert a.holder() == "a" == redis.get(lease_key(PREFIX, "sweeper"))
    time.sleep(0.45)  # a stops renewing: its lease runs out
    assert b.acquire() and b.holder() == "b"
    assert not a.renew() and not a.release()  # a lease another took is neither renewed nor freed
    assert b.release() and b.holder() is None
    other = Lease(redis, PREFIX, "relay", ttl_ms=300, token="c")
    assert other.acquire() and a.acquire()  # another duty, another lease


def test_a_lease_names_a_known_duty_in_a_valid_keyspace(redis: Any) -> None:
    with pytest.raises(ValueError, match="unknown duty"):
        lease_key(PREFIX, "cleaning")
    with pytest.raises(ValueError, match="key prefix"):
        lease_key("Bad Prefix", "relay")
    with pytest.raises(ValueError, match="ttl_ms"):
        Lease(redis, PREFIX, "relay", ttl_ms=10)


class CountingStore(AsyncStore):
    """An ``AsyncStore`` that notes which process (``name``) called ``sweep`` and when."""

    def __init__(self, client: Any, name: str, seen: list[tuple[str, float]]) -> None:
        super().__init__(client, prefix=PREFIX)
        self.name, self.seen = name, seen

    async def sweep(self, max_skus: int = 10_000) -> int:
        self.seen.append((self.name, time.monotonic()))
        return await super().sweep(max_skus)


@pytest.mark.anyio
async def test_of_several_sweepers_one_sweeps_and_another_takes_over_when_it_stops(
    redis: Any, redis_url: str, redis_cluster_mode: bool
) -> None:
    client = redis_client(redis_url, redis_cluster_mode, asyncio=True, decode_responses=True)
    seen: list[tuple[str, float]] = []
    tasks = {}
    for name in ("p1", "p2", "p3"):
        lease = AsyncLease(client, PREFIX, "sweeper", ttl_ms=400, token=name)
        tasks[name] = asyncio.create_task(
            sweep_forever(CountingStore(client, name, seen), interval_s=0.05, lease=lease))
    await asyncio.sleep(1.0)
    sweepers = {name for name, _ in seen}
    assert len(sweepers) == 1 and len(seen) >= 10, seen  # one sweeps, every tick
    first = sweepers.pop()
    tasks[first].cancel()
    stopped = time.monotonic()
    await asyncio.gather(tasks[first], return_exceptions=True)
    assert await client.get(lease_key(PREFIX, "sweeper")) != first  # given up on the way out
    await asyncio.sleep(0.5)
    after = [(name, t) for name, t in seen if t > stopped]
    assert after and {name for name, _ in after} <= {"p1", "p2", "p3"} - {first}
    assert len({name for name, _ in after}) == 1  # again one at a time
    for task in tasks.values():
        task.cancel()
    await asyncio.gather(*tasks.values(), return_exceptions=True)
    await client.aclose()
