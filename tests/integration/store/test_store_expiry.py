"""R11 (docs/quality.md) — hold expiry: 10k short holds left to expire are all released, lazily by the
next script that touches the SKU (their units at once, their lines a few per call) and by the
sweeper for SKUs nobody touches; no held unit leaks."""

from __future__ import annotations

import time
from typing import Any

import redis as redis_lib
from redis.backoff import NoBackoff
from redis.retry import Retry

from engine.store.invariants import check_sku
from engine.store.keys import sku_keys
from engine.store.store import Store
from engine.store.sweeper import Sweeper
from engine.store.wire import HoldRequest, SupplyCommand

T0 = 1_700_000_000_000
N = 10_000


def fill(store: Store, sku: str, count: int, ttl_ms: int, first: int = 0, per_call: int = 500) -> None:
    for start in range(first, first + count, per_call):
        replies = store.hold_batch(
            sku, [HoldRequest(f"h{i}", 1, ttl_ms=ttl_ms, customer=f"c{i % 7}", channel="web")
                  for i in range(start, min(first + count, start + per_call))]
        )
        assert all(r["status"] == "ok" for r in replies)


def test_10k_expired_holds_are_released_lazily_by_the_next_call(redis: Any) -> None:
    store = Store(redis, now_ms=T0)
    store.apply([SupplyCommand("S", "count", {"loc": "A", "on_hand": N})])
    fill(store, "S", N, ttl_ms=5_000)
    assert store.position("S")["held"] == N
    store.now_ms = T0 + 4_999
    assert store.position("S")["held"] == N
    store.now_ms = T0 + 5_000
    pos = store.position("S")
    assert (pos["held"], pos["atp"]) == (0, N)
    dump = store.dump("S")
    assert {line["state"] for line in dump["lines"].values()} == {"expired"}
    assert dump["customers"] == {} and dump["channels"] == {}
    assert check_sku(redis, "S") == []
    # the lines are buried after their units came back: the sweeper's calls do the rest
    assert 0 < store.sweep() < N
    keys = sku_keys("S")
    assert redis.zcard(keys.exp) == 0 and redis.zcard(keys.duet) == 0 and redis.hlen(keys.due) == 0
    assert redis.hlen(keys.cust) == 0 and redis.hlen(keys.ended) == N
    assert check_sku(redis, "S") == []


def test_10k_expired_holds_across_skus_are_released_by_the_sweeper(redis: Any) -> None:
    store = Store(redis, now_ms=T0)
    skus = [f"S{i}" for i in range(100)]
    store.apply([SupplyCommand(s, "count", {"loc": "A", "on_hand": 150}) for s in skus])
    for s in skus:
        fill(store, s, N // len(skus), ttl_ms=1_000 if s != "S0" else 60_000, per_call=100)
    store.now_ms = T0 + 1_000
    sweeper = Sweeper(store, interval_s=1.0)
    assert sweeper.run_once() == N - N // len(skus)
    assert sweeper.run_once() == 0
    positions = {p["sku"]: p for p in Store(redis, now_ms=T0 + 1_000).positions(skus)}
    assert positions["S0"]["held"] == 100
    assert all(positions[s]["held"] == 0 and positions[s]["atp"] == 150 for s in skus[1:])
    store.now_ms = T0 + 60_000
    assert sweeper.run_once() == 100
    assert redis.keys("atp:{*}:exp") == []


def test_the_sweeper_thread_expires_holds_in_real_time(redis: Any) -> None:
    store = Store(redis)  # Redis TIME
    store.apply([SupplyCommand("RT", "count", {"loc": "A", "on_hand": 2_000})])
    fill(store, "RT", 2_000, ttl_ms=300)
    seen: list[int] = []
    with Sweeper(store, interval_s=0.1, on_expired=seen.append) as sweeper:
        deadline = time.monotonic() + 10
        while sweeper.expired_total < 2_000 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert sweeper.expired_total == 2_000 and sum(seen) == 2_000
    dump = store.dump("RT")
    assert dump["locs"]["A"]["held"] == 0
    assert {line["state"] for line in dump["lines"].values()} == {"expired"}


def test_a_sweep_without_redis_is_logged_and_retried_at_the_next_tick() -> None:
    # nothing listens on port 1: a real connection failure
    away = Store(redis_lib.Redis(host="127.0.0.1", port=1, retry=Retry(NoBackoff(), 0)))
    sweeper = Sweeper(away, interval_s=0.01)
    assert sweeper.run_once() == 0
    assert sweeper.run_once() == 0
    assert sweeper.expired_total == 0


def _forget_due_buckets(redis: Any, sku: str) -> None:
    """Make the SKU look as a store written before due buckets existed: no '!W', no bucket."""
    keys = sku_keys(sku)
    fields = [f for f in redis.hkeys(keys.state) if f == "!W" or f.startswith("p")]
    redis.hdel(keys.state, *fields)
    redis.delete(keys.due, keys.duet)


def test_held_lines_of_a_store_without_due_buckets_give_their_units_back(redis: Any) -> None:
    # an upgrade: held lines, live and due, written by a store that kept no due buckets
    store = Store(redis, now_ms=T0)
    store.apply([SupplyCommand("U", "count", {"loc": "A", "on_hand": 500})])
    fill(store, "U", 300, ttl_ms=5_000, per_call=100)
    fill(store, "U", 100, ttl_ms=60_000, first=300)
    assert store.hold_batch("U", [HoldRequest("c1", 7, commit=True, customer="k")])[0]["status"] == "ok"
    _forget_due_buckets(redis, "U")
    assert store.position("U")["held"] == 400  # nothing due yet, nothing lost in the build
    assert redis.hget(sku_keys("U").state, "!W") is not None  # built once
    assert check_sku(redis, "U") == []
    _forget_due_buckets(redis, "U")
    store.now_ms = T0 + 5_000
    pos = store.position("U")
    assert (pos["held"], pos["committed"], pos["atp"]) == (100, 7, 393)
    assert check_sku(redis, "U") == []
    while store.sweep():
        pass
    store.now_ms = T0 + 60_000
    while store.sweep():
        pass
    pos = store.position("U")
    assert (pos["held"], pos["committed"], pos["atp"]) == (0, 7, 493)
    dump = store.dump("U")
    assert sum(line["state"] == "expired" for line in dump["lines"].values()) == 400
    assert dump["customers"] == {"k": 7}
    assert check_sku(redis, "U") == []
