"""The invariant checker (R12, docs/quality.md) finds corrupted state, and finds none in healthy state."""

from __future__ import annotations

from typing import Any

from engine.store.invariants import check_invariants, encode_location_buckets, location_buckets
from engine.store.keys import sku_keys
from engine.store.store import Store
from engine.store.wire import HoldRequest, SupplyCommand


def busy_sku(redis: Any) -> Store:
    store = Store(redis)
    store.set_policy("S", {"mode": "presell", "safety": 1})
    store.apply([
        SupplyCommand("S", "count", {"loc": "A", "on_hand": 10}),
        SupplyCommand("S", "inbound_created", {"inbound_id": "L1", "loc": "B", "qty": 20,
                                               "eta_ms": 1_900_000_000_000, "supplier": "s"}),
    ])
    store.hold_batch("S", [HoldRequest("r1", 15, customer="c", channel="web"), HoldRequest("r2", 3)])
    store.confirm("S", "r2")
    return store


def test_a_healthy_store_has_no_violations(redis: Any) -> None:
    busy_sku(redis)
    assert check_invariants(redis) == []


def bump_bucket(redis: Any, loc: str, bucket: str, delta: int) -> None:
    """Change one location bucket behind the scripts' back."""
    key = sku_keys("S").state
    raw = redis.hget(key, "!L")
    buckets = location_buckets(raw)
    buckets[loc][bucket] += delta
    redis.hset(key, "!L", encode_location_buckets(raw.split("|")[0], buckets))


def test_a_held_bucket_out_of_step_with_the_lines_is_reported(redis: Any) -> None:
    busy_sku(redis)
    bump_bucket(redis, "A", "hd", 1)
    problems = check_invariants(redis)
    assert any("S@A: hd" in p for p in problems)
    assert any("held+committed" in p for p in problems)
    assert any("ATP reported" not in p for p in problems)
    bump_bucket(redis, "A", "hd", -1)  # repair, so the teardown check passes
    assert check_invariants(redis) == []


def test_negative_buckets_and_wrong_usage_are_reported(redis: Any) -> None:
    busy_sku(redis)
    k = sku_keys("S")
    bump_bucket(redis, "A", "oh", -12)
    redis.hincrby(k.cust, "c", 1)
    problems = check_invariants(redis)
    assert any("negative bucket oh" in p for p in problems)
    assert any("customer usage" in p for p in problems)
    bump_bucket(redis, "A", "oh", 12)
    redis.hincrby(k.cust, "c", -1)
    assert check_invariants(redis) == []
