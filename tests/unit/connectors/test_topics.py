"""Topic names: the production set, and per-test sets with a prefix/suffix."""

from __future__ import annotations

import pytest

from connectors import topics as t


def test_production_names_match_the_event_contract() -> None:
    assert t.INPUT_TOPICS == (
        "inventory.orders",
        "inventory.inbound",
        "inventory.receipts",
        "inventory.adjustments",
    )
    assert set(t.OUTPUT_TOPICS) == {
        "inventory.reservations",
        "inventory.alerts",
        "inventory.replenishment",
        "inventory.dlq",
        "inventory.changes",
    }
    assert not set(t.INPUT_TOPICS) & set(t.OUTPUT_TOPICS)


def test_default_topics_are_the_production_names() -> None:
    topics = t.Topics()
    assert topics.orders == t.ORDERS and topics.dlq == t.DLQ
    assert topics.all == t.ALL_TOPICS


def test_affixes_apply_to_every_name_and_map_back() -> None:
    topics = t.Topics(prefix="shop1.", suffix=".t42")
    assert topics.receipts == "shop1.inventory.receipts.t42"
    assert all(name.startswith("shop1.inventory.") and name.endswith(".t42") for name in topics.all)
    assert len(set(topics.all)) == 9
    assert topics.base_of("shop1.inventory.alerts.t42") == t.ALERTS
    with pytest.raises(ValueError, match="not one of"):
        topics.base_of("inventory.alerts")


@pytest.mark.parametrize("affix", ["has space", "slash/", "x" * 101, "ümlaut"])
def test_illegal_affixes_are_refused(affix: str) -> None:
    with pytest.raises(ValueError, match="suffix"):
        t.Topics(suffix=affix)


def test_unknown_base_name_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown topic"):
        t.Topics().name("inventory.nope")


def test_create_topics_refuses_a_bad_partition_count() -> None:
    with pytest.raises(ValueError, match="partitions"):
        t.create_topics({"bootstrap.servers": "127.0.0.1:1"}, partitions=0)
