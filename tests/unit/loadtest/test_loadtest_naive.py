"""The naive stream applier's reading of events (loadtest/naive_applier.py), pure."""

from __future__ import annotations

from loadtest.naive_applier import effects


def test_each_event_type_moves_the_buckets_a_naive_applier_would() -> None:
    placed = {"type": "order.placed", "lines": [{"sku": "A", "qty": 2}, {"sku": "B", "qty": 1}]}
    assert list(effects(placed)) == [("A", "committed", 2), ("B", "committed", 1)]
    assert list(effects({"type": "order.cancelled", "lines": None})) == []
    assert list(effects({"type": "order.shipped", "lines": [{"sku": "A", "qty": 1}]})) == [
        ("A", "on_hand", -1), ("A", "committed", -1)]
    assert list(effects({"type": "receipt.posted", "sku": "A", "qty": 5})) == [("A", "on_hand", 5)]
    assert list(effects({"type": "stock.adjusted", "sku": "A", "delta": -3})) == [("A", "on_hand", -3)]
    assert list(effects({"type": "stock.counted", "sku": "A", "on_hand": 7})) == [("A", "counted", 7)]
    assert list(effects({"type": "inbound.updated", "sku": "A"})) == []
