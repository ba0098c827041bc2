"""Batch position reads (``Store.positions``) come from the positions the scripts keep, and a
kept position never outlives what it shows: every change deletes it, and it expires on the
server's clock at the first moment time alone could change it (a hold expiring, a lot's ETA
entering the horizon)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from engine.store.keys import sku_keys
from engine.store.store import AsyncStore, Store
from engine.store.wire import HoldRequest, SupplyCommand
from tests.conftest import redis_client


def server_ms(redis: Any) -> int:
    secs, micros = redis.time()
    return int(secs) * 1000 + int(micros) // 1000


def stocked(redis: Any, sku: str = "S", qty: int = 10) -> Store:
    store = Store(redis)  # Redis TIME: kept positions are used
    store.apply([SupplyCommand(sku, "count", {"loc": "A", "on_hand": qty})])
    return store


def test_a_batch_read_keeps_the_position_and_a_change_drops_it(redis: Any) -> None:
    store = stocked(redis)
    assert redis.get(sku_keys("S").pos) is None
    first = store.positions(["S"])[0]
    assert first == store.position("S")
    assert redis.get(sku_keys("S").pos) is not None
    store.hold_batch("S", [HoldRequest("r1", 3)])
    assert redis.get(sku_keys("S").pos) is None
    assert store.positions(["S"])[0]["held"] == 3
    store.confirm("S", "r1")
    assert store.positions(["S"])[0]["committed"] == 3
    store.apply([SupplyCommand("S", "adjust", {"loc": "A", "delta": 5})])
    assert store.positions(["S"])[0]["on_hand"] == 15
    store.set_policy("S", {"safety": 2})
    after = store.positions(["S"])[0]
    assert after["atp"] == 15 - 3 - 2 and after == store.position("S")


def sleep_until(redis: Any, ms: int) -> None:
    """Sleep until the server's clock has reached ``ms``."""
    while (left := ms - server_ms(redis)) >= 0:
        time.sleep(left / 1000 + 0.005)


def test_a_kept_position_expires_when_a_hold_does(redis: Any) -> None:
    store = stocked(redis)
    [held] = store.hold_batch("S", [HoldRequest("r1", 4, ttl_ms=1_000)])  # margin for a busy machine
    assert store.positions(["S"])[0]["held"] == 4
    expires = held["line"]["expires_ms"]
    assert expires % 1000 == 0  # holds end at whole seconds
    sleep_until(redis, expires)
    pos = store.positions(["S"])[0]
    assert (pos["held"], pos["atp"]) == (0, 10)


def test_shortening_a_hold_drops_the_kept_position(redis: Any) -> None:
    store = stocked(redis)
    store.hold_batch("S", [HoldRequest("r1", 4, ttl_ms=60_000)])
    assert store.positions(["S"])[0]["held"] == 4
    extended = store.extend("S", "r1", 200)
    sleep_until(redis, extended["line"]["expires_ms"])
    assert store.positions(["S"])[0]["held"] == 0


def test_a_kept_position_expires_when_a_lot_enters_the_horizon(redis: Any) -> None:
    store = stocked(redis, qty=0)
    store.set_policy("S", {"mode": "presell", "horizon_s": 1})
    eta = server_ms(redis) + 2_500  # enters the 1 s horizon in 1.5 s: margin for a busy machine
    store.apply([SupplyCommand("S", "inbound_created", {"inbound_id": "L1", "loc": "A", "qty": 8,
                                                        "eta_ms": eta, "supplier": "s1"})])
    before = store.positions(["S"])[0]
    assert (before["promisable_in_transit"], before["next_promise_ms"]) == (0, 0)
    time.sleep(max(0.0, (eta - 1_000 - server_ms(redis)) / 1000) + 0.05)
    after = store.positions(["S"])[0]
    assert (after["promisable_in_transit"], after["next_promise_ms"]) == (8, eta)


def test_unknown_skus_and_location_reads_keep_nothing(redis: Any) -> None:
    store = stocked(redis)
    [unknown] = store.positions(["NOPE"])
    assert (unknown["on_hand"], unknown["locations"]) == (0, {})
    assert redis.get(sku_keys("NOPE").pos) is None
    [at_a] = store.positions(["S"], location="A")
    assert redis.get(sku_keys("S").pos) is None
    assert at_a["locations"] == {"A": store.position("S")["locations"]["A"]}


def test_a_test_clock_bypasses_the_kept_positions(redis: Any) -> None:
    store = stocked(redis)
    store.positions(["S"])
    clocked = Store(redis, now_ms=1_700_000_000_000)
    clocked.hold_batch("S", [HoldRequest("r1", 2, ttl_ms=1_000)])
    assert clocked.positions(["S"])[0]["held"] == 2
    clocked.now_ms = 1_700_000_001_000
    assert clocked.positions(["S"])[0]["held"] == 0


def test_the_async_store_reads_kept_positions_too(redis: Any, redis_url: str, redis_cluster_mode: bool) -> None:
    store = stocked(redis)
    store.positions(["S"])

    async def go() -> tuple[dict[str, Any], dict[str, Any]]:
        client = redis_client(redis_url, redis_cluster_mode, asyncio=True)
        try:
            astore = AsyncStore(client)
            [kept] = await astore.positions(["S"])
            await astore.hold_batch("S", [HoldRequest("r1", 1)])
            [changed] = await astore.positions(["S"])
            return kept, changed
        finally:
            await client.aclose()

    kept, changed = asyncio.run(go())
    assert kept["held"] == 0 and changed["held"] == 1
    assert changed == store.position("S")
