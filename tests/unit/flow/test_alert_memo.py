"""The alert step's replay memo: its key and its JSON form."""

import pytest

from engine.domain.observation import AtRisk, ClosedLot, LocationFigures, Observation, PositionFigures, Slip
from engine.flow.alert_memo import MemoError, decode_memo, encode_memo, memo_key
from engine.flow.alert_monitor import Memo, PolicyKnobs

FULL = Observation(
    sku="SKU-1",
    command="receipt",
    occurred_ms=1_893_456_000_000,
    event_id="ev-1",
    status="ok",
    reason="",
    position=PositionFigures(
        atp=-10,
        oversold=10,
        locations={
            "WH1": LocationFigures(on_hand=70, held=0, committed=80, in_transit=0, atp=-10, short=10),
            "WH2": LocationFigures(on_hand=1, atp=1),
            "WH3": LocationFigures(committed=4, backordered=4),
        },
        backordered=4,
    ),
    at_risk=(AtRisk("p-4", 5), AtRisk("p-3", 5)),
    slipped=(Slip("p-2", 1, 2),),
    location="WH1",
    qty=10,
    inbound_id="L1",
    lot=ClosedLot("L1", 80, 1_893_456_000_001, "SUP-1"),
)


def test_a_memo_reads_back_as_the_same_observation_and_policy() -> None:
    memo = Memo(FULL, PolicyKnobs(low_stock=20, pack_size=10, lead_time_days=4.5, use_reliability=True))
    assert decode_memo(encode_memo(memo)) == memo


def test_a_memo_without_a_position_or_lot_reads_back_too() -> None:
    memo = Memo(Observation(sku="SKU-1", command="order_placed", occurred_ms=5, rid="o-1", qty=3), PolicyKnobs())
    assert decode_memo(encode_memo(memo)) == memo


@pytest.mark.parametrize(
    "raw",
    [b"not json", b"[]", b'{"v": 2, "obs": {}, "knobs": {}}', b'{"v": 1, "obs": {"sku": "A"}, "knobs": {}}',
     b'{"v": 1, "obs": null, "knobs": null}'],
    ids=["garbage", "not-an-object", "other-version", "missing-fields", "nulls"],
)
def test_an_unreadable_memo_is_a_memo_error(raw: bytes) -> None:
    with pytest.raises(MemoError):
        decode_memo(raw)


def test_a_memo_with_a_bad_sku_is_refused() -> None:
    bad = encode_memo(Memo(FULL, PolicyKnobs())).replace(b'"SKU-1"', b'"bad sku!"')
    with pytest.raises(MemoError):
        decode_memo(bad)


def test_the_key_is_the_outcome_id_under_the_skus_hash_tag() -> None:
    assert memo_key("atp", "SKU-1", "inventory.orders.t1:2", 17) == "atp-am:{SKU-1}:inventory.orders.t1:2:17"


@pytest.mark.parametrize(
    ("prefix", "sku", "source", "offset"),
    [("ATP", "A", "t:0", 0), ("atp", "a b", "t:0", 0), ("atp", "A", "t", 0), ("atp", "A", "t:0}x", 0),
     ("atp", "A", "t:0", -1), ("atp", "A", "t:0", True)],
    ids=["prefix", "sku", "no-partition", "brace", "negative-offset", "bool-offset"],
)
def test_a_key_is_never_built_from_a_bad_part(prefix: str, sku: str, source: str, offset: int) -> None:
    with pytest.raises(ValueError):
        memo_key(prefix, sku, source, offset)
