"""The store's key layout stays small and bounded: an idle SKU is one small hash, the recent-event
log is trimmed in bulk but answers exactly for the last 1000 ids, the journal is a ring of 200."""

from __future__ import annotations

from typing import Any

from engine.store import scripts
from engine.store.keys import changed_key, sku_keys
from engine.store.store import Store
from engine.store.wire import SupplyCommand


def adjust(event_id: str, offset: int = -1) -> SupplyCommand:
    source = "inventory.adjustments:0" if offset >= 0 else ""
    return SupplyCommand("S", "adjust", {"loc": "A", "delta": 1}, event_id=event_id, source=source,
                         offset=offset, reason="found | 100%", ref="R|1")


def test_a_sku_made_by_a_stream_count_is_one_small_hash_and_its_change_record(redis: Any) -> None:
    Store(redis).apply([SupplyCommand("S", "count", {"loc": "default", "on_hand": 100}, event_id="cnt-1",
                                      source="inventory.adjustments:0", offset=7, reason="cycle count", ref="CC-1")])
    assert sorted(redis.scan_iter(match="atp:*")) == sorted([sku_keys("S").state, sku_keys("S").log,
                                                           changed_key("S", "atp", scripts.is_cluster(redis))])
    assert redis.llen(sku_keys("S").log) == 1  # until the relay ships it (docs/changelog.md)
    assert redis.object("encoding", sku_keys("S").state) in ("ziplist", "listpack")


def test_the_event_log_is_trimmed_but_knows_exactly_the_last_1000_ids(redis: Any) -> None:
    store = Store(redis)
    for start in range(0, 1600, 200):
        store.apply([adjust(f"e{i}") for i in range(start, start + 200)])
    fields = [f for f in redis.hkeys(sku_keys("S").state) if f.startswith("e")]
    assert sorted(fields) == sorted(f"ee{i}" for i in range(600, 1600))  # exactly the window
    assert len([f for f in redis.hkeys(sku_keys("S").state) if f.startswith("r")]) == 1000
    assert store.apply([adjust("e600")])[0]["status"] == "duplicate"  # the 1000th newest
    assert store.apply([adjust("e599")])[0]["status"] == "ok"  # aged out: applied again
    assert store.position("S")["on_hand"] == 1601


def test_the_journal_is_a_ring_of_the_last_200_commands_newest_first(redis: Any) -> None:
    store = Store(redis)
    store.apply([adjust(f"e{i}", offset=i) for i in range(250)])
    journal = store.journal("S")
    assert [j["event_id"] for j in journal] == [f"e{i}" for i in range(249, 49, -1)]
    assert {(j["cmd"], j["reason"], j["ref"]) for j in journal} == {("adjust", "found | 100%", "R|1")}
    assert store.journal("S", limit=3) == journal[:3]
    assert len([f for f in redis.hkeys(sku_keys("S").state) if f.startswith("j")]) == 200
