"""The reply stash against the real Redis: ``Store.apply(..., keep_replies_s=…)`` keeps each stream
command's reply under its stash key in the same script call; duplicates by offset write nothing and
the SKU's state (``dump``) does not see it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from engine.store.reply_stash import stash_key
from engine.store.store import AsyncStore, Store
from engine.store.wire import SupplyCommand, decode_reply
from tests.conftest import redis_client

SRC = "inventory.adjustments:0"


def count(on_hand: int, offset: int, event_id: str = "", source: str = SRC) -> SupplyCommand:
    return SupplyCommand("A", "count", {"loc": "WH1", "on_hand": on_hand}, event_id=event_id or f"e{offset}",
                         source=source, offset=offset)


def stashed(redis: Any, offset: int, source: str = SRC) -> Any:
    raw = redis.get(stash_key("atp", "A", source, offset))
    return None if raw is None else decode_reply(raw)


def test_an_applied_command_keeps_its_reply_under_its_outcome_id_for_the_ttl(redis: Any) -> None:
    store = Store(redis)
    [first, second] = store.apply([count(5, 0), count(7, 1)], keep_replies_s=60)

    assert stashed(redis, 0) == first and stashed(redis, 1) == second
    assert first["position"]["atp"] == 5 and second["position"]["atp"] == 7  # each its own position
    assert 0 < redis.ttl(stash_key("atp", "A", SRC, 0)) <= 60


def test_a_duplicate_by_offset_writes_nothing_and_the_stash_is_not_state(redis: Any) -> None:
    store = Store(redis)
    store.apply([count(5, 0)])
    before = store.dump("A")
    [again] = store.apply([count(9, 0)], keep_replies_s=60)

    assert (again["status"], again["reason"]) == ("duplicate", "offset")
    assert stashed(redis, 0) is None  # the first apply kept nothing (keep 0), the replay neither
    store.apply([count(6, 1)], keep_replies_s=60)
    after = store.dump("A")
    assert {k: v for k, v in after.items() if k != "seq"} != before  # the count did apply ...
    store.apply([count(6, 1)], keep_replies_s=60)
    assert store.dump("A") == after  # ... and its duplicate changed nothing, stash or not


def test_a_duplicate_by_event_id_keeps_that_reply(redis: Any) -> None:
    store = Store(redis)
    store.apply([count(5, 0, event_id="ev-1")], keep_replies_s=60)
    [dup] = store.apply([count(5, 0, event_id="ev-1", source="inventory.adjustments:1")], keep_replies_s=60)

    assert (dup["status"], dup["reason"]) == ("duplicate", "event_id")
    assert stashed(redis, 0, "inventory.adjustments:1") == dup


@pytest.mark.parametrize("command", [
    SupplyCommand("A", "count", {"loc": "WH1", "on_hand": 5}),  # an operator command: no input position
    SupplyCommand("A", "count", {"loc": "WH1", "on_hand": 5}, source="not a topic:0", offset=3),
], ids=["no-source", "source-not-topic-partition"])
def test_a_command_without_a_valid_input_position_is_applied_and_not_kept(redis: Any, command: Any) -> None:
    [reply] = Store(redis).apply([command], keep_replies_s=60)

    assert reply["status"] == "ok"
    assert list(redis.scan_iter(match="atp-rp:*")) == []


def test_keep_replies_must_be_a_sane_number_of_seconds(redis: Any) -> None:
    for bad in (-1, True, 1.5, 10**9):
        with pytest.raises(ValueError):
            Store(redis).apply([count(5, 0)], keep_replies_s=bad)


def test_the_async_store_keeps_replies_too(redis: Any, redis_url: str, redis_cluster_mode: bool) -> None:
    async def go() -> list[Any]:
        client = redis_client(redis_url, redis_cluster_mode, asyncio=True, decode_responses=True)
        try:
            return await AsyncStore(client).apply([count(5, 0)], keep_replies_s=60)
        finally:
            await client.aclose()

    [reply] = asyncio.run(go())
    assert stashed(redis, 0) == reply
