"""Retention: lines that ended (released, expired, shipped) are purged once they have been over
for the retention period, with the reservation index of a reservation that has no line left;
within the retention an idempotent replay still gets the same answer."""

from __future__ import annotations

from typing import Any

from engine.reservations.client import AtpClient
from engine.store.keys import rid_index_key, sku_keys
from engine.store.store import Store
from engine.store.sweeper import Sweeper
from engine.store.wire import HoldRequest, SupplyCommand

T0 = 1_700_000_000_000
KEEP_MS = 60_000


def stocked(redis: Any, *skus: str) -> Store:
    store = Store(redis, now_ms=T0)
    store.apply([SupplyCommand(s, "count", {"loc": "A", "on_hand": 10}) for s in skus or ("S",)])
    return store


def test_a_released_line_answers_replays_until_the_retention_ends_then_disappears(redis: Any) -> None:
    store = stocked(redis)
    [held] = store.hold_batch("S", [HoldRequest("r1", 3)])
    store.now_ms = T0 + 1_000
    released = store.release("S", "r1")
    assert released["status"] == "ok"

    store.now_ms = T0 + 1_000 + KEEP_MS - 1
    assert store.purge(KEEP_MS) == 0
    [replay] = store.hold_batch("S", [HoldRequest("r1", 3)])
    assert replay == {"status": "duplicate", "rid": "r1", "line": released["line"]}
    assert store.release("S", "r1") == {"status": "duplicate", "rid": "r1", "line": released["line"]}

    store.now_ms = T0 + 1_000 + KEEP_MS
    assert store.purge(KEEP_MS) == 1
    assert "r1" not in store.dump("S")["lines"]
    assert store.get_line("S", "r1") == {"status": "not_found", "rid": "r1"}
    assert redis.zcard(sku_keys("S").dead) == 0
    # the id is free again: the same call now makes a new reservation
    [again] = store.hold_batch("S", [HoldRequest("r1", 3)])
    assert again["status"] == "ok" and again["line"]["seq"] == held["line"]["seq"] + 1


def test_expired_and_shipped_lines_are_purged_and_shipped_units_still_count(redis: Any) -> None:
    store = stocked(redis)
    store.set_policy("S", {"customer_limit": 4})
    store.hold_batch("S", [HoldRequest("gone", 1, ttl_ms=1_000), HoldRequest("sold", 3, customer="c1"),
                           HoldRequest("live", 1, ttl_ms=10 * KEEP_MS)])
    store.confirm("S", "sold")
    store.apply([SupplyCommand("S", "ship", {"rid": "sold", "loc": "A", "qty": 3})])
    store.now_ms = T0 + 1_000  # "gone" expires now
    assert store.position("S")["held"] == 1
    store.now_ms = T0 + 1_000 + KEEP_MS
    assert store.purge(KEEP_MS) == 2
    dump = store.dump("S")
    assert set(dump["lines"]) == {"live"}
    assert dump["customers"] == {"c1": 3}  # the shipped units still count against the limit
    [refused] = store.hold_batch("S", [HoldRequest("more", 2, customer="c1")])
    assert (refused["status"], refused["reason"]) == ("refused", "customer_limit")
    assert store.position("S")["on_hand"] == 7


def test_a_reservation_index_goes_with_the_last_line_of_the_reservation(redis: Any) -> None:
    stocked(redis, "A1", "B1")
    client = AtpClient(redis, now_ms=T0)
    assert client.hold("multi", [("A1", 1, None), ("B1", 1, None)]).ok
    assert client.hold("single", [("A1", 2, None)]).ok
    client.release("single")
    client.store.release("A1", "multi")  # one line of the two ended
    client.store.now_ms = T0 + KEEP_MS
    assert client.store.purge(KEEP_MS) == 2
    assert redis.get(rid_index_key("single")) is None
    assert redis.get(rid_index_key("multi")) is not None  # its B1 line still lives
    assert client.get_reservation("single").status == "not_found"
    assert [ln.sku for ln in client.get_reservation("multi").lines] == ["B1"]

    client.store.release("B1", "multi")
    client.store.now_ms = T0 + 2 * KEEP_MS
    assert client.store.purge(KEEP_MS) == 1
    assert redis.get(rid_index_key("multi")) is None
    assert client.get_reservation("multi").status == "not_found"


def test_the_sweeper_purges_with_its_retention(redis: Any) -> None:
    store = stocked(redis)
    store.hold_batch("S", [HoldRequest("r1", 1, ttl_ms=1_000)])
    store.now_ms = T0 + 1_000
    sweeper = Sweeper(store, retention_s=KEEP_MS // 1000, purge_every_s=3600)
    assert sweeper.run_once() == 1  # expired now
    assert sweeper.purged_total == 0
    store.now_ms = T0 + 1_000 + KEEP_MS
    assert sweeper.run_once() == 0
    assert sweeper.purged_total == 0  # the next purge is an hour away
    assert sweeper.purge_now() == 1
    assert store.dump("S")["lines"] == {}
