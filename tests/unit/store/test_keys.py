"""Key builders: validated input only, and every key of a SKU in one Redis Cluster slot."""

from __future__ import annotations

import pytest
from redis.crc import key_slot

from engine.store.keys import (
    KEY_NAMES,
    exp_scan_pattern,
    rid_index_key,
    sku_from_key,
    sku_keys,
    validate_id,
    validate_location,
    validate_sku,
)


@pytest.mark.parametrize("sku", ["A", "sku-1", "X.Y_Z", "9" * 64])
def test_valid_skus_build_keys_with_the_hash_tag(sku: str) -> None:
    keys = sku_keys(sku)
    assert len(keys.all) == len(KEY_NAMES)
    assert all(k.startswith(f"atp:{{{sku}}}:") for k in keys.all)


@pytest.mark.parametrize(
    "sku", ["", "-a", "a b", "a{b}", "a\n", "sku\n", "é", "a" * 65, None, 5, "a:b", "a/b", "a*"]
)
def test_bad_skus_are_refused_before_any_key_is_built(sku: object) -> None:
    with pytest.raises(ValueError):
        sku_keys(sku)  # type: ignore[arg-type]


@pytest.mark.parametrize("sku", ["A", "hot-sku", "b.c", "Z" * 64, "12345"])
def test_all_keys_of_a_sku_share_one_cluster_slot(sku: str) -> None:
    slots = {key_slot(k.encode()) for k in sku_keys(sku).all}
    assert len(slots) == 1


def test_different_skus_usually_land_in_different_slots() -> None:
    slots = {key_slot(sku_keys(f"sku{i}").state.encode()) for i in range(50)}
    assert len(slots) > 40


def test_prefix_is_validated_and_used() -> None:
    assert sku_keys("A", "shop").state == "shop:{A}:state"
    with pytest.raises(ValueError):
        sku_keys("A", "Bad-Prefix")
    with pytest.raises(ValueError):
        sku_keys("A", "")


def test_reservation_index_key_is_validated() -> None:
    assert rid_index_key("order:42") == "atp:rid:{order:42}"
    with pytest.raises(ValueError):
        rid_index_key("bad id")


def test_sku_is_recovered_from_a_key() -> None:
    assert sku_from_key("atp:{A-1}:exp") == "A-1"
    assert sku_from_key(b"atp:{A-1}:loc") == "A-1"
    assert sku_from_key("atp:rid:{r1}") is None
    assert sku_from_key("other:{A}:exp") is None
    assert sku_from_key("shop:{A}:exp", "shop") == "A"
    assert exp_scan_pattern() == "atp:{*}:exp"


def test_id_and_location_validators_name_the_problem() -> None:
    assert validate_sku("A") == "A"
    assert validate_location("DC-1") == "DC-1"
    assert validate_id("o:1.2_3-4") == "o:1.2_3-4"
    with pytest.raises(ValueError, match="reservation_id"):
        validate_id("x" * 129)
    with pytest.raises(ValueError):
        validate_location("a:b")
    with pytest.raises(ValueError):
        validate_location("x" * 33)


def test_a_skus_changed_set_is_in_its_own_cluster_slot_and_one_set_otherwise() -> None:
    from redis.crc import key_slot

    from engine.store.keys import CLUSTER_SLOTS, changed_key, changed_keys

    assert changed_key("SKU-1", "atp") == "atp:changed" == changed_keys("atp")[0]
    every = changed_keys("atp", cluster=True)
    assert len(every) == CLUSTER_SLOTS
    assert sorted(key_slot(k.encode()) for k in every) == list(range(CLUSTER_SLOTS))
    for sku in ("SKU-1", "a", "Z.9_x-", "x" * 64):
        key = changed_key(sku, "atp", cluster=True)
        assert key in every and key_slot(key.encode()) == key_slot(sku_keys(sku).state.encode())
