"""Claims before a coalesced hold (``scripts.call_after_sets``): each key is created by at most one
claim — the first of the batch for a key claimed twice, none for a key that existed — whether the
batch goes as one MSETNX (standalone) or claim by claim (a cluster, or a key already taken)."""

from __future__ import annotations

import asyncio
from typing import Any

from engine.store import scripts
from engine.store.store import AsyncStore, Store
from engine.store.wire import HoldRequest, SupplyCommand, decode_hold_replies
from tests.conftest import redis_client


def hold_call(store: Store, rids: list[str]) -> tuple[list[HoldRequest], scripts.Call]:
    reqs = [HoldRequest(rid, 1) for rid in rids]
    return reqs, store._hold_call("S", reqs)


def test_fresh_keys_are_all_created_and_a_repeated_key_only_once(redis: Any) -> None:
    store = Store(redis)
    store.apply([SupplyCommand("S", "count", {"loc": "A", "on_hand": 10})])
    reqs, call = hold_call(store, ["a", "b", "a"])
    claims = [("k:a", b"1"), ("k:b", b"2"), ("k:a", b"3")]
    created, raw = scripts.call_after_sets(redis, claims, call)
    assert created == [True, True, False]
    assert (redis.get("k:a"), redis.get("k:b")) == ("1", "2")
    assert [r["status"] for r in decode_hold_replies("S", reqs, raw)] == ["ok", "ok", "duplicate"]


def test_a_taken_key_is_not_created_and_the_others_still_are(redis: Any) -> None:
    store = Store(redis)
    store.apply([SupplyCommand("S", "count", {"loc": "A", "on_hand": 10})])
    redis.set("k:b", "theirs")
    reqs, call = hold_call(store, ["a", "b", "c"])
    created, raw = scripts.call_after_sets(redis, [("k:a", b"1"), ("k:b", b"2"), ("k:c", b"3")], call)
    assert created == [True, False, True]
    assert (redis.get("k:a"), redis.get("k:b"), redis.get("k:c")) == ("1", "theirs", "3")
    assert [r["status"] for r in decode_hold_replies("S", reqs, raw)] == ["ok", "ok", "ok"]


def test_the_async_twin_claims_the_same_way(redis: Any, redis_url: str, redis_cluster_mode: bool) -> None:
    Store(redis).apply([SupplyCommand("S", "count", {"loc": "A", "on_hand": 10})])
    redis.set("k:b", "theirs")

    async def go() -> tuple[list[bool], list[bool]]:
        client = redis_client(redis_url, redis_cluster_mode, asyncio=True)
        try:
            store = AsyncStore(client)
            await store.ready()
            first, _ = await store.hold_batch_claiming(
                "S", [HoldRequest("a", 1), HoldRequest("b", 1)], [("k:a", b"1"), ("k:b", b"2")])
            again, _ = await store.hold_batch_claiming(
                "S", [HoldRequest("c", 1), HoldRequest("c", 1)], [("k:c", b"3"), ("k:c", b"3")])
            return first, again
        finally:
            await client.aclose()

    assert asyncio.run(go()) == ([True, False], [True, False])
