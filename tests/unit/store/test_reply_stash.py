"""The reply stash's key: the outcome id under the SKU's hash tag, never built from a bad part."""

import pytest

from engine.flow.alert_memo import memo_key
from engine.store.reply_stash import check_position, stash_key


def test_the_key_is_the_outcome_id_under_the_skus_hash_tag_beside_the_memo() -> None:
    assert stash_key("atp", "SKU-1", "inventory.orders.t1:2", 17) == "atp-rp:{SKU-1}:inventory.orders.t1:2:17"
    # Same slot as the outcome's memo: the alert step writes one and deletes the other in order.
    assert memo_key("atp", "SKU-1", "inventory.orders.t1:2", 17).split(":", 1)[1] == (
        stash_key("atp", "SKU-1", "inventory.orders.t1:2", 17).split(":", 1)[1]
    )


@pytest.mark.parametrize(
    ("prefix", "sku", "source", "offset"),
    [("ATP", "A", "t:0", 0), ("atp", "a b", "t:0", 0), ("atp", "A", "t", 0), ("atp", "A", "t:0}x", 0),
     ("atp", "A", "t:0", -1), ("atp", "A", "t:0", True), ("atp", "A", "t:0", 2**53)],
    ids=["prefix", "sku", "no-partition", "brace", "negative-offset", "bool-offset", "huge-offset"],
)
def test_a_key_is_never_built_from_a_bad_part(prefix: str, sku: str, source: str, offset: int) -> None:
    with pytest.raises(ValueError):
        stash_key(prefix, sku, source, offset)


def test_a_position_is_returned_as_given_when_valid() -> None:
    assert check_position("inventory.inbound:3", 0) == ("inventory.inbound:3", 0)
